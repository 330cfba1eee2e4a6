"""The paper's seven metrics (docs/behaviour.md, 'Metrics'), in torch on any device: sort once, cumulative sums.

Image: I-AUROC, I-AP, I-F1max. Pixel: P-AUROC, P-AP, P-F1max, AUPRO (FPR 0 to 0.3, divided by 0.3).

Conventions (shared by every curve here, and equal to scikit-learn's where it has the metric):

* Thresholds are the distinct score values; a sample is predicted anomalous when ``score >= t``.
  Tied scores therefore enter a curve together, as one step (scikit-learn's ``_binary_clf_curve``).
  Using ``>`` instead would give the same set of curve points, only labelled with other thresholds.
* AUROC: trapezoid over (FPR, TPR) from (0, 0) (= ``roc_auc_score``, ties included).
  AP: step sum ``sum_n (R_n - R_{n-1}) P_n`` (= ``average_precision_score``).
  F1max: ``max 2 P R / (P + R + 1e-8)`` over the PR curve (``F1_EPS``; the epsilon only keeps 0/0
  away and moves F1 by at most 0.5e-8).
* AUPRO: regions are the connected components of each image's mask, from ``skimage.measure.label``
  with default arguments, i.e. full (8-neighbour) connectivity in 2D; regions never cross images.
  PRO(t) = mean over all regions of all images of the fraction of the region with score >= t;
  FPR(t) = fraction of normal pixels with score >= t. The curve starts at (0, 0), takes every
  distinct score as a threshold, is integrated by trapezoids up to FPR = 0.3 (interpolating
  linearly at 0.3) and divided by 0.3. Exact: no fixed threshold grid.
* Undefined metrics are nan, silently: AUROC without both classes, AP / F1max without positives,
  AUPRO without anomalous or without normal pixels. (scikit-learn raises or warns there.)
  ``mean_metrics`` skips nan per metric.

Precision: sorting happens in the scores' own float dtype (exact: float16/bfloat16 are widened to
float32, integers to float64); counts are integers, ratios and sums are float64.

Memory of ``pixel_metrics`` for P pixels, A anomalous, G distinct scores, on the maps' device:
at most about 21 bytes per pixel (sorted float32 values, int64 order, bool labels in sorted
order, one int64 cumulative count; each freed as soon as it is used) plus about 40 bytes per
distinct score (tie ends, float64 curves) plus 24 per anomalous pixel, with no full-size float64
copy of the maps. Measured on CPU: 300 maps of 256x256 (19.7M float32 pixels, 11.7M distinct)
peak at about 630 MB above the inputs and take about 7 s on 2 cores; quantised maps need less.

For streams too large to hold, ``PixelMetricAccumulator`` keeps histograms of O(bins) size and
reports a guaranteed bound on the error binning introduces. Both paths share the curve code below:
a curve is the cumulative (positives, negatives, region weight) at each threshold, highest first.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

F1_EPS = 1e-8
AUPRO_FPR_LIMIT = 0.3

PIXEL_KEYS = ("p_auroc", "p_ap", "p_f1max", "aupro")
IMAGE_KEYS = ("i_auroc", "i_ap", "i_f1max")

__all__ = ["F1_EPS", "AUPRO_FPR_LIMIT", "auroc", "average_precision", "f1max_threshold", "aupro",
           "image_metrics", "pixel_metrics", "category_metrics", "mean_metrics", "PixelMetricAccumulator"]


# ----------------------------------------------------------------------------- input handling

def _to_tensor(x: Any) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _scores(x: Any) -> torch.Tensor:
    """Scores in a dtype whose sort is exact (no two distinct inputs become equal)."""
    t = _to_tensor(x)
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    elif not t.is_floating_point():
        t = t.double()
    if torch.isnan(t).any():
        raise ValueError("scores contain nan")
    return t


def _labels(x: Any, device: torch.device) -> torch.Tensor:
    """Binary labels as bool; refuses anything but {0, 1} (catches masks that were not binarised)."""
    t = _to_tensor(x)
    if t.dtype != torch.bool:
        if ((t != 0) & (t != 1)).any():
            raise ValueError("labels / masks must be binary (0/1 or bool); binarise masks first")
        t = t != 0
    return t.to(device)


def _stack(x: torch.Tensor, what: str) -> torch.Tensor:
    """(n, H, W) view of masks or maps given as (H, W), (n, H, W) or (n, 1, H, W)."""
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"{what}: expected shape (n, H, W), got {tuple(x.shape)}")
    return x


def _region_weights(masks: torch.Tensor) -> tuple[np.ndarray, int]:
    """For every anomalous pixel, in flat (C) order: 1 / area of its region; and the region count.

    Labelled per image with skimage defaults (full connectivity), so regions never cross images.
    """
    from skimage.measure import label as label_regions

    masks_np = masks.cpu().numpy()
    weights: list[np.ndarray] = []
    regions = 0
    for mask in masks_np:
        if not mask.any():
            continue
        labelled = label_regions(mask)
        areas = np.bincount(labelled.ravel())
        weights.append(1.0 / areas[labelled[mask]])  # boolean indexing keeps C order
        regions += len(areas) - 1
    return (np.concatenate(weights) if weights else np.zeros(0)), regions


# ----------------------------------------------------------------------------- curves

class _Curve:
    """Cumulative counts at each threshold, highest threshold first (tie groups = one point).

    ``tps``/``fps``: float64 positives/negatives with score >= threshold. ``pro``: cumulative region
    weight (sum of 1 / (area * regions)), only for pixel curves. Everything stays on the device.
    """

    def __init__(self, tps: torch.Tensor, fps: torch.Tensor, thresholds: torch.Tensor | None = None,
                 pro: torch.Tensor | None = None):
        self.tps, self.fps, self.thresholds, self.pro = tps, fps, thresholds, pro

    @property
    def positives(self) -> float:
        return float(self.tps[-1]) if len(self.tps) else 0.0

    @property
    def negatives(self) -> float:
        return float(self.fps[-1]) if len(self.fps) else 0.0


def _sorted_curve(labels: torch.Tensor, scores: torch.Tensor, region_weights: np.ndarray | None = None,
                  want_thresholds: bool = True) -> _Curve:
    """Exact curve of flat ``labels`` (bool) and ``scores``: one sort, one cumulative sum.

    ``region_weights``: per anomalous pixel in flat order (see ``_region_weights``), already divided
    by the region count; gives the PRO curve as well.
    """
    n = scores.numel()
    if n == 0:
        empty = scores.new_zeros(0, dtype=torch.float64)
        return _Curve(empty, empty, scores.new_zeros(0), empty if region_weights is not None else None)
    sorted_scores, order = torch.sort(scores, descending=True)
    # last index of every run of equal scores: the curve's points
    ends = torch.cat([torch.nonzero(sorted_scores[1:] != sorted_scores[:-1]).flatten(),
                      torch.tensor([n - 1], device=scores.device)])
    thresholds = sorted_scores[ends] if want_thresholds else None
    del sorted_scores
    y = labels[order]
    anomalous_by_rank = order[y] if region_weights is not None else None  # flat index, best score first
    del order
    tps_int = torch.cumsum(y, 0)[ends]
    del y
    fps = (ends + 1 - tps_int).double()  # negatives so far = points so far - positives so far
    tps = tps_int.double()
    pro = None
    if region_weights is not None:
        # weight of the k-th anomalous pixel in score order; anomalous flat indices are sorted, so
        # searchsorted maps a flat index to its position in region_weights (O(A), no P-size array)
        flat_anomalous = torch.nonzero(labels).flatten()
        weights = torch.as_tensor(region_weights, dtype=torch.float64, device=scores.device)
        ranked = weights[torch.searchsorted(flat_anomalous, anomalous_by_rank)]
        cumulative = torch.cat([ranked.new_zeros(1), torch.cumsum(ranked, 0)])
        pro = cumulative[tps_int]  # region weight of the first tps anomalous pixels
    return _Curve(tps, fps, thresholds, pro)


def _curve_auroc(c: _Curve) -> float:
    if c.positives == 0 or c.negatives == 0:
        return math.nan
    # trapezoid on the counts, normalised once at the end: sums of integer products are exact in
    # float64 up to 2**53, so e.g. a perfect separation gives exactly 1
    zero = c.tps.new_zeros(1)
    tps_before = torch.cat([zero, c.tps[:-1]])
    twice_area = (torch.diff(c.fps, prepend=zero) * (c.tps + tps_before)).sum()
    return float(twice_area / (2 * c.tps[-1] * c.fps[-1]))


def _curve_ap(c: _Curve) -> float:
    if c.positives == 0:
        return math.nan
    precision = c.tps / (c.tps + c.fps)
    steps = torch.diff(c.tps, prepend=c.tps.new_zeros(1))  # positives gained: recall step * P, exact
    return float((steps * precision).sum() / c.tps[-1])


def _curve_f1(c: _Curve) -> tuple[float, int]:
    """(F1max, index of the curve point reaching it; the highest threshold among equal maxima)."""
    if c.positives == 0:
        return math.nan, -1
    precision, recall = c.tps / (c.tps + c.fps), c.tps / c.tps[-1]  # tps + fps >= 1 at every point
    f1 = 2 * precision * recall / (precision + recall + F1_EPS)
    best = int(torch.argmax(f1))  # first maximum = highest threshold
    return float(f1[best]), best


def _partial_trapezoid(x: torch.Tensor, y: torch.Tensor, limit: float) -> float:
    """Trapezoid area under (x, y) for x in [0, limit]; x nondecreasing from 0; interpolates at limit."""
    k = int(torch.searchsorted(x, x.new_tensor([limit]), right=True))  # points with x <= limit (>= 1)
    area = torch.trapezoid(y[:k], x[:k])
    if k < len(x):  # x[k-1] <= limit < x[k]
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        y_limit = y0 + (limit - x0) * (y1 - y0) / (x1 - x0)
        area = area + (limit - x0) * (y0 + y_limit) / 2
    return float(area)


def _curve_aupro(c: _Curve, regions: int, fpr_limit: float) -> float:
    if regions == 0 or c.negatives == 0 or c.pro is None:
        return math.nan
    zero = c.fps.new_zeros(1)
    fpr = torch.cat([zero, c.fps / c.fps[-1]])
    pro = torch.cat([zero, c.pro])
    return _partial_trapezoid(fpr, pro, fpr_limit) / fpr_limit


def _pixel_curve_metrics(c: _Curve, regions: int, fpr_limit: float) -> dict[str, float]:
    return {"p_auroc": _curve_auroc(c), "p_ap": _curve_ap(c), "p_f1max": _curve_f1(c)[0],
            "aupro": _curve_aupro(c, regions, fpr_limit)}


# ----------------------------------------------------------------------------- public: exact metrics

def _flat_curve(labels: Any, scores: Any) -> _Curve:
    s = _scores(scores).reshape(-1)
    y = _labels(labels, s.device).reshape(-1)
    if y.numel() != s.numel():
        raise ValueError(f"{y.numel()} labels for {s.numel()} scores")
    return _sorted_curve(y, s)


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (= sklearn ``roc_auc_score``); nan without both classes."""
    return _curve_auroc(_flat_curve(labels, scores))


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision (= sklearn ``average_precision_score``); nan without positives."""
    return _curve_ap(_flat_curve(labels, scores))


def f1max_threshold(labels: Any, scores: Any) -> tuple[float, float]:
    """(F1max, threshold reaching it): predicting anomalous when ``score >= threshold`` gives F1max.

    Among thresholds with the same maximal F1 the highest is returned; (nan, nan) without positives.
    """
    c = _flat_curve(labels, scores)
    f1, best = _curve_f1(c)
    return (f1, float(c.thresholds[best])) if best >= 0 else (math.nan, math.nan)


def image_metrics(labels: Any, scores: Any, return_threshold: bool = False) -> dict[str, float]:
    """``i_auroc``, ``i_ap``, ``i_f1max`` (fractions); plus ``i_f1max_threshold`` if asked."""
    c = _flat_curve(labels, scores)
    f1, best = _curve_f1(c)
    out = {"i_auroc": _curve_auroc(c), "i_ap": _curve_ap(c), "i_f1max": f1}
    if return_threshold:
        out["i_f1max_threshold"] = float(c.thresholds[best]) if best >= 0 else math.nan
    return out


def _pixel_inputs(masks: Any, maps: Any) -> tuple[torch.Tensor, torch.Tensor]:
    maps_t = _stack(_scores(maps), "maps")
    masks_t = _stack(_labels(masks, maps_t.device), "masks")
    if masks_t.shape != maps_t.shape:
        raise ValueError(f"masks {tuple(masks_t.shape)} and maps {tuple(maps_t.shape)} differ in shape")
    return masks_t, maps_t


def _exact_pixel_metrics(masks: torch.Tensor, maps: torch.Tensor, fpr_limit: float) -> dict[str, float]:
    weights, regions = _region_weights(masks)
    c = _sorted_curve(masks.reshape(-1), maps.reshape(-1), weights / max(regions, 1), want_thresholds=False)
    return _pixel_curve_metrics(c, regions, fpr_limit)


def pixel_metrics(masks: Any, maps: Any, fpr_limit: float = AUPRO_FPR_LIMIT) -> dict[str, float]:
    """``p_auroc``, ``p_ap``, ``p_f1max``, ``aupro`` of binary ``masks`` and float ``maps``, (n, H, W).

    All four come from one sort of the pixels, on the maps' device. See the module docstring.
    """
    masks_t, maps_t = _pixel_inputs(masks, maps)
    return _exact_pixel_metrics(masks_t, maps_t, fpr_limit)


def aupro(masks: Any, maps: Any, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Area under the per-region-overlap curve for FPR in [0, fpr_limit], divided by fpr_limit."""
    return pixel_metrics(masks, maps, fpr_limit)["aupro"]


