"""The fused INP-guided ReLU attention against a float64 reference: forward and every gradient.

On CPU the Triton kernels run in the interpreter (fp32); on a GPU also fp16 and bf16, with the
rule |kernel - ref64| <= 2 |torch_lowprec - ref64| + atol.
"""
import pytest
import torch

from kernels.dispatch import kernel_mode
from kernels.relu_attention import relu_attention, relu_attention_reference, relu_attention_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(b, n, m, c, h, dtype=torch.float32, seed=0, kv_view=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, c, generator=g)
    if kv_view:  # k and v as column slices of one (B, M, 2C) tensor, as the model's kv Linear gives them
        kv = torch.randn(b, m, 2 * c, generator=g)
        k, v = kv[..., :c], kv[..., c:]
    else:
        k, v = torch.randn(b, m, c, generator=g), torch.randn(b, m, c, generator=g)
    scale = torch.randn(h, 1, 1, generator=g) * 2  # mixed signs: ReLU cuts some heads entirely
    grad = torch.randn(b, n, c, generator=g)
    return [t.to(DEVICE, dtype) for t in (q, k, v, scale, grad)]


def forward_backward(fn, q, k, v, scale, grad, h):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, scale)]
    out = fn(*leaves, h)
    grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    return out.detach(), grads


SHAPES = [  # (B, N, M, C, H): N not a block multiple, M from 1 to 32, head sizes 16..64
    (2, 37, 6, 128, 2),
    (1, 1, 1, 64, 4),
    (3, 130, 16, 96, 3),
    (1, 50, 2, 384, 6),
    (2, 17, 32, 64, 1),
    (1, 70, 5, 768, 12),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kv_view", [False, True])
def test_fp32_matches_float64_reference(shape, kv_view):
    b, n, m, c, h = shape
    q, k, v, scale, grad = make_inputs(b, n, m, c, h, seed=hash((shape, kv_view)) % 2**31, kv_view=kv_view)
    out, grads = forward_backward(relu_attention_triton, q, k, v, scale, grad, h)
    ref, ref_grads = forward_backward(relu_attention_reference, *(t.double() for t in (q, k, v, scale, grad)), h)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for name, got, want in zip("qkvs", grads, ref_grads):
        tol = 1e-4 * max(1.0, want.abs().max().item())  # sums over N for k, v and s
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=tol, msg=f"d{name}")


def test_zero_query_rows_follow_f_normalize():
    q, k, v, scale, grad = make_inputs(1, 20, 3, 64, 2, seed=7)
    q[0, 3] = 0  # normalize(0) = 0: no attention, and a finite gradient
    out, grads = forward_backward(relu_attention_triton, q, k, v, scale, grad, 2)
    ref, ref_grads = forward_backward(relu_attention_reference, *(t.double() for t in (q, k, v, scale, grad)), 2)
    assert torch.isfinite(grads[0]).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0].double(), ref_grads[0], rtol=1e-4, atol=1e-4)


def test_dispatch_uses_reference_on_cpu_and_kernel_when_forced(monkeypatch):
    calls = []
    import kernels.relu_attention as module

    monkeypatch.setattr(module, "relu_attention_triton", lambda *a: calls.append("triton") or relu_attention_reference(*a))
    q, k, v, scale, _ = make_inputs(1, 9, 2, 32, 2)
    with kernel_mode("reference"):
        relu_attention(q, k, v, scale, 2)
    assert calls == []
    with kernel_mode("triton"):
        relu_attention(q, k, v, scale, 2)
    assert calls == ["triton"]
    if DEVICE == "cpu":
        calls.clear()
        relu_attention(q, k, v, scale, 2)  # auto on CPU tensors -> reference
        assert calls == []


def test_bad_shapes_are_refused():
    q, k, v, scale, _ = make_inputs(1, 9, 2, 32, 2)
    with pytest.raises(ValueError, match="divisible"):
        relu_attention(q, k, v, scale, 3)
    with pytest.raises(ValueError, match="k and v"):
        relu_attention(q, k, v[:, :1], scale, 2)
    with pytest.raises(ValueError, match="scale"):
        relu_attention(q, k, v, scale[:1], 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 784, 6, 768, 12), (2, 37, 6, 128, 2), (2, 130, 16, 96, 3), (1, 61, 32, 1024, 16)])
def test_low_precision_on_gpu(dtype, shape):
    b, n, m, c, h = shape
    q, k, v, scale, grad = make_inputs(b, n, m, c, h, seed=3)
    low = [t.to(dtype) for t in (q, k, v)] + [scale, grad.to(dtype)]
    out, grads = forward_backward(relu_attention_triton, *low, h)
    torch_out, torch_grads = forward_backward(relu_attention_reference, *low, h)
    ref, ref_grads = forward_backward(relu_attention_reference, *(t.double() for t in low), h)
    atol = {torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    for got, torch_low, want in zip([out, *grads], [torch_out, *torch_grads], [ref, *ref_grads]):
        err = (got.double() - want).abs()
        bound = 2 * (torch_low.double() - want).abs() + atol * max(1.0, want.abs().max().item())
        assert (err <= bound).all(), f"max excess {(err - bound).max().item()}"
