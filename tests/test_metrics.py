"""Metrics against scikit-learn and against slow, direct implementations written here."""
from __future__ import annotations

import math
import sys
import warnings
import weakref

import numpy as np
import pytest
import torch
from skimage.measure import label
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from inp_former.metrics import (F1_EPS, IMAGE_KEYS, PIXEL_KEYS, PixelMetricAccumulator, aupro, auroc,
                                average_precision, category_metrics, f1max_threshold, image_metrics,
                                mean_metrics, pixel_metrics)
from tests.conftest import requires_cuda

TOL = 1e-12


# ----------------------------------------------------------------------------- references

def sklearn_f1max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.max(2 * precision * recall / (precision + recall + F1_EPS)))


def brute_aupro(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """Every distinct threshold, regions and FPR counted directly, trapezoid to `limit`."""
    regions = [(i, labelled == r) for i, mask in enumerate(masks)
               for labelled in [label(mask)] for r in range(1, labelled.max() + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        ys.append(np.mean([predicted[i][region].mean() for i, region in regions]))
        xs.append((predicted & normal).sum() / normal.sum())
    area = 0.0
    for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:]):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < limit:
                y_limit = y0 + (limit - x0) * (y1 - y0) / (x1 - x0)
                area += (limit - x0) * (y0 + y_limit) / 2
            break
    return area / limit


def random_masks(rng: np.random.Generator, n: int, size: int, max_regions: int = 4) -> np.ndarray:
    """Rectangles and blobs, some touching diagonally (8-connectivity matters), some images clean."""
    masks = np.zeros((n, size, size), dtype=bool)
    for mask in masks[: max(1, 2 * n // 3)]:
        for _ in range(rng.integers(1, max_regions + 1)):
            y, x = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, size // 3, 2)
            mask[y:y + h, x:x + w] = True
        y, x = rng.integers(0, size - 2, 2)
        mask[y, x] = mask[y + 1, x + 1] = True  # a diagonal pair
    return masks


def quantised(rng: np.random.Generator, shape, levels: int | None) -> np.ndarray:
    x = rng.random(shape)
    return x if levels is None else np.floor(x * levels) / levels


# ----------------------------------------------------------------------------- image-level / flat curves

@pytest.mark.parametrize("n", [2, 7, 100, 5000])
@pytest.mark.parametrize("levels", [1, 3, 10, None])
def test_auroc_ap_f1_match_sklearn_with_ties(n, levels):
    rng = np.random.default_rng(n * 31 + (levels or 0))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]  # both classes present
    scores = quantised(rng, n, levels) + 0.2 * labels * rng.random(n)
    if levels == 1:
        scores = np.full(n, 0.25)  # all tied
    out = image_metrics(labels, scores)
    assert out["i_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=TOL)
    assert out["i_ap"] == pytest.approx(average_precision_score(labels, scores), abs=TOL)
    assert out["i_f1max"] == pytest.approx(sklearn_f1max(labels, scores), abs=TOL)
    assert auroc(labels, scores) == out["i_auroc"] and average_precision(labels, scores) == out["i_ap"]


def test_all_tied_and_perfectly_separated():
    labels = np.array([0, 0, 0, 1, 1])
    tied = image_metrics(labels, np.ones(5))
    assert tied["i_auroc"] == 0.5 and tied["i_ap"] == pytest.approx(0.4)
    separated = image_metrics(labels, np.array([0.1, 0.2, 0.3, 0.8, 0.9]))
    assert separated["i_auroc"] == 1 and separated["i_ap"] == 1
    assert separated["i_f1max"] == pytest.approx(1, abs=1e-8)
    assert auroc(labels, -np.array([0.1, 0.2, 0.3, 0.8, 0.9])) == 0


def test_f1max_threshold_reaches_f1max():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    scores = np.round(rng.random(400) + 0.5 * labels, 2)
    f1, threshold = f1max_threshold(labels, scores)
    predicted = scores >= threshold  # the documented direction
    tp = (predicted & (labels == 1)).sum()
    precision, recall = tp / predicted.sum(), tp / labels.sum()
    assert f1 == pytest.approx(2 * precision * recall / (precision + recall + F1_EPS), abs=TOL)
    assert f1 == pytest.approx(sklearn_f1max(labels, scores), abs=TOL)
    assert image_metrics(labels, scores, return_threshold=True)["i_f1max_threshold"] == threshold


def test_input_types_agree():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 300)
    scores = rng.random(300).astype(np.float32)
    reference = image_metrics(labels, scores)
    variants = [(labels.astype(bool), scores.astype(np.float64)), (torch.from_numpy(labels), torch.from_numpy(scores)),
                (labels.astype(np.float32), scores)]
    for y, s in variants:
        assert image_metrics(y, s) == reference
    # half precision is widened before sorting; integer scores work too
    assert image_metrics(labels, torch.from_numpy(scores).half())["i_auroc"] == pytest.approx(
        roc_auc_score(labels, torch.from_numpy(scores).half().float().numpy()), abs=TOL)
    ints = rng.integers(0, 5, 300)
    assert image_metrics(labels, ints)["i_auroc"] == pytest.approx(roc_auc_score(labels, ints), abs=TOL)


def test_undefined_metrics_are_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_class = image_metrics(np.zeros(5), np.arange(5.0), return_threshold=True)
        assert all(math.isnan(v) for v in one_class.values())
        only_positive = image_metrics(np.ones(5), np.arange(5.0))
        assert math.isnan(only_positive["i_auroc"]) and only_positive["i_ap"] == 1
        normal = pixel_metrics(np.zeros((3, 8, 8), bool), np.random.default_rng(0).random((3, 8, 8)))
        assert all(math.isnan(normal[k]) for k in PIXEL_KEYS)
        empty = image_metrics(np.zeros(0), np.zeros(0))
        assert all(math.isnan(v) for v in empty.values())
        mean = mean_metrics({"a": {"x": 1.0, "y": math.nan}, "b": {"x": 3.0, "y": math.nan}})
        assert mean["x"] == 2 and math.isnan(mean["y"])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="binary"):
        pixel_metrics(np.full((1, 4, 4), 0.3), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="nan"):
        image_metrics([0, 1], [0.5, math.nan])
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5)))


