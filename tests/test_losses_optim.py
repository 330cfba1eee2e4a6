"""Losses, StableAdamW and the learning-rate schedule against direct computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inp_former.losses import coherence_loss, soft_mining_loss
from inp_former.optim import StableAdamW, WarmCosineSchedule


def _unweighted_loss(enc, dec):
    return sum((1 - F.cosine_similarity(e.flatten(1), d.flatten(1))).mean() for e, d in zip(enc, dec)) / len(enc)


def test_soft_mining_changes_gradient_by_exactly_w_and_not_the_value():
    g = torch.Generator().manual_seed(0)
    enc = [torch.randn(3, 20, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    dec = [torch.randn(3, 20, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    weighted = soft_mining_loss(enc, dec, gamma=3.0)
    plain = _unweighted_loss(enc, dec)
    torch.testing.assert_close(weighted, plain)
    g_weighted = torch.autograd.grad(weighted, dec)
    g_plain = torch.autograd.grad(_unweighted_loss(enc, dec), dec)
    for e, d, gw, gp in zip(enc, dec, g_weighted, g_plain):
        dist = 1 - F.cosine_similarity(e, d.detach(), dim=-1)
        w = (dist / dist.mean()) ** 3
        torch.testing.assert_close(gw, gp * w.unsqueeze(-1))


def test_soft_mining_does_not_backprop_into_the_encoder():
    enc = [torch.randn(2, 5, 4, requires_grad=True)]
    dec = [torch.randn(2, 5, 4, requires_grad=True)]
    soft_mining_loss(enc, dec).backward()
    assert enc[0].grad is None and dec[0].grad is not None


def test_coherence_loss_is_mean_distance():
    d = torch.rand(4, 7)
    assert torch.isclose(coherence_loss(d), d.mean())


def test_stable_adamw_matches_a_manual_step():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    start = p.detach().clone()
    grads = [torch.randn(5, 3, dtype=torch.float64) * s for s in (1.0, 30.0)]
    opt = StableAdamW([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-10, weight_decay=1e-4, amsgrad=True)
    ref = start.clone()
    m = torch.zeros_like(ref); v = torch.zeros_like(ref); vmax = torch.zeros_like(ref)
    for step, grad in enumerate(grads, start=1):
        p.grad = grad.clone()
        opt.step()
        ref = ref * (1 - 1e-2 * 1e-4)
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        vmax = torch.maximum(vmax, v)
        denom = vmax.sqrt() / math.sqrt(1 - 0.999 ** step) + 1e-10
        rms = (grad / denom).pow(2).mean().sqrt().item()
        ref = ref - (1e-2 / (1 - 0.9 ** step)) / max(1.0, rms) * m / denom
        torch.testing.assert_close(p.detach(), ref)


def _plain_stable_adamw_step(params: list, states: list, lr: float, betas: tuple, eps: float, weight_decay: float,
                             amsgrad: bool) -> None:
    """StableAdamW's step written plainly, one parameter at a time with fresh temporaries."""
    beta1, beta2 = betas
    for p, state in zip(params, states):
        grad = p.grad
        if not state:
            state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p), vmax=torch.zeros_like(p))
        p.mul_(1 - lr * weight_decay)
        state["step"] += 1
        state["m"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["v"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        second = state["v"]
        if amsgrad:
            state["vmax"] = torch.maximum(state["vmax"], state["v"])
            second = state["vmax"]
        denom = (second.sqrt() / math.sqrt(1 - beta2 ** state["step"])).add_(eps)
        rms = (grad / denom).pow(2).mean().sqrt().clamp_min(1.0)
        p.add_(state["m"] / denom / rms, alpha=-(lr / (1 - beta1 ** state["step"])))


@pytest.mark.parametrize("amsgrad", [True, False])
def test_stable_adamw_with_scratch_buffers_is_the_plain_step_bit_for_bit(amsgrad):
    """Parameters of odd shapes (the largest sets the buffers), one of float64 (its own buffers),
    one without a gradient, a gradient spike: the weights equal the plain step's exactly."""
    torch.manual_seed(0)
    shapes = [(37, 5), (3,), (64, 48), (1,), (7, 1, 3)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes] + [torch.nn.Parameter(torch.randn(9, 2).double())]
    plain = [p.detach().clone() for p in ours]
    settings = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-10, weight_decay=1e-4, amsgrad=amsgrad)
    optimizer, states = StableAdamW(ours, **settings), [{} for _ in plain]
    for step in range(6):
        for index, (p, q) in enumerate(zip(ours, plain)):
            grad = None if index == 1 and step == 3 else torch.randn_like(p) * (30.0 if step == 2 else 1.0)
            p.grad, q.grad = grad, None if grad is None else grad.clone()
        optimizer.step()
        with torch.no_grad():
            live = [(q, state) for q, state in zip(plain, states) if q.grad is not None]
            _plain_stable_adamw_step([q for q, _ in live], [s for _, s in live], **settings)
        for p, q in zip(ours, plain):
            assert torch.equal(p.detach(), q), (step, tuple(p.shape))


def test_warm_cosine_schedule_is_the_authors_table():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = WarmCosineSchedule(opt, base=1e-3, final=1e-4, total_iters=300, warmup=100)
    lrs = []
    for _ in range(305):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warm = np.linspace(0, 1e-3, 100)
    steps = np.arange(200)
    cosine = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + np.cos(np.pi * steps / 200))
    np.testing.assert_allclose(lrs[:300], np.concatenate([warm, cosine]), rtol=1e-12, atol=0)
    assert lrs[0] == 0.0 and lrs[300:] == [1e-4] * 5
