"""INP-guided ReLU attention: out_h = ReLU(s_h * normalize(q_h) @ normalize(k_h)^T) @ v_h.

q: (B, N, C) image tokens, k, v: (B, M, C) from the M INPs, s: H learnable per-head scales,
heads of size D = C / H merged back to (B, N, C). No softmax, no row normalisation (SPEC.md).

Roofline (B=16, N=784, M=6, C=768, H=12, bf16): the op reads q (19.3 MB) and writes out
(19.3 MB); k and v are 0.3 MB together. Arithmetic: 2 products of N x M x D per head, about
2 * 2 * 16 * 784 * 6 * 768 = 0.23 GFLOP, under 1 microsecond of tensor-core time, while 38.6 MB
take about 13 microseconds at 3 TB/s. It is memory-bound: the kernel reads q once and writes
out once. The k side is tiny, so it is prepared in PyTorch: k_tilde = s_h * normalize(k_h)
(folding the scale into k keeps the kernel to q-hat @ k_tilde^T), and its gradient (for k and
s) flows back through those PyTorch ops by autograd.

Forward kernel: one program per (block of BLOCK_N tokens, image b, head h): load q's block,
normalise rows in fp32, S = q_hat @ k_tilde^T (M padded to 16 for tl.dot), P = ReLU(S),
out = P @ v. Backward recomputes S from q (no (B, H, N, M) tensor is stored); BACKWARD_SPLIT
programs per (b, h) each walk a share of the token blocks, write dq per token and keep partial
sums of dk_tilde and dv in registers, which PyTorch adds afterwards (deterministic, no atomics).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from kernels.dispatch import use_kernel

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference needs no Triton
    triton = None

NORM_EPS = 1e-12  # F.normalize's eps
MAX_PROTOTYPES = 32
BACKWARD_SPLIT = 8  # backward programs per (image, head); each keeps a partial dk/dv sum


def relu_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                             num_heads: int) -> torch.Tensor:
    """Plain PyTorch, as the authors compute it: the ground truth and the CPU path."""
    b, n, c = q.shape
    m, h = k.shape[1], num_heads
    qh = F.normalize(q.reshape(b, n, h, c // h).transpose(1, 2), dim=-1)   # (B, H, N, D)
    kh = F.normalize(k.reshape(b, m, h, c // h).transpose(1, 2), dim=-1)   # (B, H, M, D)
    vh = v.reshape(b, m, h, c // h).transpose(1, 2)
    attn = F.relu((qh @ kh.transpose(-2, -1)) * scale.reshape(1, h, 1, 1).to(qh.dtype))
    return (attn @ vh).transpose(1, 2).reshape(b, n, c)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, num_heads: int) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be (B, N, C), (B, M, C), (B, M, C); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, _, c = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[2] != c:
        raise ValueError(f"k and v must both be (B={b}, M, C={c}); got {tuple(k.shape)} and {tuple(v.shape)}")
    if c % num_heads:
        raise ValueError(f"C = {c} is not divisible by num_heads = {num_heads}")
    if scale.numel() != num_heads:
        raise ValueError(f"scale must have num_heads = {num_heads} elements, got {scale.numel()}")


if triton is not None:
    _INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
    _CONFIGS = ([triton.Config({"BLOCK_N": 32}, num_warps=4)] if _INTERPRET else
                [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
                 for bn in (32, 64, 128) for w in (2, 4, 8) for s in (2, 3)])

    @triton.autotune(configs=_CONFIGS, key=["N", "D", "M_PAD"])
    @triton.jit
    def _forward_kernel(Q, K, V, Out, N, stride_qb, stride_qn, stride_ob, stride_on,
                        H: tl.constexpr, D: tl.constexpr, M_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                        EPS: tl.constexpr):
        pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
        b, h = pid_bh // H, pid_bh % H
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, D)
        protos = tl.arange(0, M_PAD)
        row_ok = rows < N
        q = tl.load(Q + b * stride_qb + rows[:, None] * stride_qn + h * D + cols[None, :],
                    mask=row_ok[:, None], other=0.0)
        qf = q.to(tl.float32)
        inv_norm = 1.0 / tl.maximum(tl.sqrt(tl.sum(qf * qf, axis=1)), EPS)
        # k_tilde and v are (B*H, M_PAD, D) contiguous, zero-padded beyond M.
        kv_offsets = pid_bh * M_PAD * D + protos[:, None] * D + cols[None, :]
        k = tl.load(K + kv_offsets)
        v = tl.load(V + kv_offsets)
        q_hat = (qf * inv_norm[:, None]).to(k.dtype)
        s = tl.dot(q_hat, tl.trans(k), input_precision="ieee")           # (BLOCK_N, M_PAD) fp32
        p = tl.maximum(s, 0.0)
        out = tl.dot(p.to(v.dtype), v, input_precision="ieee")           # (BLOCK_N, D) fp32
        tl.store(Out + b * stride_ob + rows[:, None] * stride_on + h * D + cols[None, :],
                 out.to(Out.dtype.element_ty), mask=row_ok[:, None])

    _BWD_CONFIGS = ([triton.Config({"BLOCK_N": 32}, num_warps=4)] if _INTERPRET else
                    [triton.Config({"BLOCK_N": bn}, num_warps=w) for bn in (32, 64, 128) for w in (4, 8)])

    @triton.autotune(configs=_BWD_CONFIGS, key=["N", "D", "M_PAD"])
    @triton.jit
    def _backward_kernel(Q, K, V, DO, DQ, DK, DV, N, stride_qb, stride_qn, stride_ob, stride_on,
                         H: tl.constexpr, D: tl.constexpr, M_PAD: tl.constexpr, SPLIT: tl.constexpr,
                         BLOCK_N: tl.constexpr, EPS: tl.constexpr):
        # Program (s, b*h) walks token blocks s, s+SPLIT, ... and keeps its dk/dv sums in registers;
        # the SPLIT partial sums per (b, h) are added in PyTorch (deterministic, no atomics).
        pid_s, pid_bh = tl.program_id(0), tl.program_id(1)
        b, h = pid_bh // H, pid_bh % H
        cols = tl.arange(0, D)
        protos = tl.arange(0, M_PAD)
        kv_offsets = pid_bh * M_PAD * D + protos[:, None] * D + cols[None, :]
        k = tl.load(K + kv_offsets).to(tl.float32)
        v = tl.load(V + kv_offsets).to(tl.float32)
        dk_acc = tl.zeros((M_PAD, D), dtype=tl.float32)
        dv_acc = tl.zeros((M_PAD, D), dtype=tl.float32)
        for start in range(pid_s * BLOCK_N, N, SPLIT * BLOCK_N):
            rows = start + tl.arange(0, BLOCK_N)
            row_ok = rows < N
            q_offsets = b * stride_qb + rows[:, None] * stride_qn + h * D + cols[None, :]
            o_offsets = b * stride_ob + rows[:, None] * stride_on + h * D + cols[None, :]
            qf = tl.load(Q + q_offsets, mask=row_ok[:, None], other=0.0).to(tl.float32)
            do = tl.load(DO + o_offsets, mask=row_ok[:, None], other=0.0).to(tl.float32)
            norm = tl.sqrt(tl.sum(qf * qf, axis=1))
            clamped = norm <= EPS
            inv_norm = 1.0 / tl.maximum(norm, EPS)
            q_hat = qf * inv_norm[:, None]
            s = tl.dot(q_hat, tl.trans(k), input_precision="ieee")           # (BLOCK_N, M_PAD)
            p = tl.maximum(s, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")             # (BLOCK_N, M_PAD)
            ds = tl.where(s > 0.0, dp, 0.0)
            dq_hat = tl.dot(ds, k, input_precision="ieee")                   # (BLOCK_N, D)
            # d normalize: (g - q_hat (q_hat . g)) / ||q||; below eps normalize is q / eps, linear.
            radial = tl.sum(q_hat * dq_hat, axis=1)
            dq = tl.where(clamped[:, None], dq_hat, dq_hat - q_hat * radial[:, None]) * inv_norm[:, None]
            tl.store(DQ + q_offsets, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])
            # Padded rows have q = do = 0, so they add nothing.
            dk_acc += tl.dot(tl.trans(ds), q_hat, input_precision="ieee")
            dv_acc += tl.dot(tl.trans(p), do, input_precision="ieee")
        partial = (pid_bh * SPLIT + pid_s) * M_PAD * D + protos[:, None] * D + cols[None, :]
        tl.store(DK + partial, dk_acc)
        tl.store(DV + partial, dv_acc)


def _pad_heads(x: torch.Tensor, num_heads: int, m_pad: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, M, C) -> (B*H, M_PAD, D) contiguous, zero rows beyond M."""
    b, m, c = x.shape
    heads = x.reshape(b, m, num_heads, c // num_heads).transpose(1, 2)
    return F.pad(heads, (0, 0, 0, m_pad - m)).reshape(b * num_heads, m_pad, c // num_heads).to(dtype).contiguous()


def _m_pad(m: int) -> int:
    return max(16, triton.next_power_of_2(m))


class ReLUAttentionFunction(torch.autograd.Function):
    """out = ReLU(normalize(q_h) @ k_tilde_h^T) @ v_h with k_tilde already scaled and normalised."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k_tilde: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
        b, n, c = q.shape
        m = k_tilde.shape[1]
        d, m_pad = c // num_heads, _m_pad(m)
        q = q if q.stride(-1) == 1 else q.contiguous()
        kp = _pad_heads(k_tilde, num_heads, m_pad, q.dtype)
        vp = _pad_heads(v, num_heads, m_pad, q.dtype)
        out = torch.empty((b, n, c), device=q.device, dtype=q.dtype)
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), b * num_heads)  # noqa: E731
        _forward_kernel[grid](q, kp, vp, out, n, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
                              H=num_heads, D=d, M_PAD=m_pad, EPS=NORM_EPS)
        ctx.save_for_backward(q, kp, vp)
        ctx.shape = (b, n, c, m, num_heads)
        ctx.dtypes = (k_tilde.dtype, v.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, kp, vp = ctx.saved_tensors
        b, n, c, m, num_heads = ctx.shape
        d, m_pad = c // num_heads, kp.shape[1]
        grad_out = grad_out.contiguous()
        dq = torch.empty_like(q)
        split = BACKWARD_SPLIT
        dk_part = torch.empty((b * num_heads, split, m_pad, d), device=q.device, dtype=torch.float32)
        dv_part = torch.empty_like(dk_part)
        _backward_kernel[(split, b * num_heads)](
            q, kp, vp, grad_out, dq, dk_part, dv_part, n, q.stride(0), q.stride(1),
            grad_out.stride(0), grad_out.stride(1), H=num_heads, D=d, M_PAD=m_pad, SPLIT=split, EPS=NORM_EPS)

        def merge(part: torch.Tensor) -> torch.Tensor:  # (B*H, SPLIT, M_PAD, D) -> (B, M, C)
            return part.sum(1)[:, :m].reshape(b, num_heads, m, d).transpose(1, 2).reshape(b, m, c)

        k_dtype, v_dtype = ctx.dtypes
        return dq, merge(dk_part).to(k_dtype), merge(dv_part).to(v_dtype), None


def scaled_normalized_keys(k: torch.Tensor, scale: torch.Tensor, num_heads: int) -> torch.Tensor:
    """k_tilde = s_h * normalize(k_h), (B, M, C); differentiable PyTorch (tiny tensors)."""
    b, m, c = k.shape
    kh = F.normalize(k.reshape(b, m, num_heads, c // num_heads), dim=-1)
    return (kh * scale.reshape(1, 1, num_heads, 1).to(kh.dtype)).reshape(b, m, c)


def relu_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                          num_heads: int) -> torch.Tensor:
    """The fused path: Triton kernels for the q side, PyTorch autograd for the tiny k side."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    _check(q, k, v, scale, num_heads)
    if k.shape[1] > MAX_PROTOTYPES:
        raise ValueError(f"M = {k.shape[1]} prototypes: the fused kernel supports 1..{MAX_PROTOTYPES}")
    d = q.shape[-1] // num_heads
    if d < 16 or d & (d - 1):
        raise ValueError(f"head size {d}: the fused kernel needs a power of two >= 16")
    return ReLUAttentionFunction.apply(q, scaled_normalized_keys(k, scale, num_heads), v, num_heads)


def relu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                   num_heads: int) -> torch.Tensor:
    """Dispatching entry point: the fused kernel on CUDA, the reference elsewhere."""
    if use_kernel(q, k, v):
        return relu_attention_triton(q, k, v, scale, num_heads)
    _check(q, k, v, scale, num_heads)
    return relu_attention_reference(q, k, v, scale, num_heads)
