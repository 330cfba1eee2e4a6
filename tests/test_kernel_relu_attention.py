"""The fused INP-guided ReLU attention against a float64 reference: forward and every gradient.

On CPU the Triton kernels run in Triton's interpreter (fp32, set up by conftest.py); on a GPU also
fp16 and bf16, with the rule |kernel - ref64| <= 2 |torch_lowprec - ref64| + atol, elementwise.

Inputs are drawn fresh per test and kept away from the ReLU kink (|cos| >= MARGIN for every
token, head and prototype): where a logit is within rounding of 0, fp32/bf16 and float64 may
gate it differently and the gradient jumps by a whole dout . v term, which no tolerance covers.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kernels.relu_attention as module
from kernels.dispatch import device_class, kernel_mode
from kernels.evidence import kernel_is_faster
from kernels.relu_attention import relu_attention, relu_attention_reference, relu_attention_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MARGIN = 0.01  # in cosine units: far above fp16/bf16 rounding of a logit (~1e-3 relative)
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def generator(request: pytest.FixtureRequest) -> torch.Generator:
    """A fresh generator per test, seeded from the test's file and name (reproducible, different per
    case, and the same whichever directory pytest takes as its root)."""
    return torch.Generator().manual_seed(zlib.crc32(f"{Path(__file__).name}::{request.node.name}".encode()))


def away_from_relu_kink(q: torch.Tensor, k: torch.Tensor, heads: int, gen: torch.Generator,
                        dtype: torch.dtype) -> torch.Tensor:
    """Redraw the per-head slices of q whose cosine with some key (after rounding to dtype) is
    within MARGIN of 0."""
    b, n, c = q.shape
    d = c // heads
    k_hat = F.normalize(k.to(dtype).double().reshape(b, -1, heads, d), dim=-1)
    q = q.reshape(b, n, heads, d).clone()
    for _ in range(200):
        cos = torch.einsum("bnhd,bmhd->bnhm", F.normalize(q.to(dtype).double(), dim=-1), k_hat)
        bad = (cos.abs() < MARGIN).any(-1)
        if not bad.any():
            return q.reshape(b, n, c)
        q[bad] = torch.randn(q[bad].shape, generator=gen)
    raise RuntimeError("could not draw q away from the ReLU kink")


def make_inputs(gen: torch.Generator, b: int, n: int, m: int, c: int, h: int, dtype: torch.dtype = torch.float32,
                kv_view: bool = False, q_view: bool = False):
    """q, k, v, scale (H, 1, 1) with mixed signs, and an upstream gradient; on DEVICE in dtype
    (scale stays fp32, as the model's parameter does under autocast)."""
    k_v = torch.randn(b, m, 2 * c, generator=gen)
    q = away_from_relu_kink(torch.randn(b, n, c, generator=gen), k_v[..., :c], h, gen, dtype)
    # mixed signs: s > 0 keeps the keys with cos > 0, s < 0 those with cos < 0; |s| >= 0.5 keeps the margin
    signs = torch.where(torch.arange(h) % 2 == 0, 1.0, -1.0)
    scale = (signs * (0.5 + 1.5 * torch.rand(h, generator=gen))).reshape(h, 1, 1)
    grad = torch.randn(b, n, c, generator=gen)
    q, k_v, grad = (t.to(DEVICE, dtype) for t in (q, k_v, grad))
    if kv_view:  # k and v as column slices of one (B, M, 2C) tensor, as the model's kv Linear gives them
        k, v = k_v[..., :c], k_v[..., c:]
    else:
        k, v = k_v[..., :c].contiguous(), k_v[..., c:].contiguous()
    if q_view:  # q as a slice of a wider projection: row stride 3C
        wide = torch.zeros(b, n, 3 * c, device=DEVICE, dtype=dtype)
        wide[..., c:2 * c] = q
        q = wide[..., c:2 * c]
    return q, k, v, scale.to(DEVICE), grad


def forward_backward(fn, q, k, v, scale, grad, heads):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, scale)]
    out = fn(*leaves, heads)
    grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    return out.detach(), grads


