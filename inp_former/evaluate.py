"""Evaluation: anomaly maps and image scores on each category's test split, then the metrics."""
from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import functional as TF

from inp_former import distributed
from inp_former.config import RunConfig
from inp_former.data import AnomalyDataset, image_transform, mask_transform, masks_for_metrics
from inp_former.errors import ConfigError
from inp_former.inference import InferenceConfig, score_batch
from inp_former.io import atomic_write_text
from inp_former.metrics import PIXEL_KEYS, PixelMetricAccumulator, image_metrics, mean_metrics
from inp_former.settings import category_samples, image_hw, stretched_images
from inp_former.tiling import score_image, to_uint8_tensor
from inp_former.model import INPFormer
from inp_former.runtime import loader_kwargs

METRIC_KEYS = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro")
# Pixel metrics are exact while a category has at most EXACT_PIXELS pixels (256 maps of 256x256, about
# 26 bytes per pixel at the peak: ~440 MB); beyond, they come from PIXEL_BINS-bin histograms over
# PIXEL_RANGE (every map value is a mean of 1 - cos, so it lies there) with a guaranteed error bound.
EXACT_PIXELS = 1 << 24
PIXEL_BINS = 1 << 20
PIXEL_RANGE = (0.0, 2.0)


@dataclass
class EvalResult:
    categories: dict[str, dict[str, float]]
    mean: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)   # path, category, label, score
    meta: dict[str, Any] = field(default_factory=dict)

    def metrics_json(self) -> dict[str, Any]:
        return {"categories": self.categories, "mean": self.mean, "meta": self.meta}

    def write(self, out_dir: Path) -> None:
        """``metrics.json`` and ``scores.csv``, each written atomically."""
        out_dir = Path(out_dir)
        atomic_write_text(out_dir / "metrics.json", json.dumps(self.metrics_json(), indent=2) + "\n")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["path", "category", "label", "score"], lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({**row, "score": repr(float(row["score"]))})
        atomic_write_text(out_dir / "scores.csv", buffer.getvalue())


Scorer = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]   # images -> (maps, scores)


@dataclass(frozen=True)
class EvalConfig:
    """How a model is evaluated (not saved with the model: every evaluation may choose anew):
    the scoring settings every inference surface shares, plus evaluation's own."""
    inference: InferenceConfig = InferenceConfig()
    exact_pixels: int = EXACT_PIXELS      # pixel metrics exact up to this many pixels per category, then binned
    num_workers: int | None = None        # data-loading processes; None: chosen for the device (runtime.py)

    def __post_init__(self) -> None:
        if int(self.exact_pixels) < 0:
            raise ConfigError(f"exact_pixels {self.exact_pixels}: must be at least 0", arg="exact_pixels")
        if self.num_workers is not None and int(self.num_workers) < 0:
            raise ConfigError(f"num_workers {self.num_workers}: must be at least 0", arg="num_workers")


def bound_heap_growth(threshold: int = 1 << 20) -> bool:
    """Make freed large arrays go back to the operating system (glibc only; False elsewhere).

    By default glibc raises its mmap threshold as large blocks are freed, after which per-batch
    arrays come from the heap, which fragmentation can grow batch after batch although nothing is
    kept. Fixing the threshold serves every allocation of ``threshold`` bytes or more by mmap, so
    resident memory tracks what is alive. Process-wide; ``inpctl eval`` holds it while it evaluates
    (:func:`heap_growth_bounded`); a library user may.
    """
    return _mallopt(M_MMAP_THRESHOLD, threshold)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters


def _mallopt(parameter: int, value: int) -> bool:
    """glibc's ``mallopt``; False where there is no glibc (or it refuses)."""
    import ctypes
    import ctypes.util

    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(parameter, int(value)))
    except (OSError, AttributeError, TypeError):
        return False


