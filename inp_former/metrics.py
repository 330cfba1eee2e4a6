"""The paper's seven metrics (SPEC.md, 'Metrics'), in torch: sort once, cumulative sums, no pixel loops.

Image: I-AUROC, I-AP, I-F1max. Pixel: P-AUROC, P-AP, P-F1max, AUPRO (to FPR 0.3, normalised).
Tied scores form one step of each curve (thresholds at distinct values, as scikit-learn does).
Curves run on whatever device the inputs are on.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

F1_EPS = 1e-8
AUPRO_FPR_LIMIT = 0.3


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).reshape(-1).to(dtype)


def _curve(labels: Any, scores: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(true positives, false positives, threshold) at each distinct score, highest first."""
    scores = _as_tensor(scores, torch.float64)
    labels = _as_tensor(labels, torch.float64).to(scores.device)
    order = torch.argsort(scores, descending=True)
    s, y = scores[order], labels[order]
    tps, fps = torch.cumsum(y, 0), torch.cumsum(1 - y, 0)
    last = torch.cat([torch.nonzero(s[1:] != s[:-1]).flatten(), s.new_tensor([len(s) - 1]).long()])
    return tps[last], fps[last], s[last]


def auroc(labels: Any, scores: Any) -> float:
    tps, fps, _ = _curve(labels, scores)
    if tps[-1] == 0 or fps[-1] == 0:
        return math.nan  # one class only
    tpr = torch.cat([tps.new_zeros(1), tps / tps[-1]])
    fpr = torch.cat([fps.new_zeros(1), fps / fps[-1]])
    return float(torch.trapezoid(tpr, fpr))


def average_precision(labels: Any, scores: Any) -> float:
    tps, fps, _ = _curve(labels, scores)
    if tps[-1] == 0:
        return math.nan
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    steps = torch.diff(torch.cat([recall.new_zeros(1), recall]))
    return float((steps * precision).sum())


def f1max_threshold(labels: Any, scores: Any) -> tuple[float, float]:
    """(max F1 over the PR curve, the score threshold reaching it: predict anomalous if score >= it)."""
    tps, fps, thresholds = _curve(labels, scores)
    if tps[-1] == 0:
        return math.nan, math.nan
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    f1 = 2 * precision * recall / (precision + recall + F1_EPS)
    best = int(torch.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def image_metrics(labels: Any, scores: Any) -> dict[str, float]:
    return {"i_auroc": auroc(labels, scores), "i_ap": average_precision(labels, scores),
            "i_f1max": f1max_threshold(labels, scores)[0]}


def aupro(masks: Any, maps: Any, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit``.

    Exact: every distinct score is a threshold. Regions are the 8-connected components of each
    mask (skimage.measure.label); PRO(t) is the mean over all regions of the covered fraction.
    """
    from skimage.measure import label as label_regions

    masks_np = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    masks_np = masks_np.astype(bool)
    maps_t = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    weights = np.zeros(masks_np.shape, dtype=np.float64)  # per anomalous pixel: 1 / region area
    regions = 0
    for i, mask in enumerate(masks_np):
        labelled = label_regions(mask)
        if labelled.max() == 0:
            continue
        areas = np.bincount(labelled.ravel())
        per_pixel = np.where(labelled > 0, 1.0 / np.maximum(areas[labelled], 1), 0.0)
        weights[i] = per_pixel
        regions += int(labelled.max())
    normal = ~masks_np
    if regions == 0 or not normal.any():
        return math.nan
    device = maps_t.device
    pro_step = torch.as_tensor(weights.ravel() / regions, device=device)
    fpr_step = torch.as_tensor(normal.ravel() / normal.sum(), dtype=torch.float64, device=device)
    scores = maps_t.reshape(-1).to(torch.float64)
    order = torch.argsort(scores, descending=True)
    s = scores[order]
    pro, fpr = torch.cumsum(pro_step[order], 0), torch.cumsum(fpr_step[order], 0)
    last = torch.cat([torch.nonzero(s[1:] != s[:-1]).flatten(), s.new_tensor([len(s) - 1]).long()])
    pro = torch.cat([pro.new_zeros(1), pro[last]]).cpu().numpy()
    fpr = torch.cat([fpr.new_zeros(1), fpr[last]]).cpu().numpy()
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit and keep.sum() < len(fpr):  # interpolate the curve at the limit
        j = int(keep.sum())
        t = (fpr_limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        x = np.append(x, fpr_limit)
        y = np.append(y, pro[j - 1] + t * (pro[j] - pro[j - 1]))
    return float(np.trapezoid(y, x) / fpr_limit)


def pixel_metrics(masks: Any, maps: Any) -> dict[str, float]:
    masks_t = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
    labels = masks_t.reshape(-1).bool()
    return {"p_auroc": auroc(labels, maps), "p_ap": average_precision(labels, maps),
            "p_f1max": f1max_threshold(labels, maps)[0], "aupro": aupro(masks_t, maps)}


def category_metrics(labels: Any, scores: Any, masks: Any, maps: Any) -> dict[str, float]:
    return {**image_metrics(labels, scores), **pixel_metrics(masks, maps)}


def mean_metrics(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over categories of each metric, ignoring categories where it is undefined (nan)."""
    keys = list(dict.fromkeys(k for values in per_category.values() for k in values))
    out = {}
    for key in keys:
        values = [v[key] for v in per_category.values() if key in v and not math.isnan(v[key])]
        out[key] = float(np.mean(values)) if values else math.nan
    return out
