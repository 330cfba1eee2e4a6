"""INP coherence loss and soft mining loss (docs/behaviour.md, 'Losses')."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F


def coherence_loss(prototype_distance: torch.Tensor) -> torch.Tensor:
    """L_c: mean over tokens and images of the distance to the nearest INP, (B, N) -> scalar."""
    return prototype_distance.mean()


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``weight`` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        return grad * weight, None


def scale_grad(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _ScaleGrad.apply(x, weight)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all elements, across all processes under torch.distributed (the global batch)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x.mean()
    total = torch.stack([x.sum(), x.new_tensor(float(x.numel()))])
    dist.all_reduce(total)
    return total[0] / total[1]


def soft_mining_loss(encoder_groups: Sequence[torch.Tensor], decoder_groups: Sequence[torch.Tensor],
                     gamma: float = 3.0) -> torch.Tensor:
    """L_sm, averaged over groups; tensors are (B, N, C) token maps.

    The value is the mean over images of 1 - cos(flatten(enc_i), flatten(dec_i)); the gradient
    reaching the decoder is multiplied per token by w = (d / mean d)^gamma, d the per-token
    cosine distance, so hard (poorly reconstructed) regions weigh more. w changes gradients
    only, never the value.
    """
    total = encoder_groups[0].new_zeros(())
    for enc, dec in zip(encoder_groups, decoder_groups):
        enc = enc.detach()
        with torch.no_grad():
            d = 1.0 - F.cosine_similarity(enc, dec, dim=-1)            # (B, N)
            weight = (d / global_mean(d)).pow(gamma).unsqueeze(-1)    # mean over batch and positions
        dec = scale_grad(dec, weight.to(dec.dtype))
        total = total + (1.0 - F.cosine_similarity(enc.flatten(1), dec.flatten(1), dim=-1)).mean()
    return total / len(encoder_groups)
