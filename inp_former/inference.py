"""The inference core: how preprocessed images become anomaly maps and image scores.

Evaluation, prediction, serving, the report and export all score through :func:`score_batch`
(directly, or through :mod:`inp_former.fast_path`, which captures it in CUDA graphs) with the
settings of one :class:`InferenceConfig`. This module imports only the model, the config and the
scoring kernels, so that a server does not pull in training, data or metrics code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from inp_former.config import MapMode, Precision, RunConfig, choice
from inp_former.errors import ConfigError
from inp_former.model import INPFormer, INPFormerOutput
from kernels.dispatch import MODES as KERNEL_MODES
from kernels.scoring import anomaly_maps_and_scores, upsample_token_map


def resolve_precision(precision: Precision | str | None, fast: bool, device: torch.device | str) -> Precision:
    """The precision scoring runs with: the one given; else bf16 on the fast path on CUDA; else fp32.

    The one place this rule is written (fp32 on CPU by default: bf16 autocast is allowed there but
    is slower than fp32 on CPUs without bf16 matrix units)."""
    if precision is not None:
        return Precision(precision)
    return Precision.BF16 if fast and torch.device(device).type == "cuda" else Precision.FP32


@dataclass(frozen=True)
class InferenceConfig:
    """How images are scored; the same settings for ``eval``, ``predict``, ``serve`` and the API.

    ``precision=None`` lets :func:`resolve_precision` choose for the device (:meth:`precision_on`).
    ``kernels`` forces a :func:`kernels.dispatch.kernel_mode` around every batch (None: the
    dispatcher's own choice, ``INPCTL_KERNELS`` or ``auto``).
    """
    precision: Precision | None = None
    map_mode: MapMode = MapMode.DECODER
    fast: bool = False                    # CUDA: the fused, graph-captured path (inp_former/fast_path.py)
    batch_size: int = 16                  # images per forward pass
    kernels: str | None = None

    def __post_init__(self) -> None:
        if self.precision is not None:
            object.__setattr__(self, "precision", choice(Precision, self.precision, "precision"))
        object.__setattr__(self, "map_mode", choice(MapMode, self.map_mode, "map_mode"))
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size {self.batch_size}: must be at least 1", arg="batch_size")
        if self.kernels is not None and self.kernels not in KERNEL_MODES:
            raise ConfigError(f"kernels {self.kernels!r}: expected one of {', '.join(KERNEL_MODES)}", arg="kernels")

    def precision_on(self, device: torch.device | str) -> Precision:
        """The precision used on ``device`` (:func:`resolve_precision`)."""
        return resolve_precision(self.precision, self.fast, device)

    def describe(self, device: torch.device | str) -> dict[str, Any]:
        """The settings as recorded beside results (metrics meta, predictions.json, serve's model block)."""
        return {"precision": str(self.precision_on(device)), "map_mode": str(self.map_mode), "fast": self.fast,
                "batch_size": self.batch_size}


def autocast(device: torch.device | str, precision: Precision | str, cache: bool = True):
    """bf16 autocast, or none; ``cache=False`` recasts weights at every use (CUDA-graph capture)."""
    device_type = torch.device(device).type
    if Precision(precision) == Precision.BF16:
        return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=cache)
    return torch.autocast(device_type, enabled=False)


def score_batch(model: INPFormer, images: torch.Tensor, cfg: RunConfig, precision: Precision | str = "fp32",
                map_mode: MapMode | str = "decoder",
                autocast_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor, INPFormerOutput]:
    """Anomaly maps (B, map_size, map_size) and image scores (B,) of preprocessed images, and the
    model's outputs (tokens, INPs) for callers that want more than the map.

    ``autocast_cache=False`` for CUDA-graph capture (inp_former/fast_path.py)."""
    mc = cfg.model
    map_mode = MapMode(map_mode)
    with torch.no_grad():
        with autocast(images.device, precision, cache=autocast_cache):
            out = model(images)
    if map_mode == MapMode.DECODER:
        maps, scores = anomaly_maps_and_scores(
            out.encoder_groups, out.decoder_groups, image_size=images.shape[-1], out_size=mc.map_size,
            kernel_size=mc.blur_kernel, sigma=mc.blur_sigma, top_fraction=mc.top_fraction)
    else:
        maps = upsample_token_map(out.prototype_distance.float(), image_size=images.shape[-1], out_size=mc.map_size,
                                  kernel_size=mc.blur_kernel, sigma=mc.blur_sigma)
        k = max(1, int(maps[0].numel() * mc.top_fraction))
        scores = maps.flatten(1).topk(k, dim=1).values.mean(1)
    return maps, scores, out


__all__ = ["InferenceConfig", "autocast", "resolve_precision", "score_batch"]
