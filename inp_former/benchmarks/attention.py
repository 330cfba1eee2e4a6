"""Paper Table 1 (operation counts and memory of one decoder layer) and measured attention speed.

Timed rows, all at the same B, N, C, H: vanilla multi-head self-attention written out (eager) and
through F.scaled_dot_product_attention (SDPA), the INP-guided reference, and the fused kernel;
forward, and forward + backward.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.nn.functional as F

from inp_former.benchmarks.timing import measure
from kernels.relu_attention import relu_attention_reference, relu_attention_triton

MB = 2**20


def matmul_ops(rows: int, cols: int, inner: int) -> int:
    """Multiplications plus additions of a (rows x inner) @ (inner x cols) product, as the paper counts."""
    return rows * cols * (2 * inner - 1)


def table1_counts(n: int, m: int, c: int) -> dict[str, Any]:
    """Table 1 for one image in fp32: vanilla self-attention vs INP-guided attention."""
    fp32 = 4
    return {
        "n": n, "m": m, "c": c,
        "vanilla": {"qk": matmul_ops(n, n, c), "av": matmul_ops(n, c, n),
                    "memory": [n * c * fp32 / MB, n * c * fp32 / MB, n * c * fp32 / MB, n * n * fp32 / MB]},
        "inp": {"qk": matmul_ops(n, m, c), "av": matmul_ops(n, c, m),
                "memory": [n * c * fp32 / MB, m * c * fp32 / MB, m * c * fp32 / MB, n * m * fp32 / MB]},
    }


def vanilla_attention_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = q.shape
    d = c // num_heads
    qh, kh, vh = (t.reshape(b, -1, num_heads, d).transpose(1, 2) for t in (q, k, v))
    attn = torch.softmax((qh @ kh.transpose(-2, -1)) * d**-0.5, dim=-1)
    return (attn @ vh).transpose(1, 2).reshape(b, n, c)


def vanilla_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = q.shape
    d = c // num_heads
    qh, kh, vh = (t.reshape(b, -1, num_heads, d).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, n, c)


def _fused_status(device: torch.device) -> str | None:
    """None if the fused kernel can run here, else the reason it is skipped."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "skipped: Triton is not installed"
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return "skipped on CPU: set TRITON_INTERPRET=1 to run the kernel in Triton's interpreter (slow)"


def run_attention_bench(n: int, m: int, c: int, heads: int, batch: int, dtype: torch.dtype,
                        device: torch.device | str, repeats: int = 20, max_seconds: float = 10.0) -> dict[str, Any]:
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, n, c, generator=g).to(device, dtype)
    k = torch.randn(batch, m, c, generator=g).to(device, dtype)
    v = torch.randn(batch, m, c, generator=g).to(device, dtype)
    kv_self = torch.randn(batch, n, 2 * c, generator=g).to(device, dtype)
    scale = torch.ones(heads, 1, 1, device=device)
    grad = torch.randn(batch, n, c, generator=g).to(device, dtype)

    cases: dict[str, tuple[Callable[..., torch.Tensor], list[torch.Tensor]]] = {
        "vanilla self-attention (eager)": (lambda a, b_, c_: vanilla_attention_eager(a, b_, c_, heads),
                                           [q, kv_self[..., :c], kv_self[..., c:]]),
        "vanilla self-attention (SDPA)": (lambda a, b_, c_: vanilla_attention_sdpa(a, b_, c_, heads),
                                          [q, kv_self[..., :c], kv_self[..., c:]]),
        "INP-guided reference": (lambda a, b_, c_, s: relu_attention_reference(a, b_, c_, s, heads), [q, k, v, scale]),
        "INP-guided fused": (lambda a, b_, c_, s: relu_attention_triton(a, b_, c_, s, heads), [q, k, v, scale]),
    }
    fused_skip = _fused_status(device)
    interpreter = device.type == "cpu" and fused_skip is None
    with torch.no_grad():
        reference_out = relu_attention_reference(q, k, v, scale, heads).float()
    rows: list[dict[str, Any]] = []
    for name, (fn, inputs) in cases.items():
        note = "interpreter" if (name.endswith("fused") and interpreter) else ""
        if name.endswith("fused") and fused_skip:
            rows.append({"name": name, "pass": "forward", "note": fused_skip})
            continue
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return fn(*inputs)

        def forward_backward() -> None:
            out = fn(*leaves)
            torch.autograd.backward(out, grad)

        out = forward()
        err = None
        if name.startswith("INP"):
            err = ((out.float() - reference_out).abs().max() / reference_out.abs().max()).item()
        limit = 1 if note else repeats
        for pass_name, body in (("forward", forward), ("forward+backward", forward_backward)):
            timing = measure(body, device, warmup=1 if note else 3, repeats=limit, max_seconds=max_seconds)
            row = {"name": name, "pass": pass_name, "median_ms": timing.median_ms, "peak_mem_mb": timing.peak_mem_mb,
                   "max_rel_err": err if pass_name == "forward" else None, "note": note}
            if name == "INP-guided fused" and pass_name == "forward" and not note:
                moved = (2 * q.numel() + 2 * k.numel()) * q.element_size()  # q in, out back, k and v in
                row["gb_per_s"] = moved / (timing.median_ms * 1e-3) / 1e9
            rows.append(row)
    _add_speedups(rows)
    return {"rows": rows, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).replace("torch.", ""), "batch": batch, "n": n, "m": m, "c": c, "heads": heads,
            "torch": str(torch.__version__)}


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-up over the INP-guided reference and over SDPA self-attention, per pass."""
    for row in rows:
        if "median_ms" not in row:
            continue
        for base_name, key in (("INP-guided reference", "x_vs_reference"), ("vanilla self-attention (SDPA)", "x_vs_sdpa")):
            base = next((r for r in rows if r["name"] == base_name and r["pass"] == row["pass"] and "median_ms" in r), None)
            if base is not None and not row.get("note"):
                row[key] = base["median_ms"] / row["median_ms"]


__all__ = ["table1_counts", "run_attention_bench", "matmul_ops"]
