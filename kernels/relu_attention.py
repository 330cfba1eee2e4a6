"""INP-guided ReLU attention: out_h = ReLU(s_h * normalize(q_h) @ normalize(k_h)^T) @ v_h.

q: (B, N, C) image tokens; k, v: (B, M, C) from the M INPs (M small: 1..32); s: H learnable
per-head scales (the model stores them as (H, 1, 1)); H heads of size D = C / H, merged back to
(B, N, C) with head h in channels [h*D, (h+1)*D). No softmax, no row normalisation (docs/behaviour.md,
"INP-Guided Decoder"). normalize(x) = x / max(||x||, 1e-12), as F.normalize.

Roofline, B=16, N=784, M=6, C=768, H=12, bf16 (H100 SXM: ~3.35 TB/s, ~990 dense bf16 TFLOP/s)
-----------------------------------------------------------------------------------------------
  bytes   q read 16*784*768*2 = 19.27 MB, out written 19.27 MB, k and v read 2*16*6*768*2 = 0.29 MB
          -> 38.8 MB per forward: ~11.6 us at 3.35 TB/s (23 us in fp32).
  flops   Q K^T and P V: 2 * (2*B*H*N*M*D) = 2 * 115.6 M = 0.231 GFLOP; normalising q: ~3*B*N*C
          = 0.029 GFLOP. Intensity ~6.7 flop/byte against a ridge of ~300 (bf16 tensor cores) or
          ~20 (fp32 FMA): the op is memory-bound by a factor of ~45. Padding M to 16 for tl.dot
          multiplies the matmul work by 2.7 and changes nothing; even fp32 FMA dots (0.62 GFLOP
          padded, ~10 us) stay under the 23 us of fp32 traffic.
  so      the floor is one read of q and one write of out. The PyTorch reference moves roughly
          4x that (normalize reads q twice and writes q_hat, the head transpose copies out, and
          the (B, H, N, D) result is re-laid out), in ~12 launches.
  backward reads q and dout, writes dq (58 MB bf16, ~17 us); dk, dv, ds are tiny.

Forward kernel: grid (cdiv(N, BLOCK_N), B*H). Each program normalises k_h (M_PAD x D, masked
beyond M, strided loads so column slices of one kv Linear output need no copy), folds s_h into
it (k_tilde = s_h * k_hat), loads v_h, then reads one (BLOCK_N, D) tile of q, normalises its rows
in fp32, and computes ReLU(q_hat @ k_tilde^T) @ v with two tl.dot (operands in the input dtype,
fp32 accumulation; "ieee" fp32 dots so fp32 is not silently TF32). The k side is recomputed by
every program: it is M*D values from L2, far cheaper than an extra launch.

Backward kernel: grid (SPLIT, B*H). Program (s, b*h) walks token blocks s, s+SPLIT, ...; for each
it re-reads q and dout, RECOMPUTES q_hat and the logits, writes dq per token, and accumulates
dk_tilde = dlogits^T q_hat and dv = P^T dout in registers. Recomputing costs no bytes (dq needs q
anyway) and a few tl.dot; storing the (B, H, N, M) attention instead would add a write in the
forward and a read here (M/D = 9% of q's bytes, 25% padded to M_PAD = 16) for no saving. At the
end the program maps its dk_tilde partial through k_tilde = s_h * normalize(k_h), which is linear
in dk_tilde, into a partial dk and a partial ds, and stores dk, dv (one (SPLIT, B, M, 2C) fp32
buffer) and ds ((SPLIT, B*H)). PyTorch sums the SPLIT partials in a fixed order: deterministic,
no atomics. SPLIT is picked from the SM count so B*H*SPLIT programs fill the GPU even at batch 1.
The five small products run as tl.dot for fp16/bf16 (tensor cores); in fp32 Triton lowers tl.dot
to FMA code that needs 180-255 registers and spills (ptxas, sm_90, D=64), so the fp32 backward
loops over the M prototypes instead (rank-1 updates and row sums on CUDA cores, no padding:
99-128 registers at BLOCK_N 16-32 with 8 warps, no spills, ~50 FMA per q element at M=6 against a
memory budget of ~120).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kernels import Launch
from kernels.dispatch import current_mode, interpreting, use_kernel

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference needs no Triton
    triton = None

NORM_EPS = 1e-12           # F.normalize's eps
MAX_PROTOTYPES = 32        # M padded to 16 or 32 for tl.dot
HEAD_DIMS = (16, 32, 64, 128)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKWARD_FP32_DOT = False  # fp32 backward through tl.dot instead of the per-prototype loop (tests set it)


# ----------------------------------------------------------------------------- reference
def relu_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                             num_heads: int) -> torch.Tensor:
    """Plain PyTorch, as the authors compute it: the ground truth and the CPU path."""
    b, n, c = q.shape
    m, h = k.shape[1], num_heads
    d = c // h
    qh = F.normalize(q.reshape(b, n, h, d).transpose(1, 2), dim=-1)   # (B, H, N, D)
    kh = F.normalize(k.reshape(b, m, h, d).transpose(1, 2), dim=-1)   # (B, H, M, D)
    vh = v.reshape(b, m, h, d).transpose(1, 2)                         # (B, H, M, D)
    attn = F.relu((qh @ kh.transpose(-2, -1)) * scale.reshape(1, h, 1, 1).to(qh.dtype))
    return (attn @ vh).transpose(1, 2).reshape(b, n, c)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, num_heads: int) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be (B, N, C), (B, M, C), (B, M, C); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, _, c = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[2] != c:
        raise ValueError(f"k and v must both be (B={b}, M, C={c}); got {tuple(k.shape)} and {tuple(v.shape)}")
    if num_heads < 1 or c % num_heads:
        raise ValueError(f"C = {c} is not divisible by num_heads = {num_heads}")
    if scale.numel() != num_heads:
        raise ValueError(f"scale must have num_heads = {num_heads} elements, got {scale.numel()} "
                         f"(shape {tuple(scale.shape)})")


def kernel_unsupported(q: torch.Tensor, k: torch.Tensor, num_heads: int) -> str | None:
    """Why the fused kernel cannot take these shapes/dtypes, or None if it can."""
    d = q.shape[-1] // num_heads
    if k.shape[1] > MAX_PROTOTYPES:
        return f"M = {k.shape[1]} prototypes: the fused kernel supports 1..{MAX_PROTOTYPES}"
    if d not in HEAD_DIMS:
        return f"head size D = {d}: the fused kernel supports D in {HEAD_DIMS}"
    if q.dtype not in KERNEL_DTYPES:
        return f"dtype {q.dtype}: the fused kernel supports fp32, fp16 and bf16"
    return None


# ----------------------------------------------------------------------------- Triton kernels
if triton is not None:
    # Every config autotune may pick on a GPU; inp_former.benchmarks.compile compiles each of them for
    # sm_80 and sm_90 and tests/test_compile_evidence.py fails on spills or dots off tensor cores.
    # Forward: no loop, so stages do not matter; block and warps trade occupancy for registers.
    FWD_CONFIGS = [triton.Config({"BLOCK_N": bn}, num_warps=w)
                   for bn, w in ((32, 2), (32, 4), (32, 8), (64, 4), (64, 8), (128, 8))]
    # Backward: a loop over token blocks, so pipelining (num_stages) can hide the q/dout loads.
    BWD_CONFIGS = [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
                   for bn, w in ((16, 4), (16, 8), (32, 4), (32, 8), (64, 8)) for s in (2, 3)]
    # The interpreter would run every config to "autotune": one is enough there.
    _INTERPRETER_CONFIGS = [triton.Config({"BLOCK_N": 32}, num_warps=4)]

    @triton.jit
    def _load_head_keys(K, V, S, b, h, M, stride_kb, stride_km, stride_vb, stride_vm,
                        D: tl.constexpr, M_PAD: tl.constexpr, EPS: tl.constexpr):
        """k_tilde = s_h * normalize(k_h), k_hat, 1/max(|k|, eps), |k| <= eps, v_h, s_h (fp32)."""
        cols = tl.arange(0, D)
        protos = tl.arange(0, M_PAD)
        proto_ok = (protos < M)[:, None]  # rows beyond M load as 0: zero logits, no contribution
        k = tl.load(K + b * stride_kb + protos[:, None] * stride_km + h * D + cols[None, :],
                    mask=proto_ok, other=0.0).to(tl.float32)
        v = tl.load(V + b * stride_vb + protos[:, None] * stride_vm + h * D + cols[None, :],
                    mask=proto_ok, other=0.0).to(tl.float32)
        s_h = tl.load(S + h).to(tl.float32)
        norm = tl.sqrt(tl.sum(k * k, axis=1))
        inv_norm = 1.0 / tl.maximum(norm, EPS)
        k_hat = k * inv_norm[:, None]
        return k_hat * s_h, k_hat, inv_norm, norm <= EPS, v, s_h

    @triton.autotune(configs=_INTERPRETER_CONFIGS if interpreting() else FWD_CONFIGS, key=["N", "D", "M_PAD"])
    @triton.jit
    def _relu_attention_fwd(Q, K, V, S, Out, N, M,
                            stride_qb, stride_qn, stride_kb, stride_km, stride_vb, stride_vm,
                            stride_ob, stride_on,
                            H: tl.constexpr, D: tl.constexpr, M_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                            EPS: tl.constexpr, PRECISION: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)  # int64: B*N*C can pass 2^31 at large batches
        h = pid_bh % H
        dt = Out.dtype.element_ty  # dot operands in the input dtype (tensor cores for fp16/bf16)
        k_tilde, _, _, _, v, _ = _load_head_keys(K, V, S, b, h, M, stride_kb, stride_km, stride_vb, stride_vm,
                                                 D, M_PAD, EPS)
        cols = tl.arange(0, D)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = (rows < N)[:, None]
        q = tl.load(Q + b * stride_qb + rows[:, None] * stride_qn + h * D + cols[None, :],
                    mask=row_ok, other=0.0).to(tl.float32)
        q_hat = q * (1.0 / tl.maximum(tl.sqrt(tl.sum(q * q, axis=1)), EPS))[:, None]
        logits = tl.dot(q_hat.to(dt), tl.trans(k_tilde.to(dt)), input_precision=PRECISION)  # (BLOCK_N, M_PAD)
        p = tl.maximum(logits, 0.0)
        out = tl.dot(p.to(dt), v.to(dt), input_precision=PRECISION)                         # (BLOCK_N, D)
        tl.store(Out + b * stride_ob + rows[:, None] * stride_on + h * D + cols[None, :], out.to(dt), mask=row_ok)

    @triton.autotune(configs=_INTERPRETER_CONFIGS if interpreting() else BWD_CONFIGS,
                     key=["N", "D", "M_PAD", "SPLIT"])
    @triton.jit
    def _relu_attention_bwd(Q, K, V, S, DO, DQ, DKV, DS, N, M, SPLIT,
                            stride_qb, stride_qn, stride_kb, stride_km, stride_vb, stride_vm,
                            stride_dob, stride_don, stride_dqb, stride_dqn,
                            stride_ps, stride_pb, stride_pm, stride_ds,
                            H: tl.constexpr, D: tl.constexpr, M_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                            EPS: tl.constexpr, PRECISION: tl.constexpr, USE_DOT: tl.constexpr):
        pid_s = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        dt = DQ.dtype.element_ty
        k_tilde, k_hat, inv_k, k_clamped, v, s_h = _load_head_keys(
            K, V, S, b, h, M, stride_kb, stride_km, stride_vb, stride_vm, D, M_PAD, EPS)
        k_op = k_tilde.to(dt)
        v_op = v.to(dt)
        cols = tl.arange(0, D)
        protos = tl.arange(0, M_PAD)
        dk_tilde = tl.zeros((M_PAD, D), dtype=tl.float32)
        dv = tl.zeros((M_PAD, D), dtype=tl.float32)
        for start in range(pid_s * BLOCK_N, N, SPLIT * BLOCK_N):
            rows = start + tl.arange(0, BLOCK_N)
            row_ok = (rows < N)[:, None]
            q = tl.load(Q + b * stride_qb + rows[:, None] * stride_qn + h * D + cols[None, :],
                        mask=row_ok, other=0.0).to(tl.float32)
            do = tl.load(DO + b * stride_dob + rows[:, None] * stride_don + h * D + cols[None, :],
                         mask=row_ok, other=0.0).to(tl.float32)
            norm = tl.sqrt(tl.sum(q * q, axis=1))
            inv_q = 1.0 / tl.maximum(norm, EPS)
            q_hat = q * inv_q[:, None]  # logits are recomputed from it, never stored
            if USE_DOT:  # fp16/bf16: tensor cores, M padded to M_PAD
                q_op = q_hat.to(dt)
                do_op = do.to(dt)
                logits = tl.dot(q_op, tl.trans(k_op), input_precision=PRECISION)         # (BLOCK_N, M_PAD)
                dp = tl.dot(do_op, tl.trans(v_op), input_precision=PRECISION)
                dlogits = tl.where(logits > 0.0, dp, 0.0)                                # ReLU'(0) = 0, as torch
                dq_hat = tl.dot(dlogits.to(dt), k_op, input_precision=PRECISION)        # (BLOCK_N, D)
                # masked rows have q = dout = 0, so they add nothing to the sums
                dk_tilde += tl.dot(tl.trans(dlogits.to(dt)), q_op, input_precision=PRECISION)
                dv += tl.dot(tl.trans(tl.maximum(logits, 0.0).to(dt)), do_op, input_precision=PRECISION)
            else:  # fp32: one prototype at a time on CUDA cores (fp32 FMA dots spill registers)
                dq_hat = tl.zeros((BLOCK_N, D), dtype=tl.float32)
                for m in range(M):
                    is_m = (protos == m)[:, None]
                    k_m = tl.load(K + b * stride_kb + m * stride_km + h * D + cols).to(tl.float32)
                    k_m = k_m * (s_h / tl.maximum(tl.sqrt(tl.sum(k_m * k_m, axis=0)), EPS))
                    v_m = tl.load(V + b * stride_vb + m * stride_vm + h * D + cols).to(tl.float32)
                    logit = tl.sum(q_hat * k_m[None, :], axis=1)                         # (BLOCK_N,)
                    dlogit = tl.where(logit > 0.0, tl.sum(do * v_m[None, :], axis=1), 0.0)
                    dq_hat += dlogit[:, None] * k_m[None, :]
                    dk_tilde += tl.where(is_m, tl.sum(dlogit[:, None] * q_hat, axis=0)[None, :], 0.0)
                    dv += tl.where(is_m, tl.sum(tl.maximum(logit, 0.0)[:, None] * do, axis=0)[None, :], 0.0)
            # normalize's Jacobian: (g - q_hat (q_hat . g)) / |q|; below eps it is q / eps, linear.
            radial = tl.sum(q_hat * dq_hat, axis=1)
            dq = tl.where((norm <= EPS)[:, None], dq_hat, dq_hat - q_hat * radial[:, None]) * inv_q[:, None]
            tl.store(DQ + b * stride_dqb + rows[:, None] * stride_dqn + h * D + cols[None, :], dq.to(dt), mask=row_ok)
        # k_tilde = s_h * normalize(k_h) is linear in dk_tilde: map this program's partial sum.
        ds = tl.sum(tl.sum(dk_tilde * k_hat, axis=1), axis=0)
        dk_hat = dk_tilde * s_h
        radial_k = tl.sum(k_hat * dk_hat, axis=1)
        dk = tl.where(k_clamped[:, None], dk_hat, dk_hat - k_hat * radial_k[:, None]) * inv_k[:, None]
        part = DKV + pid_s * stride_ps + b * stride_pb + protos[:, None] * stride_pm + h * D + cols[None, :]
        proto_ok = (protos < M)[:, None]
        tl.store(part, dk, mask=proto_ok)
        tl.store(part + H * D, dv, mask=proto_ok)  # dv lives in channels [C, 2C) of the buffer
        tl.store(DS + pid_s * stride_ds + pid_bh, ds)  # DS is (SPLIT, B*H)


def _m_pad(m: int) -> int:
    return max(16, triton.next_power_of_2(m))


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Any batch/row strides are passed to the kernel; only the channel stride must be 1."""
    return x if x.stride(-1) == 1 else x.contiguous()


