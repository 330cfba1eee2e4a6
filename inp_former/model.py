"""INP-Former: bottleneck, INP extractor and INP-guided decoder on a frozen encoder.

Shapes: B images, N = grid_h * grid_w patch tokens (row-major), C channels, M prototypes (INPs), H heads.
Behaviour follows the authors' implementation exactly (docs/behaviour.md); comments mark where it differs
from a textbook transformer.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from inp_former.config import ModelConfig
from inp_former.encoders.base import FrozenEncoder, state_mismatch
from inp_former.encoders.registry import build_encoder
from inp_former.errors import ConfigError
from kernels.relu_attention import relu_attention

LAYER_NORM_EPS = 1e-8  # the authors' value for every LayerNorm outside the encoder


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, applied per token."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CrossAttention(nn.Module):
    """Softmax cross-attention: queries from ``x`` (B, M, C), keys/values from ``y`` (B, N, C)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)   # first C rows give k, next C give v
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, m, c = x.shape
        n, h = y.shape[1], self.num_heads
        q = self.q(x).reshape(b, m, h, c // h).transpose(1, 2)                 # (B, H, M, D)
        k, v = self.kv(y).reshape(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4)   # (B, H, N, D) each
        out = F.scaled_dot_product_attention(q, k, v)                          # scale D^-0.5, softmax
        return self.proj(out.transpose(1, 2).reshape(b, m, c))


class INPExtractor(nn.Module):
    """Turns M learnable queries into the M INPs of each image by attending over its tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        # One norm for both the queries and the image tokens, as the authors have it.
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        queries = queries + self.attn(self.norm1(queries), self.norm1(tokens))
        return queries + self.mlp(self.norm2(queries))


class INPGuidedAttention(nn.Module):
    """ReLU attention of each token over the INPs: ReLU(s_h * cos(q_h, k_h)) @ v_h.

    No softmax and no row normalisation; cost is linear in N since M is tiny. The core runs
    through ``kernels.relu_attention`` (fused Triton on CUDA, reference elsewhere).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.ones(num_heads, 1, 1))  # learnable per-head scale s_h

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        kv = self.kv(prototypes)
        out = relu_attention(self.q(x), kv[..., :c], kv[..., c:], self.scale, self.num_heads)
        return self.proj(out)


