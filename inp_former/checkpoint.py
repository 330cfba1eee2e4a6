"""Save and load inpctl checkpoints.

A checkpoint is data, not code: a dict of tensors, strings and numbers, loaded with
``weights_only=True``. It holds the trainable parts, the run config that rebuilds the model, and
metadata. The frozen encoder is rebuilt from its own weights, never copied into the file; a
fingerprint of the encoder's weights catches a different encoder on load.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
from pathlib import Path
from typing import Any, Callable

import torch

import inp_former
from inp_former.config import RunConfig, plain
from inp_former.errors import CheckpointError
from inp_former.io import atomic_torch_save
from inp_former.model import INPFormer

FORMAT = "inpctl-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def encoder_fingerprint(model: INPFormer) -> float:
    """A cheap number that differs between encoders with different weights."""
    # summed in float64 without a float64 copy of each weight
    with torch.no_grad():
        return float(sum(p.abs().sum(dtype=torch.float64) for p in model.encoder.parameters()))


def save_checkpoint(path: Path, model: INPFormer, cfg: RunConfig, meta: dict[str, Any] | None = None) -> None:
    """Write the checkpoint atomically (temporary file, then rename)."""
    cfg = dataclasses.replace(cfg, model=model.cfg)  # as built: with the encoder's own choices (a CNN's stages)
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
            **plain(meta or {}),   # strings and numbers only: the file must load with weights_only=True
        },
    }
    atomic_torch_save(payload, Path(path))


def _torch_load(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file", arg="checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: not a readable checkpoint ({exc.__class__.__name__})",
                              arg="checkpoint") from exc


def _check_payload(payload: Any, path: Path) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not an inpctl checkpoint (expected a dict with format={FORMAT!r})",
                              arg="checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: written by a newer inpctl (format {payload['format_version']})",
                              arg="checkpoint")
    return payload


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The raw payload of an inpctl checkpoint (config, state dict, meta), checked."""
    return _check_payload(_torch_load(path), Path(path))


def update_meta(path: Path, change: Callable[[dict[str, Any]], Any]) -> Any:
    """Apply ``change`` to the ``meta`` of an inpctl checkpoint in place and rewrite the file
    atomically; everything else in it stays as it was. Returns what ``change`` returned."""
    payload = read_checkpoint(Path(path))
    meta = dict(payload.get("meta") or {})
    result = change(meta)
    payload["meta"] = meta
    atomic_torch_save(payload, Path(path))
    return result


def resolve_checkpoint(path: Path | str, arg: str = "checkpoint") -> Path:
    """The checkpoint file a user means: ``path`` itself, or ``path/checkpoint.pt`` of a run directory.

    A directory without one is named as such (a single-class run directory holds one checkpoint per
    category, which is listed), never reported as a missing file."""
    path = Path(path)
    if path.is_dir():
        if (path / CHECKPOINT_NAME).is_file():
            return path / CHECKPOINT_NAME
        per_category = sorted(p.parent.relative_to(path).as_posix() for p in path.rglob(CHECKPOINT_NAME))
        if per_category:
            shown = ", ".join(per_category[:5]) + (", ..." if len(per_category) > 5 else "")
            raise CheckpointError(f"{arg} {path}: a single-class run directory (one model per category: {shown}); "
                                  f"give one category's directory, e.g. {path / per_category[0]}", arg=arg)
        raise CheckpointError(f"{arg} {path}: a directory without {CHECKPOINT_NAME} (expected a checkpoint file "
                              "or the run directory of inpctl train)", arg=arg)
    if not path.exists():
        raise CheckpointError(f"{arg} {path}: no such file or directory", arg=arg)
    return path


