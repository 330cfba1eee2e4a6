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
            "torch_version": str(torch.__version__),
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


def _torch_load(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--ckpt {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"--ckpt {path}: not a readable checkpoint ({exc.__class__.__name__})") from exc


def read_checkpoint(path: Path) -> dict[str, Any]:
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"--ckpt {path}: not an inpctl checkpoint (expected a dict with format={FORMAT!r})")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"--ckpt {path}: written by a newer inpctl (format {payload['format_version']})")
    return payload


def load_checkpoint(path: Path, device: torch.device | str = "cpu",
                    encoder_weights: str | None = None) -> tuple[INPFormer, RunConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint; ``encoder_weights`` overrides where the encoder comes from.

    Also accepts the authors' released ``model.pth`` (a plain state dict of their whole model).
    """
    raw = _torch_load(path)
    if is_authors_state_dict(raw):
        model, cfg = import_authors_state_dict(raw, path, encoder_weights)
        return model.to(device), cfg, {"imported_from": f"authors' checkpoint {path}",
                                       "encoder_source": model.encoder.weights_source}
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
        model.encoder.weights_source = f"the encoder weights stored in {path}"
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


# --- the authors' checkpoints ------------------------------------------------------------------

AUTHORS_TO_OURS = (  # (their prefix, our prefix), first match wins
    ("prototype_token.0", "prototypes"),
    ("prototype_token", "prototypes"),
    ("bottleneck.0.", "bottleneck."),
    ("aggregation.0.", "extractor."),
)
ENCODER_BY_DIM = {384: "small", 768: "base", 1024: "large"}


def is_authors_state_dict(raw: Any) -> bool:
    return isinstance(raw, dict) and any(str(k).startswith("prototype_token") for k in raw)


def authors_to_ours(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split the authors' state dict into (our trainable state dict, Meta-named encoder state)."""
    ours: dict[str, torch.Tensor] = {}
    encoder: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("encoder."):
            encoder[key[len("encoder."):]] = value
            continue
        for theirs, mine in AUTHORS_TO_OURS:
            if key.startswith(theirs):
                key = mine + key[len(theirs):]
                break
        key = key.replace(".attn.learn_scale", ".attn.scale")
        ours[key] = value
    return ours, encoder


def import_authors_state_dict(state: dict[str, torch.Tensor], path: Path,
                              encoder_weights: str | None = None) -> tuple[INPFormer, RunConfig]:
    """Build our model from the authors' ``model.pth``; refuses on any key or shape mismatch."""
    from inp_former.encoders import meta_dinov2_to_timm

    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--ckpt {path}: expected a state dict of tensors")
    ours, encoder_state = authors_to_ours(state)
    prototypes = ours.get("prototypes")
    if prototypes is None or prototypes.dim() != 2:
        raise CheckpointError(f"--ckpt {path}: 'prototype_token' must be an (M, C) tensor")
    num_prototypes, dim = prototypes.shape
    if dim not in ENCODER_BY_DIM:
        raise CheckpointError(f"--ckpt {path}: channel size {dim} matches no DINOv2 ViT (384, 768, 1024)")
    depth = len({k.split(".")[1] for k in ours if k.startswith("decoder.")})
    cfg = RunConfig()
    cfg.model.encoder = ENCODER_BY_DIM[dim]
    cfg.model.num_prototypes = num_prototypes
    cfg.model.decoder_depth = depth
    embedded = bool(encoder_state) and encoder_weights is None
    cfg.model.encoder_weights = "random" if embedded else (encoder_weights or "pretrained")
    model = INPFormer(cfg.model)
    if embedded:
        vit = model.encoder.vit
        converted = meta_dinov2_to_timm(encoder_state)
        kept = {k: v for k, v in converted.items()
                if not (k.startswith("blocks.") and int(k.split(".")[1]) >= len(vit.blocks))
                and not k.startswith("head")}
        own = vit.state_dict()
        bad = sorted(set(own) ^ set(kept)) + sorted(k for k in own if k in kept and own[k].shape != kept[k].shape)
        if bad:
            raise CheckpointError(f"--ckpt {path}: the encoder part does not fit {cfg.model.encoder} ({bad[:3]})")
        vit.load_state_dict(kept)
        model.encoder.weights_source = f"the authors' checkpoint {path}"
    try:
        model.load_trainable_state_dict(ours)
    except ValueError as exc:
        raise CheckpointError(f"--ckpt {path}: not the authors' INP-Former layout: {exc}") from exc
    return model, cfg