@functools.lru_cache(maxsize=8)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 2 elsewhere (the interpreter)."""
    if device.type != "cuda":
        return 2
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


# ----------------------------------------------------------------------------- launch specs
# What the host functions pass to each kernel, from the tensors' shapes and strides (see
# kernels.Launch); inp_former.benchmarks.compile calls the same functions on meta tensors.
def backward_split(n_tokens: int, programs_per_split: int, sm_count: int) -> int:
    """Programs per (image, head) in the backward: enough to give ~4 programs per SM, but at
    least 64 tokens each (fewer makes the partial sums, not q, the traffic).
    ``programs_per_split``: B * H; ``sm_count``: the GPU's streaming multiprocessors."""
    return max(1, min(triton.cdiv(n_tokens, 64), triton.cdiv(4 * sm_count, programs_per_split)))


def forward_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                   num_heads: int) -> Launch:
    """The forward's launch on q (B, N, C), k, v (B, M, C) with unit channel stride and the flat
    (H,) scale; allocates the output ``Out`` (B, N, C) in q's dtype."""
    b, n, c = q.shape
    m = k.shape[1]
    out = torch.empty((b, n, c), device=q.device, dtype=q.dtype)
    args = dict(Q=q, K=k, V=v, S=scale, Out=out, N=n, M=m,
                stride_qb=q.stride(0), stride_qn=q.stride(1), stride_kb=k.stride(0), stride_km=k.stride(1),
                stride_vb=v.stride(0), stride_vm=v.stride(1), stride_ob=out.stride(0), stride_on=out.stride(1))
    constexprs = dict(H=num_heads, D=c // num_heads, M_PAD=_m_pad(m), EPS=NORM_EPS, PRECISION="ieee")
    return Launch(lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), b * num_heads), args, constexprs)


