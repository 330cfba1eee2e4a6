"""Dispatch by evidence: ``auto`` picks a fused kernel only where a recorded GPU measurement shows
it faster than the reference, for that kernel, device class and dtype (and pass, for attention)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from kernels import dispatch, evidence
from kernels.dispatch import kernel_mode, use_kernel

ROOT = Path(__file__).resolve().parents[1]


class FakeCuda:
    """Stands in for a CUDA tensor: what use_kernel looks at (is_cuda, device, dtype)."""

    def __init__(self, dtype: torch.dtype, index: int = 0) -> None:
        self.is_cuda = True
        self.device = torch.device("cuda", index)
        self.dtype = dtype


@pytest.fixture
def gpu(monkeypatch):
    """Pretend every CUDA device has compute capability ``gpu.capability`` (default H100's 9.0)."""
    state = {"capability": (9, 0)}
    monkeypatch.setattr(dispatch, "_cuda_device_class", lambda index: "sm{}{}".format(*state["capability"]))
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.delenv("INPCTL_KERNELS", raising=False)
    return state


@pytest.mark.parametrize("kernel,dtype,training,expected", [
    ("relu_attention", torch.bfloat16, False, False),   # 0.62x forward: the reference is faster
    ("relu_attention", torch.bfloat16, True, False),    # 0.93x forward + backward
    ("relu_attention", torch.float16, False, False),    # 0.97x
    ("relu_attention", torch.float16, True, True),      # 1.19x forward + backward
    ("relu_attention", torch.float32, False, True),     # 2.21x
    ("relu_attention", torch.float32, True, True),      # 1.13x
    ("scoring", torch.bfloat16, False, True),           # 3.98x
    ("scoring", torch.float32, False, True),            # 2.32x
    ("scoring", torch.float16, False, False),           # never measured
    ("token_map", torch.float32, False, False),         # never measured alone
])
def test_auto_on_sm90_follows_the_recorded_measurements(gpu, kernel, dtype, training, expected):
    assert use_kernel(kernel, FakeCuda(dtype), training=training) is expected


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (10, 0)])
def test_unmeasured_device_classes_use_the_reference(gpu, capability):
    gpu["capability"] = capability
    for kernel in ("relu_attention", "scoring"):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            assert not use_kernel(kernel, FakeCuda(dtype))
            with kernel_mode("triton"):  # forcing still runs the kernel
                assert use_kernel(kernel, FakeCuda(dtype))


def test_cpu_tensors_and_reference_mode_never_use_the_kernel(gpu):
    assert not use_kernel("scoring", torch.zeros(1))
    with kernel_mode("reference"):
        assert not use_kernel("scoring", FakeCuda(torch.float32))


def test_kernel_mode_belongs_to_the_thread_that_holds_it(monkeypatch):
    """A kernel_mode block held in one thread is not seen by another running at the same time (as
    FastScorer forces its mode from whichever thread calls it)."""
    monkeypatch.delenv("INPCTL_KERNELS", raising=False)
    held, looked = threading.Event(), threading.Event()
    seen: dict[str, str] = {}
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with kernel_mode("reference"):
                held.set()
                assert looked.wait(10), "the other thread never looked"
                seen["holder, after the other looked"] = dispatch.current_mode()
            seen["holder, after its block"] = dispatch.current_mode()
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
        finally:
            held.set()

    def other() -> None:
        try:
            assert held.wait(10), "the holder never entered its block"
            seen["other, while the holder is inside"] = dispatch.current_mode()
            with kernel_mode("triton"):   # its own block does not leak into the holder either
                seen["other, inside its own block"] = dispatch.current_mode()
        except BaseException as exc:
            errors.append(exc)
        finally:
            looked.set()

    threads = [threading.Thread(target=holder), threading.Thread(target=other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors, errors
    assert seen == {"other, while the holder is inside": "auto", "other, inside its own block": "triton",
                    "holder, after the other looked": "reference", "holder, after its block": "auto"}
    assert dispatch.current_mode() == "auto"   # and the main thread never saw either block


def test_nested_kernel_modes_restore_the_outer_one(monkeypatch):
    monkeypatch.setenv("INPCTL_KERNELS", "reference")
    assert dispatch.current_mode() == "reference"
    with kernel_mode("triton"):
        with kernel_mode("auto"):
            assert dispatch.current_mode() == "auto"
            with pytest.raises(RuntimeError):
                with kernel_mode("reference"):
                    assert dispatch.current_mode() == "reference"
                    raise RuntimeError("leaving by an exception restores too")
            assert dispatch.current_mode() == "auto"
        assert dispatch.current_mode() == "triton"
    assert dispatch.current_mode() == "reference"   # back to INPCTL_KERNELS
    with pytest.raises(ValueError):
        with kernel_mode("fast"):
            pass
    assert dispatch.current_mode() == "reference"


def test_device_class_from_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert dispatch._cuda_device_class(0) == "sm90"
    assert dispatch.device_class("cpu") == "cpu"


def test_relu_attention_dispatch_asks_with_the_pass(monkeypatch):
    """The attention entry point asks for training evidence only when a backward can follow."""
    import kernels.relu_attention as module

    asked = []
    monkeypatch.setattr(module, "use_kernel", lambda kernel, *t, training: asked.append((kernel, training)) or False)
    q, k, v = torch.randn(1, 4, 8), torch.randn(1, 2, 8), torch.randn(1, 2, 8)
    scale = torch.ones(2, 1, 1)
    module.relu_attention(q, k, v, scale, 2)
    module.relu_attention(q.requires_grad_(), k, v, scale, 2)
    with torch.no_grad():
        module.relu_attention(q, k, v, scale, 2)
    assert asked == [("relu_attention", False), ("relu_attention", True), ("relu_attention", False)]


def _speedup_in(source: str, name: str, pass_name: str | None) -> float:
    data = json.loads((ROOT / source).read_text())
    if "timed" in data:   # attention: x_vs_reference of the fused row of that pass
        row = next(r for r in data["timed"]["rows"] if r["name"] == name and r["pass"] == pass_name)
        return row["x_vs_reference"]
    return next(r for r in data["rows"] if r["name"] == name)["speedup"]


def test_evidence_table_matches_the_raw_files():
    """Every entry with a JSON source carries that file's numbers (rounded to 2 decimals)."""
    checked = 0
    for (kernel, _, _), m in evidence.EVIDENCE.items():
        if not m.source.endswith(".json"):
            continue
        if kernel == "relu_attention":
            assert round(_speedup_in(m.source, "INP-guided fused", "forward"), 2) == m.forward
            assert round(_speedup_in(m.source, "INP-guided fused", "forward+backward"), 2) == m.train
        else:
            assert round(_speedup_in(m.source, "fused", None), 2) == m.forward
        checked += 1
    assert checked >= 4
    # scoring fp32 exists only as the printed table in bench.log: its fused row's speed-up column
    entry = evidence.EVIDENCE[("scoring", "sm90", "fp32")]
    log = (ROOT / evidence.H100_DIR / "bench.log").read_text()
    table = log[:log.index("scoring_fp32.json")].rsplit("Scoring: maps + image scores", 1)[1]
    cells = [c.strip() for c in next(line for line in table.splitlines() if "│ fused" in line).split("│")]
    assert round(float(cells[4]), 2) == entry.forward   # | name | median | peak | speedup | ...
