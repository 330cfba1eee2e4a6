"""Paper Table 1 (operation counts and memory of one decoder layer) and measured attention speed.

Timed rows, all at the same B, N, C, H: vanilla multi-head self-attention written out in PyTorch
(eager) and through F.scaled_dot_product_attention (SDPA), the INP-guided reference, and the fused
Triton kernel; forward, and forward + backward. Each row gives its median time, peak memory (CUDA),
speed-up over the INP-guided reference of the same pass, its largest error relative to its
own formula evaluated in fp32 (vanilla rows against eager vanilla, INP rows against the INP
reference; for forward + backward, the worst of the input gradients), and its roofline position:
the minimum bytes its formula must move (:mod:`inp_former.benchmarks.roofline`), the bandwidth
that achieves and, on CUDA, that bandwidth as a share of the device's measured copy bandwidth.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from inp_former.benchmarks.roofline import (bandwidth_columns, copy_bandwidth, inp_attention_counts,
                                            vanilla_attention_counts)
from inp_former.benchmarks.timing import measure
from kernels.dispatch import interpreting, triton_available
from kernels.relu_attention import relu_attention_reference, relu_attention_triton

MB = 2**20
FP32_BYTES = 4
REFERENCE = "INP-guided reference"
FUSED = "INP-guided fused"
VANILLA_EAGER = "vanilla self-attention (eager)"
VANILLA_SDPA = "vanilla self-attention (SDPA)"


def matmul_ops(rows: int, cols: int, inner: int) -> int:
    """Multiplications plus additions of a (rows x inner) @ (inner x cols) product, as the paper counts."""
    return rows * cols * (2 * inner - 1)


def table1_counts(n: int, m: int, c: int) -> dict[str, Any]:
    """Table 1 for one image in fp32: vanilla self-attention vs INP-guided attention.

    ``qk`` and ``av`` are the operation counts of A = Q K^T and A V; ``memory`` is the size in MB
    (2^20 bytes) of Q, K, V and A. At N=784, M=6, C=768: 943496960 / 943509504 against
    7220640 / 6623232 operations, 2.30 / 2.30 / 2.30 / 2.34 MB against 2.30 / 0.018 / 0.018 / 0.018.
    """
    def mb(*elements: int) -> list[float]:
        return [e * FP32_BYTES / MB for e in elements]

    return {
        "n": n, "m": m, "c": c,
        "vanilla": {"qk": matmul_ops(n, n, c), "av": matmul_ops(n, c, n), "memory": mb(n * c, n * c, n * c, n * n)},
        "inp": {"qk": matmul_ops(n, m, c), "av": matmul_ops(n, c, m), "memory": mb(n * c, m * c, m * c, n * m)},
    }


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, length, c = x.shape
    return x.reshape(b, length, num_heads, c // num_heads).transpose(1, 2)


def vanilla_attention_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(D)) V per head, written out: materialises the (B, H, N, N) matrix."""
    b, n, c = q.shape
    qh, kh, vh = (_heads(t, num_heads) for t in (q, k, v))
    attn = torch.softmax((qh @ kh.transpose(-2, -1)) * (c // num_heads) ** -0.5, dim=-1)
    return (attn @ vh).transpose(1, 2).reshape(b, n, c)


def vanilla_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The same through F.scaled_dot_product_attention (flash / memory-efficient kernels on CUDA)."""
    b, n, c = q.shape
    out = F.scaled_dot_product_attention(*(_heads(t, num_heads) for t in (q, k, v)))
    return out.transpose(1, 2).reshape(b, n, c)


def fused_skip_reason(device: torch.device) -> str | None:
    """None if the fused kernel can run on ``device``, else why its rows are skipped."""
    if not triton_available():
        return "skipped: Triton is not installed"
    if device.type == "cuda" or interpreting():
        return None
    return "skipped on CPU: set TRITON_INTERPRET=1 to run the kernel in Triton's interpreter (slow)"


def _rel_err(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    """Worst over tensors of max |got - want| / max |want|."""
    return max(((g.float() - w).abs().max() / w.abs().max().clamp_min(1e-30)).item() for g, w in zip(got, want))


def _short(value: float | None, digits: int) -> float | None:
    """Round for the terminal table (full precision stays in ``detail``)."""
    return None if value is None else float(f"{value:.{digits}g}")


def run_attention_bench(n: int, m: int, c: int, heads: int, batch: int, dtype: torch.dtype,
                        device: torch.device | str, repeats: int = 20, max_seconds: float = 10.0,
                        progress: Optional[Callable[[int, int, str], None]] = None) -> dict[str, Any]:
    """Time the four attentions (forward, forward + backward) at one size; JSON-serialisable result.

    ``rows`` holds short keys for an 80-column table (``path``, ``pass``, ``ms``, ``x ref``,
    ``min MB``, ``GB/s``, ``%bw`` and ``peak MB`` on CUDA, ``max err``); ``detail`` the same rows
    with full names and full precision; ``columns`` says what each short key shown means.
    ``progress(rows done, rows in all, the row about to be timed)`` is called before each row and
    once at the end."""
    if c % heads:
        raise ValueError(f"c = {c} is not divisible by heads = {heads}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, n, c, generator=gen).to(device, dtype)
    k = torch.randn(batch, m, c, generator=gen).to(device, dtype)
    v = torch.randn(batch, m, c, generator=gen).to(device, dtype)
    kv_self = torch.randn(batch, n, 2 * c, generator=gen).to(device, dtype)  # self-attention keys/values
    scale = torch.ones(heads, 1, 1, device=device)  # the model's initial scale; fp32 like its parameter
    grad = torch.randn(batch, n, c, generator=gen).to(device, dtype)

    vanilla_inputs = [q, kv_self[..., :c], kv_self[..., c:]]
    inp_inputs = [q, k, v, scale]
    vanilla_eager = lambda *a: vanilla_attention_eager(*a, heads)  # noqa: E731
    inp_reference = lambda *a: relu_attention_reference(*a, heads)  # noqa: E731
    # (name, function, inputs, the formula it must reproduce)
    cases: list[tuple[str, Callable[..., torch.Tensor], list[torch.Tensor], str]] = [
        (VANILLA_EAGER, vanilla_eager, vanilla_inputs, "vanilla"),
        (VANILLA_SDPA, lambda *a: vanilla_attention_sdpa(*a, heads), vanilla_inputs, "vanilla"),
        (REFERENCE, inp_reference, inp_inputs, "inp"),
        (FUSED, lambda *a: relu_attention_triton(*a, heads), inp_inputs, "inp"),
    ]
    truth_fns = {"vanilla": (vanilla_eager, vanilla_inputs), "inp": (inp_reference, inp_inputs)}
    fused_skip = fused_skip_reason(device)
    interpreter = device.type == "cpu" and fused_skip is None
    elem = q.element_size()
    counts = {(formula, pass_name): (inp_attention_counts(batch, n, m, c, heads, elem, backward)
                                     if formula == "inp" else vanilla_attention_counts(batch, n, c, elem, backward))
              for formula in ("inp", "vanilla") for pass_name, backward in (("forward", False),
                                                                            ("forward+backward", True))}
    peak_gbps = copy_bandwidth(device)

    detail: list[dict[str, Any]] = []
    truths: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}
    tick = progress or (lambda done, total, name: None)
    total = 2 * len(cases)
    for name, fn, inputs, formula in cases:
        if name == FUSED and fused_skip:
            for pass_name in ("forward", "forward+backward"):
                detail.append({"name": name, "pass": pass_name, "formula": formula, "median_ms": None,
                               "peak_mem_mb": None, "max_rel_err": None, "note": fused_skip})
            continue
        note = INTERPRETER_NOTE if name == FUSED and interpreter else None
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        if formula not in truths:  # the row's own formula in fp32 on the same (rounded) inputs
            truth_fn, truth_inputs = truth_fns[formula]
            leaves32 = [t.detach().float().requires_grad_() for t in truth_inputs]
            out32 = truth_fn(*leaves32)
            truths[formula] = (out32.detach(), list(torch.autograd.grad(out32, leaves32, grad.float())))
        truth = truths[formula]

        def forward(fn=fn, inputs=inputs) -> torch.Tensor:
            with torch.no_grad():
                return fn(*inputs)

        def forward_backward(fn=fn, leaves=leaves) -> tuple[torch.Tensor, ...]:
            return torch.autograd.grad(fn(*leaves), leaves, grad)  # no .grad accumulation between calls

        errors = {"forward": _rel_err([forward()], [truth[0]]),
                  "forward+backward": _rel_err(forward_backward(), truth[1])}
        for pass_name, body in (("forward", forward), ("forward+backward", forward_backward)):
            tick(len(detail), total, f"{_PATHS[name]} {pass_name}")
            timing = measure(body, device, warmup=0 if note else 3, repeats=1 if note else repeats,
                             max_seconds=max_seconds)
            detail.append({"name": name, "pass": pass_name, "formula": formula, "median_ms": timing.median_ms,
                           "peak_mem_mb": timing.peak_mem_mb, "max_rel_err": errors[pass_name], "note": note})
    for row in detail:
        row_counts = counts[(row["formula"], row["pass"])]
        row["min_bytes"], row["flops"] = row_counts.bytes, row_counts.flops
        timed = row["median_ms"] is not None and row["note"] is None   # interpreter times are not GPU times
        bw = bandwidth_columns(row_counts.bytes, row["median_ms"] if timed else None, peak_gbps)
        row["gb_per_s"], row["pct_of_copy_bw"] = bw["GB/s"], bw.get("%bw")
    _add_speedups(detail)
    tick(total, total, "")
    on_cuda = peak_gbps is not None
    rows = [_table_row(row, on_cuda) for row in detail]
    columns = {"path": "eager / SDPA: vanilla self-attention (eager, F.scaled_dot_product_attention); "
                       "ref / fused: INP-guided reference and fused Triton kernel",
               "x ref": f"{REFERENCE} median / row median, same pass",
               "min MB": "bytes the row's attention must move at minimum (inputs read and outputs "
                         "written once), 1e6 bytes",
               "GB/s": "min MB / median time", "%bw": "GB/s as % of the measured copy bandwidth",
               "max err": "vs the row's own formula in fp32 (vanilla: eager; INP: reference), relative "
                          "to max |value|; forward+backward: worst input gradient"}
    fused_fwd = counts[("inp", "forward")]
    return {"rows": rows, "detail": detail,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).replace("torch.", ""), "batch": batch, "n": n, "m": m, "c": c, "heads": heads,
            "torch": str(torch.__version__), **({"copy_gb_per_s": peak_gbps} if on_cuda else {}),
            "fused_forward": {"bytes": fused_fwd.bytes, "flops": fused_fwd.flops,
                              "flops_per_byte": fused_fwd.intensity},
            "columns": {key: text for key, text in columns.items() if key in rows[0]}}


INTERPRETER_NOTE = "fused rows ran in Triton's CPU interpreter: their times are not GPU times"
_PATHS = {VANILLA_EAGER: "eager", VANILLA_SDPA: "SDPA", REFERENCE: "ref", FUSED: "fused"}


def _table_row(row: dict[str, Any], on_cuda: bool) -> dict[str, Any]:
    """The short-key row the CLI prints (every key becomes a column: keep it under 80 columns)."""
    out = {"path": _PATHS[row["name"]], "pass": "fwd" if row["pass"] == "forward" else "fwd+bwd",
           "ms": _short(row["median_ms"], 3), "x ref": _short(row["speedup"], 3),
           "min MB": _short(row["min_bytes"] / 1e6, 3), "GB/s": _short(row["gb_per_s"], 3)}
    if on_cuda:   # the copy bandwidth and peak memory are measured on CUDA only: no empty columns elsewhere
        out["%bw"] = _short(row["pct_of_copy_bw"], 2)
    out["max err"] = _short(row["max_rel_err"], 2)
    if on_cuda:
        out["peak MB"] = _short(row["peak_mem_mb"], 3)
    if row["note"]:  # long notes print below the table, so no column is spent on them
        out["note"] = row["note"]
    return out


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """speedup = INP-guided reference time / row time, per pass (interpreter and skipped rows get none)."""
    for row in rows:
        row["speedup"] = None
        base = next((r for r in rows if r["name"] == REFERENCE and r["pass"] == row["pass"]), None)
        if base and base["median_ms"] and row["median_ms"] and row["note"] is None:
            row["speedup"] = base["median_ms"] / row["median_ms"]


__all__ = ["table1_counts", "run_attention_bench", "matmul_ops", "vanilla_attention_eager", "vanilla_attention_sdpa",
           "fused_skip_reason"]