def backward_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                    grad_out: torch.Tensor, num_heads: int, sm_count: int) -> Launch:
    """The backward's launch (inputs as :func:`forward_launch`, grad_out like q) on a GPU with
    ``sm_count`` SMs; allocates ``DQ`` (B, N, C), the fp32 partials ``DKV`` (SPLIT, B, M, 2C: dk in
    channels [0, C), dv in [C, 2C)) and ``DS`` (SPLIT, B, H)."""
    b, n, c = q.shape
    m = k.shape[1]
    split = backward_split(n, b * num_heads, sm_count)
    dq = torch.empty((b, n, c), device=q.device, dtype=q.dtype)
    dkv = torch.empty((split, b, m, 2 * c), device=q.device, dtype=torch.float32)
    ds = torch.empty((split, b, num_heads), device=q.device, dtype=torch.float32)
    args = dict(Q=q, K=k, V=v, S=scale, DO=grad_out, DQ=dq, DKV=dkv, DS=ds, N=n, M=m, SPLIT=split,
                stride_qb=q.stride(0), stride_qn=q.stride(1), stride_kb=k.stride(0), stride_km=k.stride(1),
                stride_vb=v.stride(0), stride_vm=v.stride(1), stride_dob=grad_out.stride(0),
                stride_don=grad_out.stride(1), stride_dqb=dq.stride(0), stride_dqn=dq.stride(1),
                stride_ps=dkv.stride(0), stride_pb=dkv.stride(1), stride_pm=dkv.stride(2), stride_ds=ds.stride(0))
    constexprs = dict(H=num_heads, D=c // num_heads, M_PAD=_m_pad(m), EPS=NORM_EPS, PRECISION="ieee",
                      USE_DOT=q.dtype != torch.float32 or BACKWARD_FP32_DOT)
    return Launch((split, b * num_heads), args, constexprs)


