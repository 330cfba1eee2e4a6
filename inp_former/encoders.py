"""Frozen encoders behind one interface.

Every encoder returns, for a batch of images, a list of token maps ``(B, N, C)`` (patch tokens
of its chosen layers, N = grid * grid, row-major), and names two groups of those layers. The rest
of INP-Former never looks inside the encoder.

The paper's encoder is DINOv2 with 4 registers from timm. Its position embeddings are resampled
the way Meta's code does it (bicubic with ``scale_factor=(grid + 0.1) / 37``, no antialias), not
timm's way, because a model trained with one gives different maps with the other (SPEC.md).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from inp_former.config import ModelConfig


class EncoderWeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be found or do not fit."""


class FrozenEncoder(nn.Module):
    """Base class: frozen, always in eval mode, never trained."""

    embed_dim: int
    num_heads: int               # heads used by the INP modules on top of this encoder
    patch_size: int
    groups: tuple[tuple[int, ...], ...]   # indices into the returned list of token maps
    name: str
    weights_source: str = ""              # human-readable: where the weights came from

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenEncoder":
        return super().train(False)  # frozen: dropout/batch-norm statistics never change

    def grid_size(self, crop: int) -> int:
        return crop // self.patch_size


# --- DINOv2 with registers ---------------------------------------------------------------------

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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file (loaded as data: weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(f"--encoder-weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, ...
        raise EncoderWeightsError(f"--encoder-weights {path}: not a readable weight file ({exc.__class__.__name__})") from exc
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderWeightsError(f"--encoder-weights {path}: expected a state dict of tensors")
    return state


class DinoV2Encoder(FrozenEncoder):
    """timm's DINOv2-with-registers ViT run the way the authors run Meta's implementation."""

    patch_size = 14
    num_registers = 4

    def __init__(self, variant: str = "base", weights: str = "pretrained") -> None:
        super().__init__()
        import timm

        if variant not in DINOV2_VARIANTS:
            raise ValueError(f"--encoder {variant!r}: expected one of {', '.join(DINOV2_VARIANTS)}")
        timm_name, self.layers = DINOV2_VARIANTS[variant]
        self.name = variant
        # A random encoder must be the same at train and eval time: fixed seed, own RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.vit = timm.create_model(timm_name, pretrained=False, num_classes=0)
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


def load_dinov2_weights(vit: nn.Module, timm_name: str, weights: str) -> str:
    """Load ``weights`` into ``vit``; returns a human-readable description of the source."""
    if weights == "random":
        return "random initialisation (no pretrained weights: anomaly maps are meaningless)"
    if weights == "pretrained":
        return _load_timm_pretrained(vit, timm_name)
    state = read_state_dict(Path(weights))
    if "register_tokens" in state or "mask_token" in state:
        state = meta_dinov2_to_timm(state)
    state = {k: v for k, v in state.items() if not k.startswith("head")}
    own = vit.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape mismatch at {wrong[:3]}")
        raise EncoderWeightsError(f"--encoder-weights {weights}: does not fit {timm_name} ({detail})")
    vit.load_state_dict(state)
    return f"file {weights}"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers; checked first so that offline machines fail fast."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_timm_pretrained(vit: nn.Module, timm_name: str) -> str:
    import timm

    name = f"{timm_name}.{DINOV2_PRETRAINED_TAG}"
    hint = ("pass --encoder-weights PATH (a timm .safetensors/.pth or Meta's dinov2_vit*14_reg4_pretrain.pth), "
            "or pre-fill the Hugging Face cache (HF_HOME)")
    variant = next((v for v, (n, _) in DINOV2_VARIANTS.items() if n == timm_name), "")
    if not pretrained_available(variant) and not hub_reachable():
        raise EncoderWeightsError(f"no pretrained weights for {name}: not in the local cache and the hub is "
                                  f"unreachable (offline); {hint}")
    try:
        pretrained = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:
        raise EncoderWeightsError(
            f"no pretrained weights for {name}: timm could not load them ({exc.__class__.__name__}); {hint}") from exc
    vit.load_state_dict(pretrained.state_dict())
    return f"timm pretrained {name}"


ENCODERS: dict[str, Callable[[ModelConfig], FrozenEncoder]] = {
    variant: (lambda cfg, variant=variant: DinoV2Encoder(variant, cfg.encoder_weights))
    for variant in DINOV2_VARIANTS
}



def _cnn_encoder(cfg: ModelConfig) -> FrozenEncoder:
    # imported here: cnn_encoder imports this module
    from inp_former.cnn_encoder import build_cnn_encoder, timm_name_of

    return build_cnn_encoder(cfg, timm_name_of(cfg.encoder))


# timm CNNs (inp_former/cnn_encoder.py): the light offline default, and any other as "timm:<name>".
ENCODERS["efficientnet_lite0"] = _cnn_encoder
TIMM_ENCODER_PREFIX = "timm:"


def build_encoder(cfg: ModelConfig) -> FrozenEncoder:
    """The frozen encoder a model config names."""
    if cfg.encoder.startswith(TIMM_ENCODER_PREFIX) and len(cfg.encoder) > len(TIMM_ENCODER_PREFIX):
        return _cnn_encoder(cfg)
    if cfg.encoder not in ENCODERS:
        raise ValueError(f"--encoder {cfg.encoder!r}: expected one of {', '.join(sorted(ENCODERS))} "
                         f"or {TIMM_ENCODER_PREFIX}<timm CNN name> (e.g. {TIMM_ENCODER_PREFIX}wide_resnet50_2)")
    return ENCODERS[cfg.encoder](cfg)


def pretrained_available(encoder: str) -> bool:
    """True if timm's pretrained weights for a DINOv2 variant are already in the local cache."""
    if encoder not in DINOV2_VARIANTS:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        repo = f"timm/{DINOV2_VARIANTS[encoder][0]}.{DINOV2_PRETRAINED_TAG}"
        return any(isinstance(try_to_load_from_cache(repo, f), str)
                   for f in ("model.safetensors", "pytorch_model.bin"))
    except Exception:
        return False
