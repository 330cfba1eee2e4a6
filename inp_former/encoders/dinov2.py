"""The paper's encoder: DINOv2 with 4 registers from timm, run the way the authors run Meta's code.

Its position embeddings are resampled the way Meta's code does it (bicubic with
``scale_factor=(grid + 0.1) / 37``, no antialias), not timm's way, because a model trained with
one gives different maps with the other (docs/behaviour.md).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inp_former.encoders.base import (RANDOM_SOURCE, FrozenEncoder, in_hf_cache, read_state_dict, state_mismatch,
                                      weights_reachable)
from inp_former.errors import ConfigError, EncoderWeightsError

DINOV2_VARIANTS = {
    # name: (timm model name, layers whose raw outputs are taken)
    "small": ("vit_small_patch14_reg4_dinov2", tuple(range(2, 10))),
    "base": ("vit_base_patch14_reg4_dinov2", tuple(range(2, 10))),
    "large": ("vit_large_patch14_reg4_dinov2", tuple(range(4, 19, 2))),
}
DINOV2_PRETRAINED_TAG = "lvd142m"
DINOV2_GRID = 37  # the checkpoints' position-embedding grid (518 px / 14)


def meta_dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert Meta's ``dinov2_vit*14_reg4_pretrain.pth`` naming to timm's.

    Meta adds pos_embed[0] to the CLS token at every forward; timm's reg4 models have no CLS
    position entry, so the CLS entry is folded into the CLS token (exactly equivalent, since
    Meta's resampling keeps the CLS entry unchanged).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "mask_token":
            continue  # only used for Meta's masked pre-training
        if key == "register_tokens":
            key = "reg_token"
        out[key] = value
    pos = out.get("pos_embed")
    if pos is not None and pos.shape[1] == 1 + DINOV2_GRID * DINOV2_GRID:
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out


class DinoV2Encoder(FrozenEncoder):
    """timm's DINOv2-with-registers ViT run the way the authors run Meta's implementation."""

    patch_size = 14
    num_registers = 4

    def __init__(self, variant: str = "base", weights: str = "pretrained") -> None:
        super().__init__()
        import timm

        if variant not in DINOV2_VARIANTS:
            raise ConfigError(f"encoder {variant!r}: expected one of {', '.join(DINOV2_VARIANTS)}", arg="encoder")
        timm_name, self.layers = DINOV2_VARIANTS[variant]
        self.name = variant
        # timm's initialisation draws truncated normals for every weight (seconds on a CPU), which
        # loaded weights then overwrite: skipped. A random encoder is drawn by init_random_vit instead,
        # the same at train and eval time: fixed seed, own RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.vit = timm.create_model(timm_name, pretrained=False, num_classes=0, weight_init="skip")
            if weights == "random":
                init_random_vit(self.vit)
        self.embed_dim = self.vit.embed_dim
        self.num_heads = self.vit.blocks[0].attn.num_heads
        self.groups = (tuple(range(0, 4)), tuple(range(4, 8)))
        self.weights_source = load_dinov2_weights(self.vit, timm_name, weights)
        # Blocks after the last used layer are never run: drop them to save memory.
        self.vit.blocks = self.vit.blocks[: self.layers[-1] + 1]
        self.freeze()

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Patch position embeddings (1, grid_h*grid_w, C), resampled as Meta's DINOv2 does."""
        pos = self.vit.pos_embed
        if (grid_h, grid_w) == (DINOV2_GRID, DINOV2_GRID):
            return pos
        dim = pos.shape[-1]
        grid = pos.float().reshape(1, DINOV2_GRID, DINOV2_GRID, dim).permute(0, 3, 1, 2)
        # Meta: scale_factor = (grid + 0.1) / 37, bicubic, antialias off (the +0.1 avoids
        # floating-point rounding to one row short).
        grid = F.interpolate(grid, mode="bicubic", antialias=False,
                             scale_factor=((grid_h + 0.1) / DINOV2_GRID, (grid_w + 0.1) / DINOV2_GRID))
        assert grid.shape[-2:] == (grid_h, grid_w)
        return grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim).to(pos.dtype)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = images.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        with torch.no_grad():
            x = self.vit.patch_embed.proj(images).flatten(2).transpose(1, 2)  # (B, N, C)
            x = x + self.position_embedding(gh, gw).to(x.dtype)
            prefix = torch.cat([self.vit.cls_token, self.vit.reg_token], dim=1).expand(b, -1, -1)
            x = torch.cat([prefix.to(x.dtype), x], dim=1)
            outputs = []
            skip = 1 + self.num_registers
            for index, block in enumerate(self.vit.blocks):
                x = block(x)
                if index in self.layers:
                    outputs.append(x[:, skip:])  # raw block output, CLS and registers dropped
        return outputs