# ----------------------------------------------------------------------------- host functions
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, num_heads: int) -> torch.Tensor:
    launch = forward_launch(q, k, v, scale, num_heads)
    _relu_attention_fwd[launch.grid](**launch.args, **launch.constexprs)
    return launch.args["Out"]


def _backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, grad_out: torch.Tensor,
              num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    launch = backward_launch(q, k, v, scale, grad_out, num_heads, _sm_count(q.device))
    _relu_attention_bwd[launch.grid](**launch.args, **launch.constexprs)
    c = q.shape[-1]
    dq, dkv_part, ds_part = launch.args["DQ"], launch.args["DKV"], launch.args["DS"]
    dkv = dkv_part.sum(0) if dkv_part.shape[0] > 1 else dkv_part[0]    # fixed-order sums: deterministic
    ds = ds_part.sum((0, 1))
    return dq, dkv[..., :c].to(k.dtype), dkv[..., c:].to(v.dtype), ds.reshape(scale.shape).to(scale.dtype)


class ReLUAttentionFunction(torch.autograd.Function):
    """Fused forward and backward; saves only its inputs (everything else is recomputed)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                num_heads: int) -> torch.Tensor:
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        scale_flat = scale.reshape(-1).contiguous()
        out = _forward(q, k, v, scale_flat, num_heads)
        ctx.save_for_backward(q, k, v, scale)
        ctx.num_heads = num_heads
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, scale = ctx.saved_tensors
        dq, dk, dv, ds = _backward(q, k, v, scale.reshape(-1).contiguous(), _last_dim_contiguous(grad_out),
                                   ctx.num_heads)
        return dq, dk, dv, ds.reshape(scale.shape), None


# ----------------------------------------------------------------------------- public API
def _triton_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                 num_heads: int) -> torch.Tensor:
    """The fused path on inputs already validated by :func:`_check`."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    reason = kernel_unsupported(q, k, num_heads)
    if reason:
        raise ValueError(reason)
    if q.shape[0] * q.shape[1] == 0 or k.shape[1] == 0:  # nothing to launch
        return relu_attention_reference(q, k, v, scale, num_heads)
    return ReLUAttentionFunction.apply(q, k, v, scale, num_heads)


