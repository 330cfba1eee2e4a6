"""What every frozen encoder shares: the interface, reading weight files, checking they fit.

Every encoder returns, for a batch of images, a list of token maps ``(B, N, C)`` (patch tokens
of its chosen layers, N = grid_h * grid_w, row-major), and names two groups of those maps. The rest
of INP-Former never looks inside the encoder.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from inp_former.errors import EncoderWeightsError

RANDOM_SOURCE = "random initialisation (no pretrained weights: anomaly maps are meaningless)"


class FrozenEncoder(nn.Module):
    """Base class: frozen, always in eval mode, never trained."""

    embed_dim: int
    num_heads: int               # heads used by the INP modules on top of this encoder
    patch_size: int              # pixels per token
    groups: tuple[tuple[int, ...], ...]   # indices into the returned list of token maps
    name: str
    weights_source: str = ""              # human-readable: where the weights came from

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenEncoder":
        return super().train(False)  # frozen: dropout/batch-norm statistics never change

    def grid_size(self, size: int | Sequence[int]) -> tuple[int, int]:
        """(grid_h, grid_w) tokens of an image of ``size`` pixels: (height, width), an int a square."""
        height, width = (size, size) if isinstance(size, int) else size
        return int(height) // self.patch_size, int(width) // self.patch_size

    @property
    def is_random(self) -> bool:
        return self.weights_source == RANDOM_SOURCE


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file (loaded as data: weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(f"encoder_weights {path}: no such file", arg="encoder_weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, ...
        raise EncoderWeightsError(f"encoder_weights {path}: not a readable weight file ({exc.__class__.__name__})",
                                  arg="encoder_weights") from exc
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderWeightsError(f"encoder_weights {path}: expected a state dict of tensors", arg="encoder_weights")
    return state


def state_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` cannot be loaded strictly into a module whose state dict is ``own`` (None if it can)."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing:
        return f"missing {missing[:3]}"
    if unexpected:
        return f"unexpected {unexpected[:3]}"
    if wrong:
        return f"shape mismatch at {wrong[:3]}"
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers; checked first so that offline machines fail fast."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def in_hf_cache(repo: str) -> bool:
    """Whether a Hugging Face repo's weights are already in the local cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return any(isinstance(try_to_load_from_cache(repo, f), str)
                   for f in ("model.safetensors", "pytorch_model.bin"))
    except Exception:
        return False


def weights_reachable(repo: str | None) -> bool:
    """A pretrained download can work: cached already, or the hub answers."""
    return repo is None or in_hf_cache(repo) or hub_reachable()
