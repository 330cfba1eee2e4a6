"""One frozen dataclass describes a run; it is saved as JSON beside the run and in every checkpoint.

Every default is stated here once (the paper's values); a front end passes only what its user
gave (:func:`overlay`). The choice sets are enums, which the command line reuses for its flags.
Configs are frozen: a step that resolves something (the categories found on disk, the iterations
an epoch count gives, a CNN encoder's default stages) returns a new config, never edits one.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from inp_former.errors import ConfigError


class Choice(str, Enum):
    """A string choice: compares, prints and serialises as its value."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Precision(Choice):
    AUTO = "auto"      # bf16 where the hardware runs it natively, else fp32 (inference.py; training: train.py)
    FP32 = "fp32"
    BF16 = "bf16"      # autocast: the fast path on GPUs


class MapMode(Choice):
    DECODER = "decoder"       # reconstruction error: the method
    PROTOTYPE = "prototype"   # distance to the nearest INP: the zero-shot map


class Setting(Choice):
    MULTI_CLASS = "multi-class"
    SINGLE_CLASS = "single-class"
    FEW_SHOT = "few-shot"
    SUPER_MULTI_CLASS = "super-multi-class"


class OnNonfinite(Choice):
    STOP = "stop"
    SKIP = "skip"


class Dtype(Choice):
    """Tensor dtypes of the benchmarks."""
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


def choice(kind: type[Choice], value: Any, arg: str) -> Choice:
    """``value`` as a member of ``kind``; a ConfigError naming ``arg`` otherwise."""
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ConfigError(f"{arg} {value!r}: expected one of {allowed}", arg=arg) from None


