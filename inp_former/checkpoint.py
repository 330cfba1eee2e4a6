"""Save and load inpctl checkpoints.

A checkpoint is data, not code: a dict of tensors, strings and numbers, loaded with
``weights_only=True``. It holds the trainable parts, the run config that rebuilds the model,
and metadata. The frozen encoder is rebuilt from its own weights (not duplicated) unless
``include_encoder`` asks for it; a fingerprint of the encoder catches a different one on load.
"""
from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

import torch

import inp_former
from inp_former.config import RunConfig
from inp_former.io import atomic_torch_save
from inp_former.model import INPFormer

FORMAT = "inpctl-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable inpctl checkpoint (message names the file)."""


def encoder_fingerprint(model: INPFormer) -> float:
    """A cheap number that differs between encoders with different weights."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.encoder.parameters()))


def save_checkpoint(path: Path, model: INPFormer, cfg: RunConfig, meta: dict[str, Any] | None = None,
                    include_encoder: bool = False, extra: dict[str, Any] | None = None) -> None:
    """Write the checkpoint atomically (temporary file, then rename)."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()},
        "meta": {
            "inpctl_version": inp_former.__version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "encoder": cfg.model.encoder,
            "encoder_source": getattr(model.encoder, "weights_source", cfg.model.encoder_weights),
            "encoder_fingerprint": encoder_fingerprint(model),
            **(meta or {}),
        },
    }
    if include_encoder:
        payload["encoder_state_dict"] = {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()}
    if extra:
        payload.update(extra)
    atomic_torch_save(payload, Path(path))


def read_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--ckpt {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"--ckpt {path}: not a readable checkpoint ({exc.__class__.__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"--ckpt {path}: not an inpctl checkpoint (expected a dict with format={FORMAT!r})")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"--ckpt {path}: written by a newer inpctl (format {payload['format_version']})")
    return payload


def load_checkpoint(path: Path, device: torch.device | str = "cpu",
                    encoder_weights: str | None = None) -> tuple[INPFormer, RunConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint; ``encoder_weights`` overrides where the encoder comes from."""
    payload = read_checkpoint(path)
    cfg = RunConfig.from_dict(payload["config"])
    embedded = payload.get("encoder_state_dict")
    if encoder_weights is not None:
        cfg.model.encoder_weights = encoder_weights
    elif embedded is not None:
        cfg.model.encoder_weights = "random"  # placeholder; replaced by the embedded weights below
    model = INPFormer(cfg.model)
    if embedded is not None and encoder_weights is None:
        model.encoder.load_state_dict(embedded)
    try:
        model.load_trainable_state_dict(payload["state_dict"])
    except ValueError as exc:
        raise CheckpointError(f"--ckpt {path}: {exc}") from exc
    meta = dict(payload.get("meta", {}))
    expected = meta.get("encoder_fingerprint")
    if expected is not None and encoder_weights is None:
        actual = encoder_fingerprint(model)
        if abs(actual - expected) > 1e-6 * max(1.0, abs(expected)):
            raise CheckpointError(
                f"--ckpt {path}: the encoder loaded now ({model.encoder.weights_source}) is not the one it was "
                f"trained with ({meta.get('encoder_source')}); pass --encoder-weights with the training weights")
    return model.to(device), cfg, meta