def float64_reference(q, k, v, scale, grad, heads):
    return forward_backward(relu_attention_reference, *(t.double() for t in (q, k, v, scale, grad)), heads)


def assert_matches_float64(got, got_grads, want, want_grads, rtol=1e-5, grad_rtol=2e-5):
    """fp32 against float64: errors relative to each tensor's largest entry (dk, dv, ds sum over N)."""
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * max(1.0, want.abs().max().item()))
    for name, g, w in zip(("dq", "dk", "dv", "dscale"), got_grads, want_grads):
        assert g.shape == w.shape and g.dtype == torch.float32, name
        torch.testing.assert_close(g.double(), w, rtol=grad_rtol, atol=grad_rtol * max(1e-3, w.abs().max().item()),
                                   msg=lambda m, name=name: f"{name}: {m}")


# (B, N, M, C, H, kv_view, q_view): N in {1, 37, 130} (never a block multiple: 37 is two blocks of
# the interpreter's 32 rows, 130 five), M from 1 to 32, H in {1, 2, 3, 12}, D in {16, 32, 64, 128},
# B in {1, 2}. The interpreter runs every program in Python (the fp32 backward loops over M), so
# each case is the smallest that still reaches its branch.
CPU_CASES = [
    (1, 37, 6, 768, 12, True, False),     # the model's head layout (D=64), kv as slices of one tensor
    (1, 1, 1, 48, 3, False, False),       # one token, one prototype, D=16
    (2, 37, 16, 96, 3, False, True),      # D=32, M=16, q with row stride 3C (and batch stride 3NC)
    (1, 130, 2, 64, 1, True, False),      # one head, five token blocks
    (1, 37, 32, 48, 3, False, False),     # M=32 (the largest), D=16
    (2, 1, 6, 384, 12, True, True),       # N=1 with 12 heads
    (1, 37, 5, 256, 2, False, False),     # D=128
]


CASE_ID = "B{}-N{}-M{}-C{}-H{}-kvview{}-qview{}".format


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: CASE_ID(*c))
def test_fp32_forward_and_gradients_match_float64(request, case):
    b, n, m, c, h, kv_view, q_view = case
    q, k, v, scale, grad = make_inputs(generator(request), b, n, m, c, h, kv_view=kv_view, q_view=q_view)
    out, grads = forward_backward(relu_attention_triton, q, k, v, scale, grad, h)
    ref, ref_grads = float64_reference(q, k, v, scale, grad, h)
    assert out.shape == (b, n, c) and out.dtype == q.dtype
    assert_matches_float64(out, grads, ref, ref_grads)


@pytest.mark.parametrize("case", CPU_CASES[::2], ids=lambda c: CASE_ID(*c))
def test_fp32_backward_through_tl_dot(request, case, monkeypatch):
    """The tl.dot backward that fp16/bf16 take on the GPU, run in fp32 (the interpreter has no bf16)."""
    monkeypatch.setattr(module, "BACKWARD_FP32_DOT", True)
    b, n, m, c, h, kv_view, q_view = case
    q, k, v, scale, grad = make_inputs(generator(request), b, n, m, c, h, kv_view=kv_view, q_view=q_view)
    out, grads = forward_backward(relu_attention_triton, q, k, v, scale, grad, h)
    assert_matches_float64(out, grads, *float64_reference(q, k, v, scale, grad, h))


def test_zero_rows_follow_f_normalize(request):
    """normalize(0) = 0 (eps clamp): zero queries/keys give zero attention and finite gradients."""
    q, k, v, scale, grad = make_inputs(generator(request), 2, 40, 4, 64, 2)
    q[0, 3] = 0
    q[1, 7, :32] = 0   # only head 0 of that token
    k[1, 2, 32:] = 0   # one key of head 1
    out, grads = forward_backward(relu_attention_triton, q, k, v, scale, grad, 2)
    ref, ref_grads = float64_reference(q, k, v, scale, grad, 2)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (out[0, 3] == 0).all()
    assert_matches_float64(out, grads, ref, ref_grads)


