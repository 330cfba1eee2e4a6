"""Encoder names -> frozen encoders, and the model config completed with what the encoder chose."""
from __future__ import annotations

import dataclasses
from typing import Callable

from inp_former.config import CNN_ONLY_FIELDS, ModelConfig
from inp_former.encoders.base import FrozenEncoder
from inp_former.encoders.cnn import CNN_ENCODERS, TIMM_PREFIX, TimmCNNEncoder, timm_name_of
from inp_former.encoders.dinov2 import DINOV2_VARIANTS, DinoV2Encoder
from inp_former.errors import ConfigError


def _dinov2(cfg: ModelConfig) -> tuple[FrozenEncoder, ModelConfig]:
    given = [name for name in CNN_ONLY_FIELDS if getattr(cfg, name) is not None]
    if given:   # never ignore a setting silently: DINOv2's tokens are fixed by the ViT (14 px, its width)
        raise ConfigError(f"{given[0]} {getattr(cfg, given[0])}: applies to CNN encoders only, not to the "
                          f"DINOv2 encoder {cfg.encoder!r}", arg=given[0])
    return DinoV2Encoder(cfg.encoder, cfg.encoder_weights), cfg


def _cnn(cfg: ModelConfig) -> tuple[FrozenEncoder, ModelConfig]:
    encoder = TimmCNNEncoder(timm_name_of(cfg.encoder), cfg.encoder_weights, cfg.encoder_stages, cfg.token_stride,
                             cfg.encoder_dim, name=cfg.encoder, padding=cfg.encoder_padding)
    # caught here, before any training, not in the first forward pass (keep_aspect before its input
    # size is resolved: the shorter side will be about resize)
    side, name = ((cfg.resize, "resize") if cfg.keep_aspect and cfg.input_size is None
                  else (min(cfg.input_hw), "input_size" if cfg.keep_aspect else "crop"))
    if encoder.padding >= side:
        raise ConfigError(f"encoder_padding {encoder.padding}: must be smaller than {name} {side} px; give "
                          f"encoder_padding 0 or a larger {name}", arg="encoder_padding",
                          others=(name, "encoder_padding"))
    # the config records the design actually built, so a checkpoint rebuilds exactly this encoder
    resolved = dataclasses.replace(cfg, encoder_stages=tuple(encoder.stages), token_stride=encoder.patch_size,
                                   encoder_dim=encoder.embed_dim, encoder_padding=encoder.padding)
    return encoder, resolved


ENCODERS: dict[str, Callable[[ModelConfig], tuple[FrozenEncoder, ModelConfig]]] = {
    **{variant: _dinov2 for variant in DINOV2_VARIANTS},
    **{name: _cnn for name in CNN_ENCODERS},
}


def build_encoder(cfg: ModelConfig) -> tuple[FrozenEncoder, ModelConfig]:
    """The frozen encoder a model config names, and the config with the encoder's choices filled in
    (a CNN's default stages, token stride and width); ``cfg`` itself is never changed."""
    if timm_name_of(cfg.encoder) is not None and cfg.encoder not in ENCODERS:
        return _cnn(cfg)
    if cfg.encoder not in ENCODERS:
        raise ConfigError(f"encoder {cfg.encoder!r}: expected one of {', '.join(sorted(ENCODERS))} "
                          f"or {TIMM_PREFIX}<timm CNN name> (e.g. {TIMM_PREFIX}wide_resnet50_2)", arg="encoder")
    return ENCODERS[cfg.encoder](cfg)
