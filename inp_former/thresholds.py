"""Decision thresholds and score ranges ("calibration"), computed at evaluation.

An evaluation feeds every category's test scores and maps to a :class:`Calibrator`; its
:class:`Calibration` goes to the evaluation's outputs (``thresholds.json``, ``metrics.json``). Only
training, or an evaluation asked to (``save_thresholds``), stores it in the checkpoint's
``meta["calibration"][map_mode]`` (:func:`store_calibration`, merged per category), where
``inpctl predict`` and :class:`inp_former.predictor.Predictor` find it to label new images.

The decision every surface applies (predict, serve, the page, the report, the ONNX sidecar) is
:class:`DecisionRule`: ``score >= threshold`` is anomalous, with the threshold of the image's
category when one is stored, else the pooled one.

What is computed (a sample is anomalous when ``value >= threshold``, as in ``metrics.f1max_threshold``):

* image threshold: an F1-maximising threshold of the image scores of ALL test images of all
  categories pooled (one model, one threshold), exact; and the same per category. Of the interval of
  thresholds reaching F1max, the midpoint between the lowest anomalous-labelled score and the next
  lower score is stored (:func:`f1max_midpoint_threshold`), so that the boundary images keep their
  labels under tiny numerical differences.
* pixel threshold: the F1-maximising threshold of the map values of all test pixels against the
  ground-truth masks, pooled and per category. Computed on a histogram of ``HIST_BINS`` equal bins
  over ``HIST_RANGE`` = [0, 2] (every map value is a mean of ``1 - cos``, so it lies there): the
  threshold is a bin's lower edge and is exact up to the bin width 2 / 65536 = 3.1e-5.
* score range: min / max / quantiles of the image scores (normal images, anomalous images, all).
* map range: the fixed colour scale of overlays, ``[median of normal pixels, 99.9th percentile of
  all test pixels]`` (stretched to contain the pixel threshold). Every overlay uses this one scale,
  so a normal image looks cold and an anomaly looks hot, whatever the other images of a batch are.

Normalised score (kept beside the raw score, never instead of it)::

    normalized = clip((score - threshold) / (score_max - score_min) + 0.5, 0, 1)

so the threshold maps to 0.5 and ``normalized >= 0.5`` agrees with ``label`` (except where clipping
meets a degenerate range).
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inp_former.errors import ConfigError

CALIBRATION_KEY = "calibration"
CALIBRATION_VERSION = 1
HIST_RANGE = (0.0, 2.0)
HIST_BINS = 1 << 16


def _clean(value: Any) -> Any:
    """Plain Python numbers (checkpoints load with weights_only=True; nan becomes None)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class Calibration:
    """Thresholds and ranges of one map mode (``decoder`` or ``prototype``) of one model."""

    map_mode: str = "decoder"
    image_threshold: float | None = None        # F1-max threshold of image scores, all categories pooled
    image_f1: float | None = None
    pixel_threshold: float | None = None        # F1-max threshold of map values, all pixels pooled
    pixel_f1: float | None = None
    score_range: dict[str, float | None] = field(default_factory=dict)  # min, max, normal_p50/p99, ...
    map_range: list[float] | None = None       # [lo, hi]: the overlay colour scale
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    version: int = CALIBRATION_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Calibration":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def normalize(self, score: float, threshold: float | None = None) -> float | None:
        """Score mapped so that ``threshold`` (default: the stored one) is 0.5; None without a range."""
        return normalize_score(score, self.image_threshold if threshold is None else threshold,
                               self.score_range.get("min"), self.score_range.get("max"))


def normalize_score(score: float, threshold: float | None, lo: float | None, hi: float | None) -> float | None:
    if threshold is None or lo is None or hi is None:
        return None
    span = hi - lo
    if not span > 0:
        return 1.0 if score >= threshold else 0.0
    return float(min(1.0, max(0.0, (score - threshold) / span + 0.5)))


# --- the decision ----------------------------------------------------------------------------------

LABEL_RULE = "label = 1 (anomalous) when score >= threshold"


def label_of(score: float, threshold: float | None) -> int | None:
    """THE anomaly decision of every surface: 1 when ``score >= threshold``, 0 below, None without
    a threshold (the same rule as the F1-max thresholds are computed with)."""
    return None if threshold is None else int(score >= threshold)


@dataclass(frozen=True)
class Decision:
    """The label of one image, the threshold that gave it, and where both came from."""
    label: int | None
    threshold: float | None
    threshold_source: str | None    # "given" | "checkpoint" | None (no threshold anywhere)
    category: str | None            # the category whose threshold was used; None: the pooled one
    category_source: str | None     # "given" | "path" | "image" | "pooled" | None (no threshold)

    def fields(self) -> dict[str, Any]:
        """As the columns and JSON keys of predictions and the server's answers."""
        return {"label": self.label, "threshold": self.threshold, "threshold_source": self.threshold_source,
                "category": self.category, "category_source": self.category_source}


