"""Regression: on a CPU with native bf16 matrix units the default scoring path (precision ``auto``)
stays at least 1.5x the fp32 reference, measured side by side in one run; elsewhere it skips.

ViT-S/14 (random weights: speed only) at the paper's 392 px, batch 4: big enough that the matrix
units decide, small enough for CI. Measured on a 2-core Xeon VM with AMX-BF16 (idle, 2026-12-06):
2.46x at batch 4 (fp32 1002 ms, auto 408 ms per batch), 3.3x at batch 8. Maps within 2% of the
fp32 maps' maximum.
"""
from __future__ import annotations

import pytest
import torch

from inp_former.benchmarks.timing import measure
from inp_former.config import ModelConfig, RunConfig
from inp_former.inference import InferenceConfig, choose_precision, score_batch
from inp_former.model import INPFormer
from inp_former.runtime import cpu_capabilities

FLOOR = 1.5
SIZE, BATCH = 392, 4


def test_bench_cpu_default_precision(benchmark):
    unit = cpu_capabilities().native_bf16
    if unit is None:
        pytest.skip("this CPU has no native bf16 unit (AMX-BF16 or AVX-512-BF16): auto scores in fp32 here")
    precision, reason = choose_precision(InferenceConfig().precision, "cpu")
    assert str(precision) == "bf16", reason
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(encoder="small", encoder_weights="random", resize=SIZE, crop=SIZE))
    model = INPFormer(cfg.model).eval()
    images = torch.randn(BATCH, 3, SIZE, SIZE)

    def reference():
        return score_batch(model, images, cfg, "fp32")[:2]

    def default():
        return score_batch(model, images, cfg, precision)[:2]

    ref_maps, _ = reference()
    maps, _ = default()
    assert float((maps - ref_maps).abs().max()) <= 0.02 * float(ref_maps.abs().max())
    ref_ms = measure(reference, torch.device("cpu"), warmup=1, repeats=5, max_seconds=20).median_ms
    fast_ms = measure(default, torch.device("cpu"), warmup=1, repeats=5, max_seconds=20).median_ms
    speedup = ref_ms / fast_ms
    benchmark.extra_info.update(cpu_unit=unit, reference_ms=ref_ms, default_ms=fast_ms, speedup=speedup)
    print(f"\nCPU scoring ({unit}): fp32 {ref_ms:.1f} ms, default ({reason}) {fast_ms:.1f} ms, {speedup:.2f}x")
    assert speedup >= FLOOR, f"default path {speedup:.2f}x the fp32 reference, floor {FLOOR}x ({unit})"
    benchmark.pedantic(default, rounds=3, warmup_rounds=0)
