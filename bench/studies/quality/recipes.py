"""Recipes for the CNN-encoder quality study (issue 17) and the runtime wrappers they need.

A recipe is a set of overrides on a base run config (any ModelConfig/TrainConfig field: mirror
padding is ``model.encoder_padding``, the feature levels ``model.encoder_stages``, both real config
fields now) plus optional runtime mechanisms the library does not have, which wrap the encoder or
the model at run time without editing the library:

- ``token_norm``: ``"layernorm"`` applies a parameter-free LayerNorm (no affine, eps 1e-6) over the
  C channels of every token of every returned token map (after the encoder's projection), as
  DINOv2's tokens are layer-normed; ``"l2"`` scales every token to unit L2 norm * sqrt(C).
- ``bottleneck_dropout``: Dinomaly's noisy bottleneck, dropout p on the fused tokens entering the
  bottleneck MLP and on its hidden layer (training only).
- ``groups``: an explicit grouping of the returned maps (indices), instead of shallower/deeper half.
- ``reflect_pad``: the study's name for mirror padding before it became
  ``ModelConfig.encoder_padding``; now simply that field (same numbers), so old commands reproduce.

``WrappedEncoder`` also memoises the frozen encoder's outputs per image (keyed by the image
tensor's bytes; ``cache=True``): identical numbers, about 40% less time per training step on a
CPU. Experiments only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inp_former.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from inp_former.encoders import FrozenEncoder, build_encoder
from inp_former.model import Mlp

KOLEKTOR = "/work/shared/data/kolektorsdd"


class WrappedEncoder(FrozenEncoder):
    """A frozen encoder seen through a token transform and/or a cache and/or other groups."""

    def __init__(self, inner: FrozenEncoder, token_norm: str | None = None, cache: bool = True,
                 groups: tuple[tuple[int, ...], ...] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.embed_dim, self.num_heads, self.patch_size = inner.embed_dim, inner.num_heads, inner.patch_size
        self.groups = tuple(tuple(g) for g in groups) if groups is not None else inner.groups
        self.name = inner.name
        self.weights_source = inner.weights_source
        self.token_norm = token_norm
        self.cache: dict[bytes, list[torch.Tensor]] | None = {} if cache else None
        self.freeze()

    def describe(self) -> str:
        base = getattr(self.inner, "describe", lambda: self.name)()
        return f"{base}; token norm {self.token_norm or 'none'}; groups used {self.groups}"

    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            maps = self.inner(images)
            if self.token_norm == "layernorm":
                maps = [F.layer_norm(m, (m.shape[-1],), eps=1e-6) for m in maps]
            elif self.token_norm == "l2":
                maps = [F.normalize(m, dim=-1) * m.shape[-1] ** 0.5 for m in maps]
            elif self.token_norm is not None:
                raise ValueError(f"token_norm {self.token_norm!r}")
        return maps

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.cache is None:
            return self._encode(images)
        keys = [hashlib.blake2b(img.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()
                for img in images]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            fresh = self._encode(images[missing])
            for j, i in enumerate(missing):
                self.cache[keys[i]] = [m[j].clone() for m in fresh]
        per_image = [self.cache[k] for k in keys]
        return [torch.stack([p[layer] for p in per_image]) for layer in range(len(per_image[0]))]


class NoisyBottleneck(nn.Module):
    """Dinomaly's noisy bottleneck around the model's MLP: dropout on its input and hidden layer."""

    def __init__(self, mlp: Mlp, p: float) -> None:
        super().__init__()
        self.mlp, self.drop = mlp, nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp.act(self.mlp.fc1(self.drop(x)))
        return self.mlp.fc2(self.drop(x))


def base_config(dataset: str, seed: int = 1) -> RunConfig:
    """Today's CNN setting (the demo's): efficientnet_lite0, 224 px, stride 16, 200 iters, batch 8."""
    if dataset == "kolektor":
        data = DataConfig(dataset="mvtec", root=KOLEKTOR, categories=["kolektor"])
    elif dataset == "demo":
        from inp_former.data.demo import ensure_demo_dataset

        data = DataConfig(dataset="mvtec", root=str(ensure_demo_dataset()))
    else:
        raise ValueError(dataset)
    # encoder_padding 0: the study's reference is the encoder before mirror padding became the
    # default (recipe "pad32", or --set reflect_pad=32, is the padded variant)
    model = ModelConfig(encoder="efficientnet_lite0", encoder_weights="pretrained", resize=224, crop=224,
                        token_stride=16, encoder_padding=0)
    train = TrainConfig(iters=200, batch_size=8, warmup_iters=20, seed=seed, checkpoint_every=0)
    return RunConfig(model=model, train=train, data=data)


# name: {"model": {...}, "train": {...}, "token_norm": ..., "bottleneck_dropout": ..., "groups": ...,
#        "methods": [...]}
RECIPES: dict[str, dict[str, Any]] = {
    "base": {},
    "pad32": {"model": {"encoder_padding": 32}},
    "base-400": {"train": {"iters": 400, "warmup_iters": 40}},
    "ln": {"token_norm": "layernorm"},
    "ln-400": {"token_norm": "layernorm", "train": {"iters": 400, "warmup_iters": 40}},
    "ln-coh0": {"token_norm": "layernorm", "train": {"coherence_weight": 0.0}},
    "ln-lr3e-4": {"token_norm": "layernorm", "train": {"lr": 3e-4, "final_lr": 3e-5}},
    "ln-drop": {"token_norm": "layernorm", "bottleneck_dropout": 0.2},
    "ln-s8": {"token_norm": "layernorm", "model": {"token_stride": 8}},
    "ln-s123": {"token_norm": "layernorm", "model": {"encoder_stages": [1, 2, 3]}},
    "ln-dim512": {"token_norm": "layernorm", "model": {"encoder_dim": 512}},
}


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set`` options: ``section.field=JSON`` (a ModelConfig/TrainConfig field) or ``name=JSON``
    (a runtime option such as ``reflect_pad=32``) -> the overrides ``recipe_config`` takes."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        value = json.loads(raw)
        if "." in key:
            section, field = key.split(".", 1)
            overrides.setdefault(section, {})[field] = value
        else:
            overrides[key] = value
    return overrides


def recipe_config(name: str, dataset: str, overrides: dict[str, Any] | None = None,
                  seed: int = 1) -> tuple[RunConfig, dict[str, Any]]:
    """(run config, runtime options) of a recipe on a dataset."""
    spec = dict(RECIPES[name]) if name in RECIPES else {}
    if overrides:
        for key, value in overrides.items():
            spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    if "reflect_pad" in spec:   # the study's first name for encoder_padding
        spec["model"] = {**spec.get("model", {}), "encoder_padding": spec.pop("reflect_pad")}
    cfg = base_config(dataset, seed)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **spec.get("model", {})),
                              train=dataclasses.replace(cfg.train, **spec.get("train", {})))
    runtime = {k: spec[k] for k in ("token_norm", "bottleneck_dropout", "groups", "methods") if k in spec}
    return cfg, runtime


def build_wrapped_encoder(cfg: RunConfig, runtime: dict[str, Any],
                          cache: bool = True) -> tuple[WrappedEncoder, RunConfig]:
    """The wrapped encoder and the config completed with the encoder's choices (stages, stride, C)."""
    inner, model_cfg = build_encoder(cfg.model)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    groups = runtime.get("groups")
    wrapped = WrappedEncoder(inner, runtime.get("token_norm"), cache=cache,
                             groups=tuple(tuple(g) for g in groups) if groups else None)
    return wrapped, cfg
