"""INP-guided ReLU attention (reference only; the Triton kernel is being written)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def relu_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                             num_heads: int) -> torch.Tensor:
    b, n, c = q.shape
    m, h = k.shape[1], num_heads
    qh = F.normalize(q.reshape(b, n, h, c // h).transpose(1, 2), dim=-1)
    kh = F.normalize(k.reshape(b, m, h, c // h).transpose(1, 2), dim=-1)
    vh = v.reshape(b, m, h, c // h).transpose(1, 2)
    attn = F.relu((qh @ kh.transpose(-2, -1)) * scale.reshape(1, h, 1, 1))
    return (attn @ vh).transpose(1, 2).reshape(b, n, c)


def relu_attention(q, k, v, scale, num_heads):
    return relu_attention_reference(q, k, v, scale, num_heads)