def test_scale_shape_grad_out_strides_and_no_grad(request):
    """scale as (H,) works too; a broadcast (stride-0) upstream gradient; inference under no_grad."""
    q, k, v, scale, _ = make_inputs(generator(request), 2, 37, 6, 128, 2, kv_view=True)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, scale.reshape(-1))]
    relu_attention_triton(*leaves, 2).sum().backward()  # grad_out = ones expanded, all strides 0
    ref = [t.detach().double().requires_grad_() for t in leaves]
    relu_attention_reference(*ref, 2).sum().backward()
    for got, want in zip(leaves, ref):
        assert got.grad.shape == got.shape
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=2e-5, atol=2e-5 * want.grad.abs().max().item())
    with torch.no_grad():
        out = relu_attention_triton(q, k, v, scale, 2)
    assert not out.requires_grad
    torch.testing.assert_close(out.double(), relu_attention_reference(*(t.double() for t in (q, k, v, scale)), 2),
                               rtol=1e-5, atol=1e-5)


def test_backward_is_deterministic(request):
    """Partial sums are added in a fixed order (no atomics): two backward passes agree bit for bit
    (five token blocks a program: what the order is about; one image is enough for that)."""
    q, k, v, scale, grad = make_inputs(generator(request), 1, 130, 6, 128, 2)
    first = forward_backward(relu_attention_triton, q, k, v, scale, grad, 2)[1]
    second = forward_backward(relu_attention_triton, q, k, v, scale, grad, 2)[1]
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_dispatch(request, monkeypatch):
    """auto uses the reference on CPU tensors; kernel_mode('triton') runs the kernel; reference forces it off."""
    calls: list[str] = []
    real = module._triton_path
    monkeypatch.setattr(module, "_triton_path", lambda *a: calls.append("triton") or real(*a))
    q, k, v, scale, _ = make_inputs(generator(request), 1, 9, 2, 32, 2)
    expected = relu_attention_reference(q, k, v, scale, 2)
    with kernel_mode("reference"):
        relu_attention(q, k, v, scale, 2)
    assert calls == []
    # auto: the reference on CPU; on CUDA the kernel only where kernels.evidence records it faster
    expect_kernel = DEVICE == "cuda" and kernel_is_faster("relu_attention", device_class(q.device), q.dtype)
    with torch.no_grad():
        out = relu_attention(q, k, v, scale, 2)
    assert calls == (["triton"] if expect_kernel else [])
    if not expect_kernel:
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    calls.clear()
    with kernel_mode("triton"):
        torch.testing.assert_close(relu_attention(q, k, v, scale, 2), expected, rtol=1e-5, atol=1e-6)
    assert calls == ["triton"]


def test_launch_specs():
    """What the host functions launch (and the compile report compiles): the strides of column-slice
    views passed as they are, buffers sized by the backward split, the split from the SM count."""
    assert module.backward_split(784, 16 * 12, 132) == 3   # ~4 programs per SM of an H100
    assert module.backward_split(784, 12, 132) == 13       # batch 1: at least 64 tokens a program
    assert module.backward_split(40, 12, 132) == 1
    q = torch.empty(2, 5, 64, device="meta", dtype=torch.bfloat16)
    kv = torch.empty(2, 3, 128, device="meta", dtype=torch.bfloat16)
    k, v, scale = kv[..., :64], kv[..., 64:], torch.empty(4, device="meta")
    fwd = module.forward_launch(q, k, v, scale, 4)
    assert fwd.grid({"BLOCK_N": 32}) == (1, 8)
    assert (fwd.args["stride_kb"], fwd.args["stride_km"], fwd.args["stride_vm"]) == (3 * 128, 128, 128)
    assert fwd.args["Out"].shape == q.shape and fwd.constexprs == dict(H=4, D=16, M_PAD=16, EPS=module.NORM_EPS,
                                                                        PRECISION="ieee")
    bwd = module.backward_launch(q, k, v, scale, torch.empty_like(q), 4, sm_count=1)
    split = module.backward_split(5, 8, 1)
    assert bwd.grid == (split, 8) and bwd.args["SPLIT"] == split
    assert bwd.args["DKV"].shape == (split, 2, 3, 128) and bwd.args["DS"].shape == (split, 2, 4)
    assert bwd.constexprs["USE_DOT"] and not module.backward_launch(
        q.float(), k.float(), v.float(), scale, q.float(), 4, 1).constexprs["USE_DOT"]