class INPGuidedDecoderBlock(nn.Module):
    """Decoder block WITHOUT the attention residual: x = attn(x, INPs); x = x + mlp(norm2(x)).

    Dropping the residual stops the decoder from copying anomalous tokens through.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)  # normalises tokens and INPs alike
        self.attn = INPGuidedAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x), self.norm1(prototypes))
        return x + self.mlp(self.norm2(x))


@dataclass
class INPFormerOutput:
    encoder_groups: list[torch.Tensor]   # G tensors (B, N, C): mean of each encoder layer group
    decoder_groups: list[torch.Tensor]   # G tensors (B, N, C), paired with encoder_groups
    prototypes: torch.Tensor             # (B, M, C): the INPs of each image
    prototype_distance: torch.Tensor     # (B, N): 1 - cos to the nearest INP (L_c; zero-shot map)
    grid: tuple[int, int]                # (grid_h, grid_w) tokens


class INPFormer(nn.Module):
    """The trainable INP-Former on a frozen encoder.

    ``cfg`` is never changed; ``self.cfg`` is the config completed with the encoder's own choices
    (a CNN's default stages, for example), the one to save with the weights. A prebuilt ``encoder``
    (shared by several models) must be the one ``cfg`` describes, completed.
    """

    def __init__(self, cfg: ModelConfig, encoder: FrozenEncoder | None = None, init_weights: bool = True) -> None:
        """``init_weights=False`` leaves the trainable weights uninitialised (``torch.empty``), for a
        caller that loads them next (a checkpoint): initialising them costs seconds on a CPU."""
        super().__init__()
        if encoder is None:
            encoder, cfg = build_encoder(cfg)
        # each group of encoder layers is paired with the decoder layers of the same indices, counted
        # from the last (the authors' order): the decoder needs at least as many layers
        needed = 1 + max(i for group in encoder.groups for i in group)
        if cfg.decoder_depth < needed:
            raise ConfigError(f"decoder_depth {cfg.decoder_depth}: this encoder's layer groups {encoder.groups} "
                              f"pair with {needed} decoder layers; give at least {needed}", arg="decoder_depth")
        self.cfg = cfg
        self.encoder = encoder
        dim, heads = self.encoder.embed_dim, self.encoder.num_heads
        # meta tensors: no memory and no initialisation until to_empty below
        with contextlib.nullcontext() if init_weights else torch.device("meta"):
            self.prototypes = nn.Parameter(torch.randn(cfg.num_prototypes, dim))  # N(0, 1) init
            self.bottleneck = Mlp(dim, int(dim * cfg.mlp_ratio))
            self.extractor = INPExtractor(dim, heads, cfg.mlp_ratio)
            self.decoder = nn.ModuleList(
                INPGuidedDecoderBlock(dim, heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth))
        trainable = (self.bottleneck, self.extractor, self.decoder)
        if init_weights:
            for part in trainable:
                part.apply(_init_weights)  # not self.apply: that would overwrite the encoder
        else:
            for part in trainable:
                part.to_empty(device="cpu")
            self.prototypes = nn.Parameter(torch.empty(cfg.num_prototypes, dim))

    # The encoder is frozen and loaded from its own weights: checkpoints hold only the rest.
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        problem = state_mismatch(self.trainable_state_dict(), state)
        if problem:
            raise ValueError(f"the weights do not fit this model ({problem})")
        self.load_state_dict(state, strict=False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]

    def forward(self, images: torch.Tensor) -> INPFormerOutput:
        layers = self.encoder(images)                      # L tensors (B, N, C), no grad
        grid = self.encoder.grid_size(tuple(images.shape[-2:]))
        fused = torch.stack(layers).mean(0)                # (B, N, C)
        b = fused.shape[0]
        prototypes = self.extractor(self.prototypes.unsqueeze(0).expand(b, -1, -1), fused)
        distance = prototype_distance(fused, prototypes)
        x = self.bottleneck(fused)
        decoded = []
        for block in self.decoder:
            x = block(x, prototypes)                       # every block sees the same INPs
            decoded.append(x)
        decoded = decoded[::-1]                            # the authors pair groups in reverse
        groups = self.encoder.groups
        enc = [torch.stack([layers[i] for i in g]).mean(0) for g in groups]
        dec = [torch.stack([decoded[i] for i in g]).mean(0) for g in groups]
        return INPFormerOutput(enc, dec, prototypes, distance, grid)


def prototype_distance(tokens: torch.Tensor, prototypes: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per token, 1 - cosine similarity to the nearest prototype: (B, N, C), (B, M, C) -> (B, N).

    A matrix product of normalised vectors instead of broadcasting (B, N, M, C) as the
    authors do: same values, M*C times less memory.
    """
    t = tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(eps)
    p = prototypes / prototypes.norm(dim=-1, keepdim=True).clamp_min(eps)
    return 1.0 - (t @ p.transpose(1, 2)).amax(dim=-1)


@torch.no_grad()
def truncated_normal_(tensor: torch.Tensor, std: float, bound: float) -> torch.Tensor:
    """N(0, std) truncated to [-bound, bound], in place: draw, then redraw only what fell outside.

    The distribution of ``nn.init.trunc_normal_``; torch's own (2.14) redraws the whole tensor for
    every round of rejections, several times the cost on a CPU for a 3-sigma bound."""
    flat = tensor.view(-1).normal_(0.0, std)
    outside = (flat.abs() > bound).nonzero().squeeze(1)   # about 0.3% at 3 sigma
    while outside.numel():
        redrawn = torch.empty(outside.numel(), dtype=tensor.dtype, device=tensor.device).normal_(0.0, std)
        flat[outside] = redrawn
        outside = outside[redrawn.abs() > bound]
    return tensor


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        truncated_normal_(module.weight, std=0.01, bound=0.03)   # the authors' trunc_normal(0.01, -0.03, 0.03)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