# ----------------------------------------------------------------------------- pixel-level

@pytest.mark.parametrize("seed", range(6))
def test_pixel_metrics_match_sklearn_and_brute_force_aupro(seed):
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, n=4, size=24)
    levels = [5, 20, 200, None, 7, 50][seed]  # many ties to none
    maps = quantised(rng, masks.shape, levels) + masks * rng.random(masks.shape) * 0.6
    out = pixel_metrics(masks, maps)
    flat_y, flat_s = masks.ravel(), maps.ravel()
    assert out["p_auroc"] == pytest.approx(roc_auc_score(flat_y, flat_s), abs=TOL)
    assert out["p_ap"] == pytest.approx(average_precision_score(flat_y, flat_s), abs=TOL)
    assert out["p_f1max"] == pytest.approx(sklearn_f1max(flat_y, flat_s), abs=TOL)
    assert out["aupro"] == pytest.approx(brute_aupro(masks, maps), abs=1e-10)
    assert aupro(torch.from_numpy(masks), torch.from_numpy(maps)) == out["aupro"]


def test_aupro_uses_8_connectivity_and_whole_curve_limits():
    # two diagonal pixels are one region: a map that finds one of them gets PRO 0.5, not 1 of 2 regions
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True
    maps = np.zeros((1, 6, 6))
    maps[0, 1, 1] = 1.0
    assert aupro(masks, maps) == pytest.approx(brute_aupro(masks, maps), abs=TOL)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(brute_aupro(masks, maps, 1.0), abs=TOL)
    perfect = masks.astype(float)
    assert aupro(masks, perfect) == 1
    assert aupro(masks, -perfect) < 0.01