class DecisionRule:
    """From (score, category) to a :class:`Decision`, for every scoring surface.

    The threshold: the one given (``threshold``) wins; else the stored threshold of ``category``
    when the calibration holds one; else the calibration's pooled threshold (all categories);
    else none (scores without labels).
    """

    def __init__(self, calibration: Calibration | None, threshold: float | None = None) -> None:
        self.calibration = calibration
        self.given = None if threshold is None else float(threshold)

    @property
    def categories(self) -> list[str]:
        """The categories with a stored threshold (the valid values of a ``category``)."""
        return sorted(self.calibration.categories) if self.calibration is not None else []

    def check_category(self, category: str | None) -> None:
        """A ConfigError naming ``category`` when no threshold is stored for it."""
        if category is not None and category not in self.categories:
            raise ConfigError(f"category {category!r}: no threshold stored for it (stored: "
                              f"{', '.join(self.categories) or 'none'})", arg="category")

    def threshold(self, category: str | None = None) -> tuple[float | None, str | None, str | None]:
        """(threshold, threshold source, category whose threshold it is) for ``category``."""
        if self.given is not None:
            return self.given, "given", category
        if self.calibration is None:
            return None, None, None
        stored = self.calibration.categories.get(category, {}).get("image_threshold") if category else None
        if stored is not None:
            return float(stored), "checkpoint", category
        pooled = self.calibration.image_threshold
        return (None, None, None) if pooled is None else (float(pooled), "checkpoint", None)

    def decide(self, score: float, category: str | None = None, category_source: str = "given") -> Decision:
        """The decision for ``score`` with the threshold of ``category`` (None: the default one)."""
        threshold, source, used = self.threshold(category)
        if threshold is None:
            return Decision(None, None, None, category, None)
        if source == "given":
            return Decision(label_of(score, threshold), threshold, source, category,
                            category_source if category is not None else None)
        return Decision(label_of(score, threshold), threshold, source, used,
                        category_source if used is not None else "pooled")

    def pixel_threshold(self, category: str | None = None) -> float | None:
        """The pixel threshold of ``category`` if stored, else the pooled one."""
        if self.calibration is None:
            return None
        stored = self.calibration.categories.get(category, {}).get("pixel_threshold") if category else None
        return stored if stored is not None else self.calibration.pixel_threshold


