"""Compile-time evidence, no GPU needed: every config autotune can pick, compiled for sm_80 / sm_90.

Fails on any register spill and on any fp16/bf16 ``tl.dot`` that does not lower to tensor-core
instructions (``mma`` on sm_80, ``wgmma`` or ``mma`` on sm_90). To stay fast the test compiles
sm_90 in bf16 and fp32 and sm_80 in bf16 (fp16 lowers like bf16); ``inpctl bench compile`` covers
every arch and dtype. Triton's on-disk cache makes reruns much faster.
"""
from __future__ import annotations

import pytest

from inp_former.benchmarks.compile import (KERNELS, compile_report, compiler_unavailable, format_rows, occupancy,
                                           problems)

REASON = compiler_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"Triton cannot compile for a GPU here: {REASON}")

SUBSETS = [(90, "bf16"), (90, "fp32"), (80, "bf16")]


@pytest.fixture(scope="module")
def reports() -> dict[tuple[int, str], dict]:
    """One compile report per (arch, dtype), shared by the tests of this module."""
    report = compile_report(targets=SUBSETS, jobs=2, sass=False)   # one compiler process pool for all
    return {(arch, dtype): {**report, "rows": [r for r in report["rows"] if r["arch"] == arch and
                                               r["dtype"] in (dtype, "fp32" if r["kernel"] == "map" else dtype)]}
            for arch, dtype in SUBSETS}


def _autotune_configs(kernel: str, dtype: str) -> int:
    """How many configs autotune can choose from at the paper's shapes (after its pruning)."""
    from inp_former.benchmarks.compile import _specs

    return len(_specs(kernel, dtype, 90)[0].configs)


@pytest.mark.parametrize("arch,dtype", SUBSETS, ids=lambda v: str(v))
def test_every_config_compiles_without_spills_and_dots_use_tensor_cores(reports, arch, dtype):
    report = reports[(arch, dtype)]
    rows = report["rows"]
    for kernel in KERNELS:  # every config of every kernel is there (the map kernel is always fp32)
        expected = _autotune_configs(kernel, "fp32" if kernel == "map" else dtype)
        assert sum(r["kernel"] == kernel for r in rows) == expected, kernel
    found = problems(report)
    assert not found, "\n".join(found)
    for row in rows:
        assert 0 < row["regs"] <= 255 and 0 < row["occupancy"] <= 1, row
        if row["has_dot"]:
            tc = row["ptx_wgmma"] if arch >= 90 else 0
            assert tc + row["ptx_mma"] > 0, row


def test_specs_are_the_launch_specs_of_the_host_functions():
    """The report compiles what the host functions launch: each kernel's parameters are exactly the
    launch spec's arguments and constexprs plus the config's, the backward split is the kernel
    module's rule for the GPU's SM count, and k, v keep the strides of the kv Linear's column slices."""
    from inp_former.benchmarks.compile import B, C, H, N, SM_COUNTS, _jit_function, _specs
    from kernels.relu_attention import backward_split

    for kernel in KERNELS:
        for dtype in ("fp32", "bf16"):
            spec = _specs(kernel, dtype, 90)[0]
            params = set(_jit_function(spec.attr).arg_names)
            assert not set(spec.args) & set(spec.constexprs), kernel
            for meta, _, _ in spec.configs:
                assert set(spec.args) | set(spec.constexprs) | set(meta) == params, (kernel, meta)
    for arch in (80, 90):
        bwd = _specs("attn_bwd", "bf16", arch)[0]
        assert bwd.args["SPLIT"] == backward_split(N, B * H, SM_COUNTS[arch])
        assert bwd.args["stride_km"] == bwd.args["stride_vm"] == 2 * C and bwd.args["DKV"] == "*fp32"


def test_fp32_dots_stay_off_tf32(reports):
    """fp32 dots are 'ieee': no tensor-core (TF32) instructions in any fp32 kernel."""
    for row in reports[(90, "fp32")]["rows"]:
        assert row["ptx_mma"] == 0 and row["ptx_wgmma"] == 0, row


def test_problems_flags_spills_and_missing_tensor_cores():
    """The checker itself: a spilling row and an fp16 dot without mma are reported."""
    base = {"kernel": "k", "arch": 90, "dtype": "bf16", "cfg": "32 w4 s3", "error": None, "regs": 255}
    report = {"rows": [{**base, "has_dot": False, "spills": 64, "spill_stores": 32, "spill_loads": 32, "local": 0,
                        "tensor_cores": False},
                       {**base, "has_dot": True, "spills": 0, "tensor_cores": False},
                       {**base, "has_dot": True, "spills": 0, "tensor_cores": True},
                       {**base, "has_dot": False, "error": "PTXASError: boom"}]}
    found = problems(report)
    assert len(found) == 3
    assert "spills" in found[0] and "tensor cores" in found[1] and "does not compile" in found[2]


def test_occupancy_limits():
    # 255 registers, 8 warps: 8160 regs/warp -> 8 warps fit in 65536: one program, 8 of 64 warps
    assert occupancy(255, 0, 8, 90)["warps_per_sm"] == 8
    assert occupancy(255, 0, 8, 90)["limiter"] == "regs"
    # 32 registers: the 64-warp limit binds
    assert occupancy(32, 0, 4, 90)["occupancy"] == 1.0
    # shared memory: 100 KB per program -> 2 on H100 (228 KB), 1 on A100 (164 KB)
    assert occupancy(32, 100 * 1024, 4, 90)["blocks_per_sm"] == 2
    assert occupancy(32, 100 * 1024, 4, 80)["blocks_per_sm"] == 1


def test_table_fits_80_columns(reports):
    columns, rows = format_rows(reports[(90, "bf16")])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    assert sum(widths) + 3 * len(columns) + 1 <= 80, widths   # a boxed table: 3 characters per column