def test_unsupported_shapes_fall_back_in_auto_and_raise_when_forced(request):
    q, k, v, scale, _ = make_inputs(generator(request), 1, 5, 33, 64, 2)  # M = 33 > 32
    with kernel_mode("auto"):
        relu_attention(q, k, v, scale, 2)  # CPU, or CUDA falling back: the reference, no error
    with kernel_mode("triton"), pytest.raises(ValueError, match="prototypes"):
        relu_attention(q, k, v, scale, 2)
    q, k, v, scale, _ = make_inputs(generator(request), 1, 5, 3, 72, 3)  # D = 24
    with kernel_mode("triton"), pytest.raises(ValueError, match="head size"):
        relu_attention(q, k, v, scale, 3)


def test_bad_shapes_are_refused(request):
    q, k, v, scale, _ = make_inputs(generator(request), 1, 9, 2, 32, 2)
    with pytest.raises(ValueError, match="divisible"):
        relu_attention(q, k, v, scale, 3)
    with pytest.raises(ValueError, match="k and v"):
        relu_attention(q, k, v[:, :1], scale, 2)
    with pytest.raises(ValueError, match="k and v"):
        relu_attention(q, k[..., :16], v[..., :16], scale, 2)
    with pytest.raises(ValueError, match="scale"):
        relu_attention(q, k, v, scale[:1], 2)
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        relu_attention(q[0], k, v, scale, 2)


# ----------------------------------------------------------------------------- GPU
GPU_SHAPES = [  # (B, N, M, C, H)
    (3, 784, 6, 768, 12),   # the model at 224 px
    (2, 37, 6, 128, 2),
    (2, 130, 16, 96, 3),
    (1, 61, 32, 1024, 16),
    (2, 100, 1, 192, 12),
    (1, 50, 3, 256, 2),     # D=128
]
ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}  # x max |ref| of each tensor


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "B{}-N{}-M{}-C{}-H{}".format(*s))
def test_gpu_matches_float64_within_twice_torch_error(request, dtype, shape):
    b, n, m, c, h = shape
    q, k, v, scale, grad = make_inputs(generator(request), b, n, m, c, h, dtype=dtype, kv_view=True)
    out, grads = forward_backward(relu_attention_triton, q, k, v, scale, grad, h)
    torch_out, torch_grads = forward_backward(relu_attention_reference, q, k, v, scale, grad, h)
    ref, ref_grads = float64_reference(q, k, v, scale, grad, h)
    assert out.dtype == dtype and [g.dtype for g in grads] == [dtype, dtype, dtype, torch.float32]
    for name, got, low, want in zip(("out", "dq", "dk", "dv", "dscale"), [out, *grads],
                                    [torch_out, *torch_grads], [ref, *ref_grads]):
        err = (got.double() - want).abs()
        bound = 2 * (low.double() - want).abs() + ATOL[dtype] * want.abs().max().item()
        excess = (err - bound).max().item()
        assert excess <= 0, f"{name}: exceeds 2 |torch - ref64| + atol by {excess:.3g} (max err {err.max().item():.3g})"


@requires_cuda
def test_gpu_model_layout_and_determinism(request):
    """The model's call (kv Linear output sliced) through the dispatcher, twice: identical grads."""
    q, k, v, scale, grad = make_inputs(generator(request), 4, 784, 6, 768, 12, dtype=torch.bfloat16, kv_view=True)
    with kernel_mode("triton"):  # auto may pick the reference for bf16 (kernels.evidence)
        first = forward_backward(relu_attention, q, k, v, scale, grad, 12)
        second = forward_backward(relu_attention, q, k, v, scale, grad, 12)
    for a, b in zip([first[0], *first[1]], [second[0], *second[1]]):
        assert torch.equal(a, b)