class PixelHistogram:
    """Counts of normal and anomalous pixels in ``HIST_BINS`` bins over ``HIST_RANGE`` (int64)."""

    def __init__(self, bins: int = HIST_BINS, value_range: tuple[float, float] = HIST_RANGE) -> None:
        self.bins, self.lo, self.hi = bins, float(value_range[0]), float(value_range[1])
        self.normal = torch.zeros(bins, dtype=torch.int64)
        self.anomalous = torch.zeros(bins, dtype=torch.int64)

    def index(self, values: torch.Tensor) -> torch.Tensor:
        scaled = (values.double() - self.lo) * (self.bins / (self.hi - self.lo))
        return scaled.floor().clamp_(0, self.bins - 1).long()

    def update(self, masks: torch.Tensor, maps: torch.Tensor) -> None:
        maps, masks = maps.detach().float().cpu().reshape(-1), masks.detach().cpu().reshape(-1).bool()
        idx = self.index(maps)
        self.anomalous += torch.bincount(idx[masks], minlength=self.bins)
        self.normal += torch.bincount(idx[~masks], minlength=self.bins)

    def add(self, other: "PixelHistogram") -> None:
        """Count ``other``'s pixels too (e.g. another process's share of a category): exact."""
        if (other.bins, other.lo, other.hi) != (self.bins, self.lo, self.hi):
            raise ValueError(f"PixelHistogram.add: bins/range differ ({other.bins} over [{other.lo}, {other.hi}], "
                             f"{self.bins} over [{self.lo}, {self.hi}])")
        self.normal += other.normal
        self.anomalous += other.anomalous

    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def f1max_threshold(self) -> tuple[float, float]:
        """(F1max, lower edge of the bin reaching it): pixels ``>= edge`` predicted anomalous."""
        pos = int(self.anomalous.sum())
        if pos == 0:
            return math.nan, math.nan
        tp = self.anomalous.flip(0).cumsum(0).double()   # from the highest bin down
        fp = self.normal.flip(0).cumsum(0).double()
        f1 = 2 * tp / (pos + tp + fp).clamp_min(1)
        best = int(torch.argmax(f1))                     # first maximum = highest threshold
        return float(f1[best]), float(self.edges()[self.bins - 1 - best])

    def quantile(self, q: float, which: str = "all") -> float:
        counts = {"normal": self.normal, "anomalous": self.anomalous,
                  "all": self.normal + self.anomalous}[which]
        total = int(counts.sum())
        if total == 0:
            return math.nan
        cum = counts.cumsum(0)
        target = max(1, math.ceil(q * total))
        index = min(int(torch.searchsorted(cum, torch.tensor([target]))), self.bins - 1)  # first cum >= target
        return float(self.edges()[index + 1])  # upper edge of the bin holding the quantile

    def density(self, max_bins: int = 120) -> dict[str, list[float]]:
        """Densities (integrating to 1) of normal and anomalous pixels over the occupied range,
        re-binned into at most ``max_bins`` bins: {'edges', 'normal', 'anomalous'}."""
        total = self.normal + self.anomalous
        occupied = torch.nonzero(total).flatten()
        if len(occupied) == 0:
            return {"edges": [], "normal": [], "anomalous": []}
        first, last = int(occupied[0]), int(occupied[-1]) + 1
        width = max(1, math.ceil((last - first) / max_bins))
        last = first + width * math.ceil((last - first) / width)
        pad = max(0, last - self.bins)
        edges = self.edges()
        out: dict[str, list[float]] = {}
        for name, counts in (("normal", self.normal), ("anomalous", self.anomalous)):
            part = torch.cat([counts[first:], counts.new_zeros(pad)])[: last - first]
            coarse = part.reshape(-1, width).sum(1).double()
            bin_width = width * (self.hi - self.lo) / self.bins
            total_count = coarse.sum()
            out[name] = (coarse / (total_count * bin_width)).tolist() if total_count > 0 else []
        step = (self.hi - self.lo) / self.bins
        out["edges"] = [float(edges[first] + i * width * step) for i in range((last - first) // width + 1)]
        return out


def f1max_midpoint_threshold(labels: torch.Tensor, scores: torch.Tensor) -> tuple[float, float]:
    """(F1max, threshold): like ``metrics.f1max_threshold`` but half-way between the lowest score
    labelled anomalous at F1max and the next lower score, so that tiny numerical differences (another
    device, batch size or precision) do not flip the images at the boundary. Same F1 on these scores."""
    from inp_former.metrics import f1max_threshold  # calibration only: serving never loads the metrics

    if not bool(labels.bool().any()):
        return math.nan, math.nan
    f1, threshold = f1max_threshold(labels, scores)
    below = scores[scores < threshold]
    if below.numel():
        threshold = float((threshold + float(below.max())) / 2)
    return f1, threshold


def _quantiles(values: torch.Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    v = values.double()
    return {"min": float(v.min()), "p50": float(v.quantile(0.5)), "p99": float(v.quantile(0.99)),
            "max": float(v.max())}


class Calibrator:
    """Collects each category's evaluation outputs; :meth:`result` gives the :class:`Calibration`.

    Pass :meth:`update` as ``on_category`` to :func:`inp_former.evaluate.evaluate`. Memory: the image
    scores plus two int64 histograms (1 MiB) per category; maps are not kept.
    """

    def __init__(self, map_mode: str = "decoder") -> None:
        self.map_mode = map_mode
        self.labels: dict[str, torch.Tensor] = {}
        self.scores: dict[str, torch.Tensor] = {}
        self.paths: dict[str, list[str]] = {}
        self.histograms: dict[str, PixelHistogram] = {}

    def update(self, category: str, outputs: dict[str, Any]) -> None:
        """``outputs``: labels (n,), scores (n,), paths, and either ``pixel_histogram`` (a
        :class:`PixelHistogram`, as :func:`inp_former.evaluate.evaluate` gives) or masks (n, S, S) bool
        and maps (n, S, S)."""
        self.labels[category] = torch.as_tensor(outputs["labels"]).reshape(-1).long().cpu()
        self.scores[category] = torch.as_tensor(outputs["scores"]).reshape(-1).double().cpu()
        self.paths[category] = list(outputs.get("paths", []))
        hist = outputs.get("pixel_histogram")  # evaluate() streams: a histogram, never the full maps
        if hist is None:
            hist = PixelHistogram()
            hist.update(torch.as_tensor(outputs["masks"]), torch.as_tensor(outputs["maps"]))
        self.histograms[category] = hist

    def pooled_histogram(self) -> PixelHistogram:
        pooled = PixelHistogram()
        for hist in self.histograms.values():
            pooled.add(hist)
        return pooled

    def result(self, source: dict[str, Any] | None = None) -> Calibration:
        if not self.scores:
            raise ValueError("no evaluation outputs to calibrate on")
        categories: dict[str, dict[str, Any]] = {}
        for name in self.scores:
            labels, scores = self.labels[name], self.scores[name]
            f1, threshold = f1max_midpoint_threshold(labels, scores)
            p_f1, p_threshold = self.histograms[name].f1max_threshold()
            categories[name] = {"image_threshold": threshold, "image_f1": f1, "pixel_threshold": p_threshold,
                                "pixel_f1": p_f1, "score_min": float(scores.min()), "score_max": float(scores.max()),
                                "images": int(labels.numel()), "anomalous_images": int(labels.sum())}
        labels, scores = torch.cat(list(self.labels.values())), torch.cat(list(self.scores.values()))
        f1, threshold = f1max_midpoint_threshold(labels, scores)
        pooled = self.pooled_histogram()
        p_f1, p_threshold = pooled.f1max_threshold()
        normal, anomalous = _quantiles(scores[labels == 0]), _quantiles(scores[labels == 1])
        score_range = {"min": float(scores.min()), "max": float(scores.max()),
                       **{f"normal_{k}": v for k, v in normal.items()},
                       **{f"anomalous_{k}": v for k, v in anomalous.items()}}
        lo = pooled.quantile(0.5, "normal")
        if math.isnan(lo):
            lo = pooled.quantile(0.5, "all")
        hi = pooled.quantile(0.999, "all")
        if not math.isnan(p_threshold):
            hi = max(hi, p_threshold + (p_threshold - lo) * 0.25)
        if not hi > lo:
            hi = lo + 1e-6
        meta = {"computed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "images": int(labels.numel()), "anomalous_images": int(labels.sum()),
                "categories": sorted(self.scores), "histogram_bins": HIST_BINS,
                "histogram_range": list(HIST_RANGE), **(source or {})}
        return Calibration(self.map_mode, threshold, f1, p_threshold, p_f1, score_range, [lo, hi], categories, meta)


# --- the checkpoint's meta ------------------------------------------------------------------------

def read_calibration(meta: dict[str, Any], map_mode: str = "decoder") -> Calibration | None:
    """The calibration stored for ``map_mode`` in a checkpoint's ``meta``, or None."""
    stored = (meta or {}).get(CALIBRATION_KEY) or {}
    raw = stored.get(map_mode)
    return Calibration.from_dict(raw) if isinstance(raw, dict) else None


def merge_calibration(stored: Calibration | None, new: Calibration) -> tuple[Calibration, list[str]]:
    """``new`` merged into ``stored``: per category, the new thresholds replace the stored ones and
    categories not evaluated now are kept. The pooled values (image and pixel threshold, ranges) are
    taken from ``new`` only if it covers every stored category: a pooled threshold of some of the
    categories must not replace the one of all of them. Returns the merge and what changed."""
    if stored is None or stored.map_mode != new.map_mode:
        return new, [f"stored the {new.map_mode} thresholds of {len(new.categories)} categories"]
    changes = []
    for name, values in new.categories.items():
        old = stored.categories.get(name, {}).get("image_threshold")
        if old is None:
            changes.append(f"{name}: added (image threshold {values.get('image_threshold'):.6g})")
        elif old != values.get("image_threshold"):
            changes.append(f"{name}: image threshold {old:.6g} -> {values.get('image_threshold'):.6g}")
    categories = {**stored.categories, **new.categories}
    if set(stored.categories) <= set(new.categories):
        merged = replace(new, categories=categories)
        if stored.image_threshold != new.image_threshold and new.image_threshold is not None:
            old = "none" if stored.image_threshold is None else f"{stored.image_threshold:.6g}"
            changes.append(f"pooled image threshold {old} -> {new.image_threshold:.6g}")
    else:
        merged = replace(stored, categories=categories)
        changes.append(f"pooled thresholds kept (this evaluation covered {len(new.categories)} of "
                       f"{len(categories)} categories)")
    return merged, changes or ["nothing changed"]


def store_calibration(checkpoint: Path, calibration: Calibration) -> list[str]:
    """Merge ``calibration`` into ``meta["calibration"][map_mode]`` of an inpctl checkpoint, atomically
    (:func:`merge_calibration`); returns what changed.

    Everything else in the file is kept as it is; the other map mode's calibration too.
    """
    from inp_former.checkpoint import update_meta

    def merge(meta: dict[str, Any]) -> list[str]:
        merged, changes = merge_calibration(read_calibration(meta, calibration.map_mode), calibration)
        meta[CALIBRATION_KEY] = {**(meta.get(CALIBRATION_KEY) or {}), calibration.map_mode: merged.to_dict()}
        return changes

    return update_meta(Path(checkpoint), merge)