RELEASED_MMAP_THRESHOLD = 32 << 20   # glibc's own ceiling for its moving mmap threshold (64-bit)
_bounded_blocks = 0                  # heap_growth_bounded blocks open now (nested)


def _set_trim_threshold(size: int) -> None:
    _mallopt(M_TRIM_THRESHOLD, size)


@contextlib.contextmanager
def heap_growth_bounded(threshold: int = 1 << 20) -> Iterator[bool]:
    """:func:`bound_heap_growth` for the block only (the last of nested blocks releases it).

    Fixing a threshold turns glibc's moving thresholds off for good, so the release sets both where
    glibc's own rule would have taken them: mmap at its ceiling (32 MiB), trim at twice that. Left
    at 1 MiB, every large array of later work in the process came from a fresh mapping (a tiny
    model's training and scoring after an evaluation: 15% slower in wall time, twice the system
    time); with the trim threshold left at its 128 KiB, freeing and reallocating 2-4 MiB arrays was
    still 3.4x slower than glibc's default."""
    global _bounded_blocks
    bounded = bound_heap_growth(threshold)
    _bounded_blocks += 1
    try:
        yield bounded
    finally:
        _bounded_blocks -= 1
        if bounded and _bounded_blocks == 0:
            bound_heap_growth(RELEASED_MMAP_THRESHOLD)
            _set_trim_threshold(2 * RELEASED_MMAP_THRESHOLD)


class CategoryStream:
    """One category's metrics from a stream of batches, in memory that does not grow with the stream.

    Image labels and scores are kept (a few bytes per image); the pixel metrics go through a
    :class:`inp_former.metrics.PixelMetricAccumulator` (exact up to ``exact_pixels`` pixels, then
    binned with :meth:`error_bounds`), and a :class:`inp_former.thresholds.PixelHistogram` of normal
    and anomalous pixels is filled for the thresholds and the report's densities.
    """

    def __init__(self, exact_pixels: int = EXACT_PIXELS, bins: int = PIXEL_BINS,
                 value_range: tuple[float, float] = PIXEL_RANGE) -> None:
        from inp_former.thresholds import PixelHistogram

        self.labels: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.pixels = PixelMetricAccumulator(value_range, bins, exact_pixels, device="cpu")
        self.histogram = PixelHistogram()

    def update(self, labels: Any, scores: torch.Tensor, masks: torch.Tensor, maps: torch.Tensor) -> None:
        """A batch: labels (B,), image scores (B,), masks (B, S, S) bool, maps (B, S, S)."""
        maps, masks = maps.detach().float().cpu(), masks.detach().cpu()
        self.labels.append(torch.as_tensor(labels).reshape(-1).cpu())
        self.scores.append(scores.detach().float().cpu().reshape(-1))
        self.pixels.update(masks, maps)
        self.histogram.update(masks, maps)

    @property
    def binned(self) -> bool:
        return self.pixels.pixels_seen > self.pixels.exact_pixels

    def image_outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.labels), torch.cat(self.scores)

    @classmethod
    def combine(cls, parts: "list[CategoryStream]") -> "CategoryStream":
        """One stream of several that saw consecutive shares of one category (one per process, in
        rank order): what one stream fed every batch would hold (see
        :meth:`inp_former.metrics.PixelMetricAccumulator.combine`)."""
        if len(parts) == 1:   # one process: the stream itself
            return parts[0]
        out = cls.__new__(cls)
        out.labels = [t for part in parts for t in part.labels]
        out.scores = [t for part in parts for t in part.scores]
        out.pixels = PixelMetricAccumulator.combine([part.pixels for part in parts])
        first = parts[0].histogram
        out.histogram = type(first)(first.bins, (first.lo, first.hi))
        for part in parts:
            out.histogram.add(part.histogram)
        return out

    def compute(self) -> dict[str, float]:
        """The seven metrics (pixel ones exact, or binned within :meth:`error_bounds`)."""
        labels, scores = self.image_outputs()
        return {**image_metrics(labels, scores), **self.pixels.compute()}

    def error_bounds(self) -> dict[str, float]:
        """Per pixel metric, a guaranteed bound on |reported - exact| (0 when exact)."""
        return self.pixels.error_bounds()


