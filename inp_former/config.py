"""One dataclass describes a run; it is saved as JSON beside the run and inside every checkpoint.

A setting (multi-class, few-shot, ...) or a dataset is a value here, never a copy of the loop.
The defaults are the paper's (SPEC.md); the CLI's flags only override fields.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelConfig:
    encoder: str = "base"                 # small | base | large (DINOv2-reg4) or another registered encoder
    encoder_weights: str = "pretrained"   # "pretrained" (timm cache/download), "random", or a file path
    # CNN encoders only (inp_former/cnn_encoder.py); None = that encoder's default, filled in when the
    # encoder is built so that saved configs record the exact design. DINOv2 leaves them None.
    encoder_stages: list[int] | None = None   # timm features_only out_indices taken as token maps
    token_stride: int | None = None           # pixels per token: grid = crop // token_stride
    encoder_dim: int | None = None            # C: every stage is projected to C channels
    resize: int = 448                     # images are resized to resize x resize ...
    crop: int = 392                       # ... then centre-cropped to crop x crop (28x28 tokens at patch 14)
    num_prototypes: int = 6               # M, the number of INPs
    decoder_depth: int = 8
    mlp_ratio: float = 4.0
    map_size: int = 256                   # anomaly maps are scored at map_size x map_size
    blur_sigma: float = 4.0
    blur_kernel: int = 5
    top_fraction: float = 0.01            # image score = mean of the top 1% of the map


@dataclass
class TrainConfig:
    iters: int | None = None              # total iterations; None means epochs * batches per epoch
    epochs: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    final_lr: float = 1e-4
    warmup_iters: int = 100
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    eps: float = 1e-10                    # the authors' value; 1e-6 is the known fix if NaNs appear
    grad_clip: float = 0.1
    coherence_weight: float = 0.2         # total loss = L_sm + coherence_weight * L_c
    mining_gamma: float = 3.0
    seed: int = 1
    num_workers: int = 0
    on_nonfinite: str = "stop"            # stop | skip: what a non-finite loss does
    precision: str = "fp32"               # fp32 | bf16 (autocast): bf16 is the fast path on GPUs
    checkpoint_every: int = 500           # iterations between resumable training states (0 = never)


@dataclass
class DataConfig:
    dataset: str = "mvtec"
    root: str = ""
    categories: list[str] = field(default_factory=list)   # empty = every category under root
    setting: str = "multi-class"          # multi-class | single-class | few-shot | super-multi-class
    shots: int = 0                        # few-shot: normal images sampled per category (seed = train.seed)
    # super-multi-class: several datasets in one run, [{"name", "dataset", "root"}, ...]; when set,
    # ``dataset``/``root`` are unused and categories are named "<name>/<category>" (inp_former/settings.py)
    sources: list[dict[str, str]] = field(default_factory=list)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        def build(kind: type, values: dict[str, Any]) -> Any:
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"unknown {kind.__name__} fields in config: {sorted(unknown)}")
            values = dict(values)
            if "betas" in values:
                values["betas"] = tuple(values["betas"])
            return kind(**values)

        return cls(model=build(ModelConfig, raw.get("model", {})),
                   train=build(TrainConfig, raw.get("train", {})),
                   data=build(DataConfig, raw.get("data", {})))

    def save_json(self, path: Path) -> None:
        from inp_former.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")