def _positive(section: Any, *names: str, minimum: float = 1) -> None:
    for name in names:
        value = getattr(section, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{name} {value}: must be at least {minimum}", arg=name)


def _tuple(section: Any, name: str) -> None:
    value = getattr(section, name)
    if isinstance(value, list):
        object.__setattr__(section, name, tuple(value))


CNN_ONLY_FIELDS = ("encoder_stages", "token_stride", "encoder_dim", "encoder_padding")   # see ModelConfig


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "base"                 # small | base | large (DINOv2-reg4), efficientnet_lite0 or timm:<cnn>
    encoder_weights: str = "pretrained"   # "pretrained" (timm cache/download), "random", or a file path
    # CNN encoders only (inp_former/encoders/cnn.py); None = that encoder's default, resolved when the
    # encoder is built (the model's ``config`` records the values used). DINOv2 leaves them None.
    encoder_stages: tuple[int, ...] | None = None   # timm features_only out_indices taken as token maps
    token_stride: int | None = None                 # pixels per token: grid = crop // token_stride
    encoder_dim: int | None = None                  # C: every stage is projected to C channels
    encoder_padding: int | None = None              # pixels of mirror padding around the image (see cnn.py)
    resize: int = 448                     # images are resized to resize x resize ...
    crop: int = 392                       # ... then centre-cropped to crop x crop (28x28 tokens at patch 14)
    # keep_aspect: no square, no crop (``crop`` is unused): the shorter side of the training images'
    # most common size is resized to ``resize``, the longer follows, both rounded to the token stride;
    # that (height, width) is ``input_size``, resolved when training starts (inp_former/settings.py),
    # and every image (train, eval, predict, serve, export) is resized to it. Read the sizes through
    # ``resize_hw``, ``input_hw`` and ``map_hw``, never from resize/crop/map_size directly.
    keep_aspect: bool = False
    input_size: tuple[int, int] | None = None   # (height, width) the model sees; keep_aspect only
    # tile: the model sees tile x tile pixels cut from the image at its own resolution, and maps are
    # blended back to full resolution (inp_former/tiling.py); resize and crop are unused. A multiple
    # of the token stride. tile_overlap: pixels neighbouring tiles share at least (None: tile // 8).
    tile: int | None = None
    tile_overlap: int | None = None
    num_prototypes: int = 6               # M, the number of INPs
    decoder_depth: int = 8
    mlp_ratio: float = 4.0
    map_size: int = 256                   # anomaly maps are map_size x map_size (keep_aspect: the shorter side)
    blur_sigma: float = 4.0
    blur_kernel: int = 5
    top_fraction: float = 0.01            # image score = mean of the top 1% of the map

    def __post_init__(self) -> None:
        _tuple(self, "encoder_stages")
        _tuple(self, "input_size")
        _positive(self, "resize", "crop", "num_prototypes", "decoder_depth", "map_size", "token_stride",
                  "encoder_dim", "blur_kernel")
        _positive(self, "encoder_padding", minimum=0)
        if self.crop > self.resize and not self.keep_aspect:
            raise ConfigError(f"crop {self.crop}: must not exceed resize {self.resize}", arg="crop", others=("resize",))
        if not 0 < self.top_fraction <= 1:
            raise ConfigError(f"top_fraction {self.top_fraction}: expected a fraction in (0, 1]", arg="top_fraction")
        _check_tiling(self)
        if self.input_size is not None:
            if not self.keep_aspect:
                raise ConfigError(f"input_size {list(self.input_size)}: only with keep_aspect (square models are "
                                  "sized by resize and crop)", arg="input_size", others=("keep_aspect",))
            if len(self.input_size) != 2 or not all(isinstance(v, int) and v >= 1 for v in self.input_size):
                raise ConfigError(f"input_size {list(self.input_size)}: expected (height, width), two positive "
                                  "integers", arg="input_size")

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the images the model sees: (crop, crop), or keep_aspect's ``input_size``."""
        if not self.keep_aspect:
            return self.crop, self.crop
        if self.input_size is None:
            raise ConfigError("keep_aspect: the input size is not resolved yet (training reads it from the "
                              "training images)", arg="keep_aspect")
        return self.input_size

    @property
    def resize_hw(self) -> tuple[int, int]:
        """(height, width) images are resized to before the centre crop (keep_aspect: the input, no crop)."""
        return self.input_hw if self.keep_aspect else (self.resize, self.resize)

    @property
    def map_hw(self) -> tuple[int, int]:
        """(height, width) of the anomaly maps: map_size on the shorter side, the longer in proportion."""
        return map_shape(self.input_hw, self.map_size)

    @property
    def stride(self) -> int:
        """Pixels per token of the encoder: DINOv2's patch (14), or a CNN's ``token_stride`` (its
        default when not given), without building the encoder."""
        from inp_former.encoders.cnn import DEFAULT_TOKEN_STRIDE, timm_name_of
        from inp_former.encoders.dinov2 import DinoV2Encoder

        if timm_name_of(self.encoder) is not None:
            return int(self.token_stride or DEFAULT_TOKEN_STRIDE)
        return DinoV2Encoder.patch_size

    def stretches(self, image_hw: tuple[int, int]) -> bool:
        """Whether a keep-aspect model stretches an image of ``image_hw`` (height, width) to its input:
        the image's own keep-aspect size is not ``input_hw``. Another resolution of the same aspect
        ratio is only scaled; a square model never counts as stretching (it squashes every image)."""
        from inp_former.data.geometry import keep_aspect_size

        return self.keep_aspect and keep_aspect_size(image_hw, self.resize, self.stride) != self.input_hw


def _check_tiling(model: ModelConfig) -> None:
    """``tile`` a multiple of the encoder's token stride, not with keep_aspect; ``tile_overlap``
    resolved (tile // 8 when not given: about 1.3x the tiles of no overlap) and below the tile."""
    if model.tile is None:
        if model.tile_overlap is not None:
            raise ConfigError(f"tile_overlap {model.tile_overlap}: only with tile", arg="tile_overlap", others=("tile",))
        return
    if model.keep_aspect:
        raise ConfigError("tile: cuts tiles at the images' own resolution, keep_aspect resizes them: give one of "
                          "the two", arg="tile", others=("keep_aspect",))
    stride = model.stride
    if model.tile < stride or model.tile % stride:
        raise ConfigError(f"tile {model.tile}: expected a multiple of the encoder's token stride ({stride} px for "
                          f"{model.encoder})", arg="tile")
    if model.tile_overlap is None:
        object.__setattr__(model, "tile_overlap", model.tile // 8)
    if not 0 <= model.tile_overlap < model.tile:
        raise ConfigError(f"tile_overlap {model.tile_overlap}: expected 0 <= overlap < tile {model.tile} px",
                          arg="tile_overlap", others=("tile",))


def map_shape(input_hw: tuple[int, int], map_size: int) -> tuple[int, int]:
    """The map of an (height, width) input: ``map_size`` on the shorter side, the longer side in
    proportion (rounded); a square input gives map_size x map_size."""
    short = min(input_hw)
    return tuple(max(1, int(map_size * side / short + 0.5)) for side in input_hw)  # type: ignore[return-value]


@dataclass(frozen=True)
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
    num_workers: int | None = None        # data-loading processes; None: chosen for the device (runtime.py)
    on_nonfinite: OnNonfinite = OnNonfinite.STOP
    # auto: bf16 autocast on a CPU with native bf16 units, else fp32 (train.training_precision,
    # resolved when training starts; config.json records the result)
    precision: Precision = Precision.AUTO
    checkpoint_every: int = 500           # iterations between resumable training states (0 = never)
    tensorboard: bool = False             # also TensorBoard events in RUN_DIR/tensorboard (train_log.csv always)

    def __post_init__(self) -> None:
        _tuple(self, "betas")
        object.__setattr__(self, "on_nonfinite", choice(OnNonfinite, self.on_nonfinite, "on_nonfinite"))
        object.__setattr__(self, "precision", choice(Precision, self.precision, "precision"))
        _positive(self, "iters", "epochs", "batch_size")
        _positive(self, "warmup_iters", "checkpoint_every", "num_workers", "lr", "final_lr", "weight_decay", "eps",
                  "grad_clip", "coherence_weight", "mining_gamma", minimum=0)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mvtec"
    root: str = ""
    categories: tuple[str, ...] = ()      # empty = every category under root
    setting: Setting = Setting.MULTI_CLASS
    shots: int = 0                        # few-shot: normal images sampled per category (seed = train.seed)
    # super-multi-class: several datasets in one run, ({"name", "dataset", "root"}, ...); when set,
    # ``dataset``/``root`` are unused and categories are named "<name>/<category>" (inp_former/settings.py)
    sources: tuple[dict[str, str], ...] = ()

    def __post_init__(self) -> None:
        _tuple(self, "categories")
        _tuple(self, "sources")
        object.__setattr__(self, "root", str(self.root))
        object.__setattr__(self, "setting", choice(Setting, self.setting, "setting"))
        _positive(self, "shots", minimum=0)


Section = TypeVar("Section")


def overlay(section: Section, **given: Any) -> Section:
    """``section`` with the values that were given (not None) put over it: a front end passes every
    option it has, defaulting to None for 'not given', and the dataclass's defaults stand."""
    changes = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(section, **changes) if changes else section


def plain(value: Any) -> Any:
    """JSON- and weights_only-friendly values: enums as strings, tuples as lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def updated(self, model: dict[str, Any] | None = None, train: dict[str, Any] | None = None,
                data: dict[str, Any] | None = None) -> "RunConfig":
        """A copy with some fields of some sections changed: ``cfg.updated(train={"iters": 10})``."""
        return RunConfig(model=dataclasses.replace(self.model, **(model or {})),
                         train=dataclasses.replace(self.train, **(train or {})),
                         data=dataclasses.replace(self.data, **(data or {})))

    def to_dict(self) -> dict[str, Any]:
        return {name: {f.name: plain(getattr(getattr(self, name), f.name))
                       for f in dataclasses.fields(getattr(self, name))} for name in ("model", "train", "data")}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], saved: bool = False) -> "RunConfig":
        """The config of a dict (``to_dict``'s form; missing fields take their defaults).

        ``saved``: ``raw`` is the config stored with a checkpoint or a training state, which always
        holds every field. Older versions wrote configs that today's rules read differently:

        - a CNN config without ``encoder_padding`` was trained without padding: rebuilt so, not with
          today's default;
        - a DINOv2 config with CNN-only fields (``token_stride`` ...) had them ignored in training:
          they are dropped, not refused.
        """
        model = dict(raw.get("model", {}))
        if saved:
            from inp_former.encoders.cnn import timm_name_of

            if timm_name_of(str(model.get("encoder", ModelConfig.encoder))) is not None:
                model.setdefault("encoder_padding", 0)
            else:
                model.update({name: None for name in CNN_ONLY_FIELDS if name in model})

        def build(kind: type, values: dict[str, Any]) -> Any:
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise ConfigError(f"config: unknown {kind.__name__} fields {sorted(unknown)}", arg="config")
            return kind(**values)

        return cls(model=build(ModelConfig, model),
                   train=build(TrainConfig, raw.get("train", {})),
                   data=build(DataConfig, raw.get("data", {})))

    def save_json(self, path: Path) -> None:
        from inp_former.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


def resolve_device(device: Any = "auto") -> "torch.device":  # noqa: F821 - torch imported lazily
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N`` as a torch.device."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r}: expected auto, cpu, cuda or cuda:N", arg="device") from None
    if chosen.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: expected auto, cpu, cuda or cuda:N", arg="device")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device}: no CUDA GPU is available here", arg="device")
    return chosen