def evaluate(model: INPFormer, cfg: RunConfig, categories: list[str], device: torch.device | str,
             inference: InferenceConfig = InferenceConfig(), *,
             on_batch: Callable[[str, int, int], None] | None = None, num_workers: int | None = None,
             on_category: Callable[[str, dict[str, Any]], None] | None = None,
             exact_pixels: int = EXACT_PIXELS, pixel_bins: int = PIXEL_BINS,
             scorer: Scorer | None = None) -> EvalResult:
    """Evaluate on the test split of each category of ``cfg.data``; metrics per category and mean.

    Streams: memory does not grow with the number of test images (see :class:`CategoryStream`).
    Pixel metrics are exact for categories of at most ``exact_pixels`` pixels, else binned into
    ``pixel_bins`` bins; ``meta["pixel_metrics"]`` then states the error bound of each.

    ``on_category(category, outputs)``, if given, sees each category's outputs once they are complete:
    ``labels`` (n,), ``scores`` (n,), ``paths``, and ``pixel_histogram`` (a
    :class:`inp_former.thresholds.PixelHistogram` of the maps against the masks) -- never the full maps
    (e.g. :class:`inp_former.thresholds.Calibrator` computes thresholds from them).

    ``scorer`` (images -> maps, scores) replaces :func:`score_batch`, e.g. the CUDA fast path.

    A tiled model (``cfg.model.tile``) is scored one test image at a time at its own resolution,
    its tiles through ``scorer`` in batches of ``inference.batch_size`` (:mod:`inp_former.tiling`);
    its maps and masks are full resolution.

    Sharded in a process group of several processes (``torchrun``; every process calls this): each
    scores its block of whole batches of every category (:func:`inp_former.distributed.share`, so a
    batch holds the images it holds in one process), rank 0 combines the shares in rank order and
    computes the metrics, and every process returns the result one process would give: the same rows
    in the same order, the same metrics and error bounds. ``on_category`` then runs on rank 0 alone;
    ``on_batch`` counts the images of all processes."""
    device = torch.device(device)
    precision, map_mode, batch_size = inference.precision_on(device), inference.map_mode, inference.batch_size
    mc = cfg.model
    model.eval().to(device)
    per_category: dict[str, dict[str, float]] = {}
    bounds: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    job = distributed.Job("eval")
    stretched, total = 0, 0   # keep-aspect: test images of another aspect ratio than the model's input
    score_images = _image_scorer(model, cfg, precision, map_mode, batch_size, device, scorer)
    step = batch_size if mc.tile is None else 1   # images per loader batch (tiled: a batch of tiles each)
    for category in categories:
        samples = category_samples(cfg.data, category, "test")  # also "<dataset>/<category>" of several datasets
        stretched, total = stretched + stretched_images(mc, samples), total + len(samples)
        transforms = image_transform(mc.resize_hw, mc.input_hw), mask_transform(mc.resize_hw, mc.input_hw)
        if mc.tile is not None:   # whole images at their own resolution; masks too
            transforms = to_uint8_tensor, TF.to_tensor
        dataset = AnomalyDataset(samples, *transforms)
        batches = distributed.share(-(-len(dataset) // step))
        mine = range(batches.start * step, min(batches.stop * step, len(dataset)))
        stream, own_rows, reported = CategoryStream(_exact_limit(mc, samples, exact_pixels), pixel_bins), [], [0]

        def progress(count: int, category: str = category, size: int = len(dataset),
                     reported: list[int] = reported) -> None:
            if on_batch is not None and count > reported[0]:   # images of this category, all processes
                on_batch(category, count - reported[0], size)
                reported[0] = count

        if len(mine):
            loader = DataLoader(Subset(dataset, mine), batch_size=step, shuffle=False,
                                **loader_kwargs(device, num_workers))
            for batch in loader:
                image_maps, image_scores = score_images(batch["image"].to(device, non_blocking=True))
                masks = masks_for_metrics(batch["mask"], tuple(image_maps.shape[-2:]))   # map_hw; tiled: the image's
                stream.update(batch["label"], image_scores, masks, image_maps)
                for path, label, score in zip(batch["path"], batch["label"], image_scores.tolist()):
                    own_rows.append({"path": path, "category": category, "label": int(label), "score": score})
                progress(job.advance(len(batch["label"])))
        job.wait(progress)   # every share of the category is scored (or a process failed: all stop)
        shares = distributed.gather((stream, own_rows))
        del stream
        if shares is None:  # another process than rank 0: its share is handed over
            continue
        stream = CategoryStream.combine([s for s, _ in shares])
        rows.extend(row for _, share_rows in shares for row in share_rows)
        del shares
        per_category[category] = stream.compute()
        if stream.binned:
            bounds[category] = {"pixels": stream.pixels.pixels_seen, "error_bounds": stream.error_bounds()}
        if on_category is not None:
            labels, scores = stream.image_outputs()
            on_category(category, {"labels": labels, "scores": scores, "pixel_histogram": stream.histogram,
                                   "paths": [s.path for s in samples]})
        del stream
    return distributed.on_writer(lambda: EvalResult(
        per_category, mean_metrics(per_category), rows,
        {"map_mode": str(map_mode), "precision": str(precision), "device": str(device),
         "processes": distributed.processes(), "dataset": cfg.data.dataset, "data_root": str(cfg.data.root),
         "pixel_metrics": pixel_metrics_meta(bounds, exact_pixels, pixel_bins),
         **({"stretched_images": [stretched, total]} if stretched else {})}))


def _image_scorer(model: INPFormer, cfg: RunConfig, precision: str, map_mode: str, batch_size: int,
                  device: torch.device, scorer: Scorer | None) -> Scorer:
    """images -> (maps, scores): ``scorer``, else :func:`score_batch`; for a tiled model, one whole
    (1, 3, H, W) uint8 image -> its full-resolution map and score, its tiles scored by that scorer in
    batches of ``batch_size`` (:func:`inp_former.tiling.score_image`)."""
    def square(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return score_batch(model, images, cfg, precision, map_mode)[:2]

    tiles = scorer or square
    if cfg.model.tile is None:
        return tiles

    def tiled(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scored = score_image(images[0], cfg.model, tiles, batch_size, device)
        return scored.map[None], scored.score[None]

    return tiled


def _exact_limit(mc: Any, samples: list[Any], exact_pixels: int) -> int:
    """The exact-pixel limit of a category's stream: 0 (binned from the start) for a tiled model's
    test images of several sizes, whose full-resolution maps cannot be held as one exact tensor."""
    if mc.tile is None or len({image_hw(s.path) for s in samples}) <= 1:
        return exact_pixels
    return 0


def pixel_metrics_meta(bounds: dict[str, dict[str, Any]], exact_pixels: int, bins: int) -> dict[str, Any]:
    """How the pixel metrics were computed, for metrics.json: exact, or binned with error bounds.

    ``max_error_bounds``: per metric, the largest bound over the categories; it also bounds the
    error of the mean over categories. All 0 when every category was exact.
    """
    worst = {k: 0.0 for k in PIXEL_KEYS}
    for entry in bounds.values():
        for key, value in entry["error_bounds"].items():
            if value == value:  # not nan
                worst[key] = max(worst[key], value)
    return {"mode": "binned" if bounds else "exact", "exact_pixel_limit": exact_pixels, "bins": bins,
            "range": list(PIXEL_RANGE), "binned_categories": bounds, "max_error_bounds": worst}