def test_category_and_mean_metrics():
    rng = np.random.default_rng(7)
    masks = random_masks(rng, 6, 16)
    maps = rng.random(masks.shape) + masks
    labels = masks.any(axis=(1, 2))
    scores = maps.reshape(6, -1).max(1)
    out = category_metrics(labels, scores, masks, maps)
    assert set(out) == set(IMAGE_KEYS) | set(PIXEL_KEYS)
    assert all(0 <= v <= 1 for v in out.values())
    mean = mean_metrics({"a": out, "b": {**out, "aupro": math.nan}})
    assert mean["aupro"] == out["aupro"] and mean["p_ap"] == pytest.approx(out["p_ap"])


@requires_cuda
def test_cuda_matches_cpu():
    rng = np.random.default_rng(8)
    masks = torch.from_numpy(random_masks(rng, 8, 64))
    maps = torch.from_numpy(quantised(rng, masks.shape, 100) + masks.numpy() * 0.3).float()
    labels, scores = masks.flatten(1).any(1), maps.flatten(1).amax(1)
    cpu = category_metrics(labels, scores, masks, maps)
    gpu = category_metrics(labels.cuda(), scores.cuda(), masks.cuda(), maps.cuda())
    for key in cpu:
        assert gpu[key] == pytest.approx(cpu[key], abs=1e-12), key
    accumulators = [PixelMetricAccumulator((0, 1.3), bins=256, device=d) for d in ("cpu", "cuda")]
    for acc, device in zip(accumulators, ("cpu", "cuda")):
        for i in range(0, 8, 3):
            acc.update(masks[i:i + 3].to(device), maps[i:i + 3].to(device))
    cpu_binned, gpu_binned = (acc.compute() for acc in accumulators)
    for key in cpu_binned:
        assert gpu_binned[key] == pytest.approx(cpu_binned[key], abs=1e-12), key


# ----------------------------------------------------------------------------- streaming accumulator

def small_set(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, 12, 32)
    maps = (rng.random(masks.shape) + masks * rng.random(masks.shape) * 0.7).astype(np.float32)
    return masks, maps


@pytest.mark.parametrize("bins", [4, 64, 4096])
@pytest.mark.parametrize("value_range", [(0.0, 1.7), (0.2, 1.0), None])  # exact fit, clamped, estimated
def test_accumulator_within_its_error_bounds(bins, value_range):
    masks, maps = small_set(bins)
    exact = pixel_metrics(masks, maps)
    acc = PixelMetricAccumulator(value_range, bins=bins)
    for i in range(0, len(masks), 5):  # uneven batches
        acc.update(masks[i:i + 5], maps[i:i + 5])
    binned, bounds = acc.compute(), acc.error_bounds()
    for key in PIXEL_KEYS:
        assert abs(binned[key] - exact[key]) <= bounds[key] + 1e-12, (key, binned[key], exact[key], bounds[key])
    assert binned["p_f1max"] <= exact["p_f1max"] + 1e-12  # binned curve points are exact curve points
    # and binned is exactly the exact metric of the quantised scores
    on_bins = pixel_metrics(masks, acc.bin_index(maps))
    for key in PIXEL_KEYS:
        assert binned[key] == pytest.approx(on_bins[key], abs=1e-12), key
    if bins == 4096 and value_range == (0.0, 1.7):  # fine bins: the bounds are informative
        assert max(bounds.values()) < 0.01


def test_accumulator_exact_mode():
    masks, maps = small_set(1)
    exact = pixel_metrics(masks, maps)
    acc = PixelMetricAccumulator(bins=16, exact_pixels=masks.size)
    for i in range(0, len(masks), 4):
        acc.update(masks[i:i + 4], maps[i:i + 4])
    assert acc.compute() == exact
    assert acc.error_bounds() == dict.fromkeys(PIXEL_KEYS, 0.0)
    acc.update(masks[:1], maps[:1])  # over the limit: folds into histograms, range from the data
    assert acc.value_range == (float(maps.min()), float(maps.max()))
    assert acc.state_nbytes() == 16 * 24
    assert all(b > 0 for b in acc.error_bounds().values())