def load_checkpoint(path: Path, device: torch.device | str = "cpu", encoder_weights: str | None = None,
                    allow_encoder_mismatch: bool = False) -> tuple[INPFormer, RunConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint (a file, or a run directory's ``checkpoint.pt``);
    ``encoder_weights`` overrides where the encoder comes from.

    The encoder loaded must be the one the model was trained with (same weights fingerprint):
    otherwise a CheckpointError names both, unless ``allow_encoder_mismatch``; the returned meta then
    holds ``encoder_mismatch`` so that results can say so. Also accepts the authors' released
    ``model.pth`` (a plain state dict of their whole model).
    """
    path = resolve_checkpoint(path)   # a run directory means its checkpoint.pt
    raw = _torch_load(path)  # read once: the authors' format and ours are told apart from the payload
    if is_authors_state_dict(raw):
        model, cfg = import_authors_state_dict(raw, path, encoder_weights)
        return model.to(device), cfg, {"imported_from": f"authors' checkpoint {path}",
                                       "encoder_source": model.encoder.weights_source}
    payload = _check_payload(raw, path)
    cfg = RunConfig.from_dict(payload["config"], saved=True)
    if encoder_weights is not None:
        cfg = cfg.updated(model={"encoder_weights": encoder_weights})
    model = INPFormer(cfg.model, init_weights=False)   # every trainable weight is loaded next (strictly)
    try:
        model.load_trainable_state_dict(payload["state_dict"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}", arg="checkpoint") from exc
    meta = dict(payload.get("meta", {}))
    expected = meta.get("encoder_fingerprint")
    if expected is not None:
        actual = encoder_fingerprint(model)
        if abs(actual - expected) > 1e-6 * max(1.0, abs(expected)):
            trained_with, loaded = meta.get("encoder_source"), model.encoder.weights_source
            if not allow_encoder_mismatch:
                raise CheckpointError(
                    f"checkpoint {path}: the encoder loaded now ({loaded}) is not the one it was trained with "
                    f"({trained_with}); give the training weights as encoder_weights, or allow the mismatch "
                    f"explicitly with allow_encoder_mismatch", arg="checkpoint",
                    others=("encoder_weights", "allow_encoder_mismatch"))
            meta["encoder_mismatch"] = {"trained_with": trained_with, "loaded": loaded}
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
    from inp_former.encoders.base import state_mismatch
    from inp_former.encoders.dinov2 import meta_dinov2_to_timm

    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: expected a state dict of tensors", arg="checkpoint")
    ours, encoder_state = authors_to_ours(state)
    prototypes = ours.get("prototypes")
    if prototypes is None or prototypes.dim() != 2:
        raise CheckpointError(f"checkpoint {path}: 'prototype_token' must be an (M, C) tensor", arg="checkpoint")
    num_prototypes, dim = prototypes.shape
    if dim not in ENCODER_BY_DIM:
        raise CheckpointError(f"checkpoint {path}: channel size {dim} matches no DINOv2 ViT (384, 768, 1024)", arg="checkpoint")
    depth = len({k.split(".")[1] for k in ours if k.startswith("decoder.")})
    embedded = bool(encoder_state) and encoder_weights is None
    cfg = RunConfig().updated(model={
        "encoder": ENCODER_BY_DIM[dim], "num_prototypes": num_prototypes, "decoder_depth": depth,
        # their file holds the encoder: built random, then overwritten with it below
        "encoder_weights": "random" if embedded else (encoder_weights or "pretrained")})
    model = INPFormer(cfg.model, init_weights=False)   # every trainable weight is loaded below (strictly)
    if embedded:
        vit = model.encoder.vit
        converted = meta_dinov2_to_timm(encoder_state)
        kept = {k: v for k, v in converted.items()
                if not (k.startswith("blocks.") and int(k.split(".")[1]) >= len(vit.blocks))
                and not k.startswith("head")}
        problem = state_mismatch(vit.state_dict(), kept)
        if problem:
            raise CheckpointError(f"checkpoint {path}: the encoder part does not fit {cfg.model.encoder} ({problem})",
                                  arg="checkpoint")
        vit.load_state_dict(kept)
        model.encoder.weights_source = f"the authors' checkpoint {path}"
    try:
        model.load_trainable_state_dict(ours)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: not the authors' INP-Former layout: {exc}", arg="checkpoint") from exc
    return model, cfg