def category_metrics(labels: Any, scores: Any, masks: Any, maps: Any) -> dict[str, float]:
    """All seven: image metrics of (labels, scores), pixel metrics of (masks, maps)."""
    return {**image_metrics(labels, scores), **pixel_metrics(masks, maps)}


def mean_metrics(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over categories of each metric, ignoring categories where it is undefined (nan)."""
    keys = list(dict.fromkeys(k for values in per_category.values() for k in values))
    out = {}
    for key in keys:
        values = [v[key] for v in per_category.values() if key in v and not math.isnan(v[key])]
        out[key] = float(np.mean(values)) if values else math.nan
    return out


# ----------------------------------------------------------------------------- streaming, binned

class PixelMetricAccumulator:
    """Pixel metrics of a stream of (masks, maps) batches in O(bins) memory.

    Scores are quantised into ``bins`` equal bins over ``value_range`` = (lo, hi); values outside
    go to the end bins. Three histograms are kept: all pixels, anomalous pixels, and anomalous
    pixels weighted by 1 / area of their region (each batch's masks are labelled in ``update``;
    regions never cross images, so areas are known per batch). ``compute`` then runs the exact
    curve code on the bins, i.e. it returns the exact metrics of the bin-quantised scores.

    ``value_range=None`` estimates (min, max) from the data held when the first histogram is
    filled (the exact-mode buffer, else the first batch); later values outside are clamped.

    Exact mode: while at most ``exact_pixels`` pixels have been seen, batches are kept as they are
    and ``compute`` is exact (bounds 0); the first batch beyond that folds them into the histograms.

    ``error_bounds()`` gives, per metric, a guaranteed bound on |binned - exact|. They hold for any
    order-preserving quantisation (clamping included), because every exact tie group lies in one
    bin and every binned curve point is also a point of the exact curve:
      * AUROC: only pairs (anomalous, normal) in the same bin change (from 0/0.5/1 to 0.5):
        sum_b pos_b neg_b / (2 P N).
      * AP: positives of bin b carry recall pos_b / P in both; the exact precisions there and the
        binned one lie in [(TP0 + 1) / (TP0 + 1 + FP1), TP1 / (TP1 + FP0)] (counts above the bin: 0,
        including it: 1), so the bound is sum_b pos_b / P * (that interval's width).
      * F1max: binned <= exact. The exact maximiser lies in some bin b; against the binned point
        after the bin F1 drops by at most neg_b / (P + TP0 + FP0 + neg_b), against the one before by
        at most 2 pos_b / (P + TP0 + FP0); it also cannot exceed 2 TP1 / (TP1 + FP0 + P). Max over
        bins, plus F1_EPS for the epsilon in the formula.
      * AUPRO: between consecutive binned points the exact curve stays in the box they span, so each
        bin changes the area by at most half the box (the whole clipped box for the bin crossing
        FPR = fpr_limit); summed and divided by fpr_limit.

    State: 2 int64 and 1 float64 histograms (24 bytes per bin: 1.5 MiB for 2**16 bins), fixed.
    """

    def __init__(self, value_range: tuple[float, float] | None = None, bins: int = 1 << 16,
                 exact_pixels: int = 0, device: torch.device | str | None = None,
                 fpr_limit: float = AUPRO_FPR_LIMIT):
        if bins < 1:
            raise ValueError("bins must be >= 1")
        if value_range is not None and not value_range[1] > value_range[0]:
            raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
        self.bins, self.exact_pixels, self.fpr_limit = bins, exact_pixels, fpr_limit
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self.device = None if device is None else torch.device(device)
        self.pixels_seen = 0
        self._buffer: list[tuple[torch.Tensor, torch.Tensor]] = []  # exact mode only
        self._hist: torch.Tensor | None = None  # (bins, 2) int64: all, anomalous counts
        self._hist_pro: torch.Tensor | None = None  # (bins,) float64: sum of 1 / region area
        self._regions = 0

    # -- feeding
    def update(self, masks: Any, maps: Any) -> None:
        """Add a batch: binary ``masks`` and float ``maps`` of shape (n, H, W) (or (H, W))."""
        masks_t, maps_t = _pixel_inputs(masks, maps)
        if self.device is None:
            self.device = maps_t.device
        masks_t, maps_t = masks_t.to(self.device), maps_t.to(self.device)
        self.pixels_seen += maps_t.numel()
        if self._hist is None and self.pixels_seen <= self.exact_pixels:
            self._buffer.append((masks_t.clone(), maps_t.clone()))  # clone: callers may reuse buffers
            return
        if self._hist is None:
            held = self._buffer + [(masks_t, maps_t)]
            self._buffer = []
            self._start_histograms([s for _, s in held])
            for m, s in held:
                self._fold(m, s)
        else:
            self._fold(masks_t, maps_t)

    def _start_histograms(self, held_maps: list[torch.Tensor]) -> None:
        if self.value_range is None:
            lo, hi = min(float(s.min()) for s in held_maps), max(float(s.max()) for s in held_maps)
            self.value_range = (lo, hi if hi > lo else lo + 1.0)
        self._hist = torch.zeros(self.bins, 2, dtype=torch.int64, device=self.device)
        self._hist_pro = torch.zeros(self.bins, dtype=torch.float64, device=self.device)

    def bin_index(self, maps: Any) -> torch.Tensor:
        """The bin of each score (int32, same shape): the order-preserving quantiser used here."""
        if self.value_range is None:
            raise RuntimeError("value range not known yet")
        return self._bin_index(_scores(maps))

    def _bin_index(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.value_range
        if x.dtype != torch.float64:
            x = x.float()
        # clamp before the int cast: truncation of a non-negative value is floor; all steps monotone
        return ((x - lo) * (self.bins / (hi - lo))).clamp_(0, self.bins - 1).to(torch.int32)

    def _fold(self, masks: torch.Tensor, maps: torch.Tensor) -> None:
        idx = self._bin_index(maps).reshape(-1)
        # all pixels, then the (usually few) anomalous ones; normal = all - anomalous at compute time
        self._hist[:, 0] += torch.bincount(idx, minlength=self.bins)
        weights, regions = _region_weights(masks)
        if regions:
            anomalous = idx[masks.reshape(-1)]
            self._hist[:, 1] += torch.bincount(anomalous, minlength=self.bins)
            w = torch.as_tensor(weights, dtype=torch.float64, device=self.device)
            self._hist_pro += torch.bincount(anomalous, weights=w, minlength=self.bins)
            self._regions += regions

    @classmethod
    def combine(cls, parts: "list[PixelMetricAccumulator]") -> "PixelMetricAccumulator":
        """One accumulator of several that saw consecutive parts of one stream (e.g. one process's
        share each), given in stream order; it computes what one accumulator fed the whole stream would.

        Exact when the whole stream has at most ``exact_pixels`` pixels (the parts' batches, in order),
        else binned: the parts' batches are folded and their histograms added (counts exactly; the
        region weights up to float64 summation order). The parts must agree on bins, exact_pixels and
        fpr_limit, and, if the result is binned, on one ``value_range`` fixed before any was filled.
        """
        if not parts:
            raise ValueError("combine: no accumulators given")
        if len(parts) == 1:   # one process: the stream itself
            return parts[0]
        first = parts[0]
        settings = (first.bins, first.exact_pixels, first.fpr_limit, first.value_range)
        for part in parts[1:]:
            if (part.bins, part.exact_pixels, part.fpr_limit, part.value_range) != settings:
                raise ValueError(f"combine: accumulators differ in (bins, exact_pixels, fpr_limit, value_range): "
                                 f"{settings} and {(part.bins, part.exact_pixels, part.fpr_limit, part.value_range)}")
        out = cls(first.value_range, first.bins, first.exact_pixels, first.device, first.fpr_limit)
        out.pixels_seen = sum(part.pixels_seen for part in parts)
        if out.pixels_seen <= out.exact_pixels:  # then no part has binned: each holds its batches
            out._buffer = [pair for part in parts for pair in part._buffer]
            return out
        if out.value_range is None:
            raise ValueError("combine: binned accumulators need one value_range agreed before filling "
                             "(an estimated range differs from part to part)")
        out.device = out.device or torch.device("cpu")
        out._start_histograms([])
        for part in parts:
            if part._hist is not None:
                out._hist += part._hist.to(out.device)
                out._hist_pro += part._hist_pro.to(out.device)
                out._regions += part._regions
            for masks, maps in part._buffer:
                out._fold(masks.to(out.device), maps.to(out.device))
        return out

    # -- results
    def _binned_curve(self) -> tuple[_Curve, torch.Tensor, torch.Tensor]:
        """Curve at the non-empty bins, highest first; and per-bin (pos, neg) in the same order."""
        hist = self._hist.flip(0)
        pro = self._hist_pro.flip(0)
        keep = hist.sum(1) > 0
        hist, pro = hist[keep].double(), pro[keep]
        pos = hist[:, 1]
        neg = hist[:, 0] - pos
        curve = _Curve(torch.cumsum(pos, 0), torch.cumsum(neg, 0),
                       pro=torch.cumsum(pro, 0) / max(self._regions, 1))
        return curve, pos, neg

    def compute(self) -> dict[str, float]:
        """``p_auroc``, ``p_ap``, ``p_f1max``, ``aupro`` (same keys as ``pixel_metrics``)."""
        if self._hist is None:
            if not self._buffer:
                return dict.fromkeys(PIXEL_KEYS, math.nan)
            masks = torch.cat([m for m, _ in self._buffer])
            maps = torch.cat([s for _, s in self._buffer])
            return _exact_pixel_metrics(masks, maps, self.fpr_limit)
        curve, _, _ = self._binned_curve()
        return _pixel_curve_metrics(curve, self._regions, self.fpr_limit)

    def error_bounds(self) -> dict[str, float]:
        """Per metric, a guaranteed bound on |compute() - exact metric| (0 in exact mode)."""
        metrics = self.compute()
        if self._hist is None:
            return {k: (math.nan if math.isnan(v) else 0.0) for k, v in metrics.items()}
        c, pos, neg = self._binned_curve()
        P, N = c.positives, c.negatives
        zero = c.tps.new_zeros(1)
        tp1, fp1 = c.tps, c.fps  # counts including the bin
        tp0, fp0 = torch.cat([zero, tp1[:-1]]), torch.cat([zero, fp1[:-1]])  # counts above the bin
        out = dict.fromkeys(PIXEL_KEYS, math.nan)
        if P > 0 and N > 0:
            out["p_auroc"] = float((pos * neg).sum() / (2 * P * N))
        if P > 0:
            has_pos = pos > 0
            high = tp1 / (tp1 + fp0).clamp_min(1)
            low = (tp0 + 1) / (tp0 + 1 + fp1)
            out["p_ap"] = float((torch.where(has_pos, high - low, zero) * pos / P).clamp_min(0).sum())
            above = P + tp0 + fp0
            per_bin = torch.minimum(torch.minimum(neg / (above + neg), 2 * pos / above),
                                    2 * tp1 / (tp1 + fp0 + P) - metrics["p_f1max"])
            out["p_f1max"] = max(float(per_bin.max()), 0.0) + F1_EPS
        if self._regions > 0 and N > 0:
            fpr1 = fp1 / N
            fpr0 = torch.cat([zero, fpr1[:-1]])
            pro1 = c.pro
            pro0 = torch.cat([zero, pro1[:-1]])
            limit = self.fpr_limit
            inside = fpr1 <= limit
            crossing = (fpr0 < limit) & (fpr1 > limit)
            box = torch.where(inside, (fpr1 - fpr0) * (pro1 - pro0) / 2, zero)
            box = box + torch.where(crossing, (limit - fpr0) * (pro1 - pro0), zero)
            out["aupro"] = float(box.sum()) / limit
        return out

    def state_nbytes(self) -> int:
        """Bytes held by the accumulator's tensors (histograms and any exact-mode buffer)."""
        tensors = [t for pair in self._buffer for t in pair]
        tensors += [t for t in (self._hist, self._hist_pro) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)
