"""Small models for fast tests: ViT-S with random weights at tiny image sizes."""
from __future__ import annotations

import functools

import torch

from inp_former.config import ModelConfig
from inp_former.encoders import DinoV2Encoder
from inp_former.model import INPFormer


@functools.lru_cache(maxsize=None)
def _encoder() -> DinoV2Encoder:
    return DinoV2Encoder("small", "random")


def tiny_config(**overrides) -> ModelConfig:
    values = dict(encoder="small", encoder_weights="random", resize=64, crop=56, map_size=32)
    values.update(overrides)
    return ModelConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> INPFormer:
    """An INPFormer on a shared random ViT-S (the encoder is frozen, so sharing it is safe)."""
    torch.manual_seed(seed)
    return INPFormer(tiny_config(**overrides), encoder=_encoder())
