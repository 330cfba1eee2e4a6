"""Paper Table 1 (operation counts and memory of one decoder layer) and measured attention speed.

Timed rows, all at the same B, N, C, H: vanilla multi-head self-attention written out in PyTorch
(eager) and through F.scaled_dot_product_attention (SDPA), the INP-guided reference, and the fused
Triton kernel; forward, and forward + backward. Each row gives its median time, peak memory (CUDA),
speed-up over the INP-guided reference of the same pass, and its largest error relative to its
own formula evaluated in fp32 (vanilla rows against eager vanilla, INP rows against the INP
reference; for forward + backward, the worst of the input gradients).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from inp_former.benchmarks.timing import measure
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
    try:
        import triton  # noqa: F401
    except ImportError:
        return "skipped: Triton is not installed"
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return "skipped on CPU: set TRITON_INTERPRET=1 to run the kernel in Triton's interpreter (slow)"


def _rel_err(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    """Worst over tensors of max |got - want| / max |want|."""
    return max(((g.float() - w).abs().max() / w.abs().max().clamp_min(1e-30)).item() for g, w in zip(got, want))


def run_attention_bench(n: int, m: int, c: int, heads: int, batch: int, dtype: torch.dtype,
                        device: torch.device | str, repeats: int = 20, max_seconds: float = 10.0) -> dict[str, Any]:
    """Time the four attentions (forward, forward + backward) at one size; JSON-serialisable result."""
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
    fused_bytes = (2 * q.numel() + k.numel() + v.numel()) * elem   # q read, out written, k and v read
    fused_flops = 2 * 2 * batch * n * m * c                         # Q K^T and P V, unpadded

    rows: list[dict[str, Any]] = []
    truths: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}
    for name, fn, inputs, formula in cases:
        if name == FUSED and fused_skip:
            for pass_name in ("forward", "forward+backward"):
                rows.append({"name": name, "pass": pass_name, "median_ms": None, "peak_mem_mb": None,
                             "speedup": None, "max_rel_err": None, "gb_per_s": None, "note": fused_skip})
            continue
        note = "interpreter" if name == FUSED and interpreter else ""
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
            timing = measure(body, device, warmup=0 if note else 3, repeats=1 if note else repeats,
                             max_seconds=max_seconds)
            gb_per_s = None
            if name in (REFERENCE, FUSED) and pass_name == "forward" and not note:  # at the fused minimum bytes
                gb_per_s = fused_bytes / (timing.median_ms * 1e-3) / 1e9
            rows.append({"name": name, "pass": pass_name, "median_ms": timing.median_ms,
                         "peak_mem_mb": timing.peak_mem_mb, "speedup": None, "max_rel_err": errors[pass_name],
                         "gb_per_s": gb_per_s, "note": note})
    _add_speedups(rows)
    return {"rows": rows, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).replace("torch.", ""), "batch": batch, "n": n, "m": m, "c": c, "heads": heads,
            "torch": str(torch.__version__),
            "fused_forward": {"bytes": fused_bytes, "flops": fused_flops, "flops_per_byte": fused_flops / fused_bytes},
            "speedup_is": f"{REFERENCE} median / row median, same pass",
            "max_rel_err_is": "vs the row's own formula in fp32 (vanilla: eager; INP: reference); "
                              "forward+backward: worst input gradient"}


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """speedup = INP-guided reference time / row time, per pass (interpreter rows get none)."""
    for row in rows:
        base = next((r for r in rows if r["name"] == REFERENCE and r["pass"] == row["pass"]), None)
        if base and row["median_ms"] and row["note"] != "interpreter" and not str(row["note"]).startswith("skipped"):
            row["speedup"] = base["median_ms"] / row["median_ms"]


__all__ = ["table1_counts", "run_attention_bench", "matmul_ops", "vanilla_attention_eager", "vanilla_attention_sdpa",
           "fused_skip_reason"]