def relu_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                          num_heads: int) -> torch.Tensor:
    """The fused Triton path (CUDA, or CPU under TRITON_INTERPRET=1 in fp32); differentiable."""
    _check(q, k, v, scale, num_heads)
    return _triton_path(q, k, v, scale, num_heads)


def relu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                   num_heads: int) -> torch.Tensor:
    """Dispatching entry point: the fused kernel when :func:`kernels.dispatch.use_kernel` says so
    (in ``auto``: CUDA, and a recorded measurement shows the kernel faster for this device class,
    dtype and pass), else the reference.

    In ``auto`` mode shapes or dtypes the kernel does not take (M > 32, D not in 16..128, fp64)
    quietly use the reference; in forced ``triton`` mode they raise ValueError.
    """
    _check(q, k, v, scale, num_heads)  # once per call: the kernel path below does not repeat it
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, scale))
    if use_kernel("relu_attention", q, k, v, scale, training=training) and \
            (current_mode() == "triton" or kernel_unsupported(q, k, num_heads) is None):
        return _triton_path(q, k, v, scale, num_heads)
    return relu_attention_reference(q, k, v, scale, num_heads)


__all__ = ["relu_attention", "relu_attention_reference", "relu_attention_triton", "ReLUAttentionFunction",
           "kernel_unsupported", "forward_launch", "backward_launch", "backward_split"]
