"""Regression: the fast scoring paths stay well ahead of the reference, measured in the same run.

CPU: the matrix form (cosine per token + Gm A Gm^T) against the reference; CUDA: also the fused
Triton path. The floors are far below what either path reaches, so they hold on any machine.
"""
from __future__ import annotations

import torch

from inp_former.benchmarks.timing import measure
from kernels.dispatch import kernel_mode
from kernels.scoring import (anomaly_map_matrix, anomaly_map_reference, anomaly_maps_and_scores,
                             image_score_reference)

BATCH, GRID, CHANNELS, IMAGE, OUT = 16, 28, 768, 392, 256
MATRIX_FLOOR = 1.5   # CPU: measured 2.9-7x on 2 cores (the reference's F.cosine_similarity dominates)
FUSED_FLOOR = 1.5    # CUDA: measured 2.7-3.3x on an H100 (fp32; ~0.3 ms of it launch overhead at B=16)


def _features(device: torch.device):
    gen = torch.Generator().manual_seed(0)
    enc = [torch.randn(BATCH, GRID * GRID, CHANNELS, generator=gen) for _ in range(2)]
    dec = [e + 0.5 * torch.randn(e.shape, generator=gen) for e in enc]
    return [e.to(device) for e in enc], [d.to(device) for d in dec]


def test_bench_scoring(benchmark):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enc, dec = _features(device)

    def reference():
        maps = anomaly_map_reference(enc, dec, IMAGE, OUT)
        return maps, image_score_reference(maps)

    def matrix():
        maps = anomaly_map_matrix(enc, dec, IMAGE, OUT)
        return maps, image_score_reference(maps)

    def fused():
        with kernel_mode("triton"):
            return anomaly_maps_and_scores(enc, dec, IMAGE, OUT)

    saved, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
    try:  # an fp32 reference to check against (cuDNN's conv2d defaults to TF32 on CUDA)
        ref_maps, ref_scores = reference()
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    # the fast path of each device: the matrix form on CPU, the fused kernels on CUDA
    name, fast, floor = ("fused", fused, FUSED_FLOOR) if device.type == "cuda" else ("matrix", matrix, MATRIX_FLOOR)
    maps, scores = fast()
    torch.testing.assert_close(maps, ref_maps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-5)

    ref_ms = measure(reference, device, warmup=1, repeats=5, max_seconds=5).median_ms
    fast_ms = measure(fast, device, warmup=1, repeats=10, max_seconds=5).median_ms
    speedup = ref_ms / fast_ms
    benchmark.extra_info.update(reference_ms=ref_ms, fast_path=name, fast_ms=fast_ms, speedup=speedup)
    print(f"\nscoring {device.type}: reference {ref_ms:.3f} ms, {name} {fast_ms:.3f} ms, {speedup:.1f}x")
    assert speedup > floor, f"{name}: {speedup:.2f}x over the reference, floor {floor}x"

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    benchmark.pedantic(lambda: (fast(), sync()), rounds=10, warmup_rounds=1)