@torch.no_grad()
def init_random_vit(vit: nn.Module) -> None:
    """timm's ViT initialisation, drawn with plain normals: linear weights and position embeddings
    N(0, 0.02), class and register tokens N(0, 1e-6), linear biases 0 (norms and layer scales keep
    their constructor values). timm truncates its normals at +-2, i.e. at 100 standard deviations,
    so the distribution is the same, at a fraction of the cost."""
    for module in vit.modules():
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, 0.02)
            if module.bias is not None:
                module.bias.zero_()
    vit.pos_embed.normal_(0.0, 0.02)
    for name in ("cls_token", "reg_token"):
        token = getattr(vit, name, None)
        if token is not None:
            token.normal_(0.0, 1e-6)


def load_dinov2_weights(vit: nn.Module, timm_name: str, weights: str) -> str:
    """Load ``weights`` into ``vit``; returns a human-readable description of the source."""
    if weights == "random":
        return RANDOM_SOURCE
    if weights == "pretrained":
        return _load_timm_pretrained(vit, timm_name)
    state = read_state_dict(Path(weights))
    if "register_tokens" in state or "mask_token" in state:
        state = meta_dinov2_to_timm(state)
    state = {k: v for k, v in state.items() if not k.startswith("head")}
    problem = state_mismatch(vit.state_dict(), state)
    if problem:
        raise EncoderWeightsError(f"encoder_weights {weights}: does not fit {timm_name} ({problem})",
                                  arg="encoder_weights")
    vit.load_state_dict(state)
    return f"file {weights}"


def _hub_repo(timm_name: str) -> str:
    return f"timm/{timm_name}.{DINOV2_PRETRAINED_TAG}"


def _load_timm_pretrained(vit: nn.Module, timm_name: str) -> str:
    import timm

    name = f"{timm_name}.{DINOV2_PRETRAINED_TAG}"
    hint = ("give the weights as a file (a timm .safetensors/.pth or Meta's dinov2_vit*14_reg4_pretrain.pth), "
            "pre-fill the Hugging Face cache (HF_HOME), or train with the encoder efficientnet_lite0 (pretrained "
            "weights installed with inpctl, so it works offline)")
    if not weights_reachable(_hub_repo(timm_name)):
        raise EncoderWeightsError(f"encoder_weights pretrained: no weights for {name}: not in the local cache and "
                                  f"the hub is unreachable (offline); {hint}", arg="encoder_weights",
                                  others=("encoder",))
    try:
        pretrained = timm.create_model(name, pretrained=True, num_classes=0, weight_init="skip")
    except Exception as exc:
        raise EncoderWeightsError(f"encoder_weights pretrained: timm could not load {name} "
                                  f"({exc.__class__.__name__}); {hint}", arg="encoder_weights") from exc
    vit.load_state_dict(pretrained.state_dict())
    return f"timm pretrained {name}"


def pretrained_available(variant: str) -> bool:
    """True if timm's pretrained weights for a DINOv2 variant are already in the local cache."""
    return variant in DINOV2_VARIANTS and in_hf_cache(_hub_repo(DINOV2_VARIANTS[variant][0]))