def test_accumulator_memory_stays_flat_on_a_long_stream():
    """1000 batches of 8x256x256 (5e8 pixels, 2 GB as float32 maps), generated on the fly: the state
    is the histograms from the first batch to the last, and no batch is kept. The length is set by
    the AUPRO check, not by memory: the 2-pixel regions make the sampled AUPRO noisy (0.645 after 250
    batches, 0.6497 after 500, 0.6507 after 1000); the int64 counts are far from any limit.

    One intra-op thread: these small element-wise ops gain little from two, and a busy machine
    makes two threads several times slower (about 10 ms a batch with one).
    """
    gen = torch.Generator().manual_seed(0)
    pool = torch.from_numpy(random_masks(np.random.default_rng(9), 8, 256, max_regions=3))
    acc = PixelMetricAccumulator((0.0, 1.5), bins=1 << 16)
    sizes, batches, threads = set(), 1000, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(batches):
            masks = pool.roll(step % 8, dims=0)
            maps = torch.rand(masks.shape, generator=gen) + 0.5 * masks  # normal U(0,1), anomalous U(0.5,1.5)
            acc.update(masks, maps)
            if step % 50 == 0:
                sizes.add(acc.state_nbytes())
                alive = weakref.ref(maps)
    finally:
        torch.set_num_threads(threads)
    del maps
    assert alive() is None  # no batch is kept
    assert sizes == {(1 << 16) * 24}
    assert acc.pixels_seen == batches * 8 * 256 * 256
    out, bounds = acc.compute(), acc.error_bounds()
    # closed forms: AUROC = P(U + 0.5 > V) = 7/8; PRO(FPR=x) = 0.5 + x, so AUPRO = (0.15 + 0.045) / 0.3
    assert out["p_auroc"] == pytest.approx(0.875, abs=2e-3)
    assert out["aupro"] == pytest.approx(0.65, abs=2e-3)
    assert max(bounds.values()) < 1e-3


def test_the_heap_is_bounded_only_while_an_evaluation_runs(monkeypatch):
    """``heap_growth_bounded`` fixes glibc's mmap threshold at 1 MiB for the block (the outermost of
    nested blocks releases it), then leaves the mmap and trim thresholds where glibc's own rule
    would have taken them, also when the block fails."""
    from inp_former import evaluate

    calls = []
    monkeypatch.setattr(evaluate, "bound_heap_growth", lambda threshold=1 << 20: (calls.append(threshold), True)[1])
    monkeypatch.setattr(evaluate, "_set_trim_threshold", lambda size: calls.append(("trim", size)))
    with pytest.raises(RuntimeError):
        with evaluate.heap_growth_bounded():
            with evaluate.heap_growth_bounded():
                pass
            assert calls == [1 << 20, 1 << 20]   # the inner block leaves the outer one's bound alone
            raise RuntimeError("a failing evaluation")
    assert calls == [1 << 20, 1 << 20, 32 << 20, ("trim", 64 << 20)]
    monkeypatch.setattr(evaluate, "bound_heap_growth", lambda threshold=1 << 20: (calls.append(threshold), False)[1])
    calls.clear()
    with evaluate.heap_growth_bounded() as bounded:   # not glibc: nothing to release
        assert bounded is False
    assert calls == [1 << 20]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_after_an_evaluation_large_arrays_reuse_the_heap():
    """After the bounded block, freeing and reallocating 4 MiB arrays reuses memory the process
    holds: a few page faults, not one per page of every array (300 arrays of 1024 pages each would
    be 307,200 faults; seen: about 500, and 144,300 when only the mmap threshold was released)."""
    import resource

    import numpy as np

    from inp_former.evaluate import _set_trim_threshold, heap_growth_bounded

    _set_trim_threshold(128 << 10)   # glibc's starting value (this process may have moved it already)
    with heap_growth_bounded() as bounded:
        pass
    if not bounded:
        pytest.skip("not glibc: the threshold is not set")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(300):
        array = np.ones(1 << 19)   # 4 MiB, every page written
        del array
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 30_000
