"""The inference core: how preprocessed images become anomaly maps and image scores.

Evaluation, prediction, serving, the report and export all score through :func:`score_batch`
(directly, or through :mod:`inp_former.fast_path`, which captures it in CUDA graphs) with the
settings of one :class:`InferenceConfig`. This module imports only the model, the config and the
scoring kernels, so that a server does not pull in training, data or metrics code.
"""
from __future__ import annotations

import os

from dataclasses import dataclass
from typing import Any

import torch

from inp_former.config import Choice, MapMode, ModelConfig, Precision, RunConfig, choice
from inp_former.errors import ConfigError
from inp_former.model import INPFormer, INPFormerOutput
from kernels.dispatch import MODES as KERNEL_MODES
from kernels.scoring import anomaly_maps_and_scores, upsample_token_map


def choose_precision(precision: Precision | str | None, device: torch.device | str) -> tuple[Precision, str]:
    """(the precision scoring runs with on ``device``, why): the one place this rule is written.

    - ``fp32`` / ``bf16``: as given.
    - ``auto`` (the default; None means it too) is ``$INPCTL_RUNTIME`` where that names torch or
      openvino (the reason then says so); else bf16 autocast on CUDA, and on a CPU with native
      bf16 matrix units (AMX-BF16 or AVX-512-BF16, read at run time:
      :func:`inp_former.runtime.cpu_capabilities`); fp32 on other CPUs, where bf16 autocast runs
      but is slower than fp32. The fp32 path is the one checked against the authors' code.
    """
    precision = Precision.AUTO if precision is None else Precision(precision)
    if precision != Precision.AUTO:
        return precision, "given"
    if torch.device(device).type == "cuda":
        return Precision.BF16, "auto: CUDA"
    from inp_former.runtime import cpu_capabilities

    unit = cpu_capabilities().native_bf16
    if unit is not None:
        return Precision.BF16, f"auto: CPU has {unit}"
    return Precision.FP32, "auto: CPU has no native bf16 unit (AMX-BF16 or AVX-512-BF16)"


def resolve_precision(precision: Precision | str | None, device: torch.device | str) -> Precision:
    """The precision scoring runs with on ``device`` (:func:`choose_precision` without the reason)."""
    return choose_precision(precision, device)[0]


class Runtime(Choice):
    AUTO = "auto"            # OpenVINO where it is measured faster (choose_runtime), else torch
    TORCH = "torch"          # PyTorch eager (or CUDA graphs with fast): the reference with fp32
    OPENVINO = "openvino"    # the ONNX export compiled by OpenVINO's CPU plugin (inp_former/openvino_runtime.py)


OPENVINO_INSTALL = "pip install 'inpctl[openvino]'"
# the map modes ExportableINPFormer (inp_former/export.py) builds a graph for
EXPORTED_MAP_MODES = (MapMode.DECODER, MapMode.PROTOTYPE)


def missing_packages(*names: str) -> list[str]:
    """Those of the packages ``names`` that cannot be imported here, in order."""
    missing = []
    for name in names:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def openvino_missing() -> str | None:
    """Which of the packages the OpenVINO runtime needs (openvino; onnx, through which the model is
    exported) cannot be imported here, as ``openvino and onnx``; None when both can."""
    return " and ".join(missing_packages("openvino", "onnx")) or None


def openvino_version() -> str | None:
    """The installed OpenVINO's full version (with its build string), or None."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


def openvino_release() -> str | None:
    """The installed OpenVINO's release (``2026.4.1``, without the build string), or None."""
    version = openvino_version()
    return None if version is None else version.split("-")[0]


def export_refusal(model: ModelConfig) -> str | None:
    """Why :func:`inp_former.export.export_onnx` refuses a model of this config, or None: a tiled
    model's graph would be one tile's, while the cutting and blending live outside it."""
    if model.tile is not None:
        return f"a tiled model (tile {model.tile} px) is not exported to ONNX"
    return None


def _export_refusal(model: ModelConfig | None, map_mode: MapMode | str) -> str | None:
    """Why the OpenVINO runtime cannot take this model, or None: :func:`export_refusal`, and only
    two map modes have a graph."""
    refusal = export_refusal(model) if model is not None else None
    if refusal:
        return refusal
    if MapMode(map_mode) not in EXPORTED_MAP_MODES:
        return f"map {map_mode} has no exported graph"
    return None


RUNTIME_VARIABLE = "INPCTL_RUNTIME"   # auto|torch|openvino: what runtime auto means in this environment


def choose_runtime(runtime: Runtime | str | None, precision: Precision | str | None, device: torch.device | str,
                   model: ModelConfig | None = None, map_mode: MapMode | str = MapMode.DECODER,
                   kernels: str | None = None) -> tuple[Runtime, str]:
    """(what runs the model on ``device``, why): the one place this rule is written.

    - ``torch``: always. ``openvino``: the ONNX export compiled by OpenVINO for the CPU; a
      :class:`ConfigError` naming ``runtime`` when OpenVINO (or onnx) is not installed, the device is
      not a CPU, the model cannot be exported (a tiled model) or ``kernels`` are forced.
    - ``auto`` (the default; None means it too) is ``$INPCTL_RUNTIME`` where that names torch or
      openvino (the reason then says so); else OpenVINO only where it was measured faster than
      torch's default: a CPU whose precision resolves to bf16 (:func:`choose_precision`) with a native
      bf16 unit (OpenVINO then computes in bf16; docs/performance.md "OpenVINO on Intel CPUs"),
      OpenVINO installed, and a model the export takes. Torch otherwise, and always for fp32: the
      fp32 reference path stays torch eager, the path checked against the authors' code.
    """
    runtime = Runtime.AUTO if runtime is None else choice(Runtime, runtime, "runtime")
    given = "given"
    if runtime == Runtime.AUTO and os.environ.get(RUNTIME_VARIABLE, "").strip() not in ("", "auto"):
        # the environment's default for auto (e.g. a test suite that scores with torch unless told)
        runtime = choice(Runtime, os.environ[RUNTIME_VARIABLE].strip(), RUNTIME_VARIABLE)
        given = f"environment ({RUNTIME_VARIABLE}={runtime})"
    if runtime == Runtime.TORCH:
        return runtime, given
    device_type = torch.device(device).type
    refusal = _export_refusal(model, map_mode)
    if runtime == Runtime.OPENVINO:
        missing = openvino_missing()
        if missing:
            raise ConfigError(f"runtime openvino: {missing} not installed ({OPENVINO_INSTALL})", arg="runtime")
        if device_type != "cpu":
            raise ConfigError(f"runtime openvino: runs on a CPU, not on device {device} (use runtime torch there, "
                              "or device cpu)", arg="runtime")
        if refusal:
            raise ConfigError(f"runtime openvino: {refusal} (use runtime torch)", arg="runtime")
        if kernels is not None:
            raise ConfigError(f"runtime openvino: kernels {kernels} run in torch only (use runtime torch)",
                              arg="runtime")
        return runtime, given
    if device_type != "cpu":
        return Runtime.TORCH, f"auto: device {device_type} (OpenVINO runs on CPUs)"
    if choose_precision(precision, device) == (Precision.FP32, "given"):
        return Runtime.TORCH, "auto: fp32 asked for (the reference path)"
    from inp_former.runtime import cpu_capabilities

    unit = cpu_capabilities().native_bf16
    if unit is None:   # auto scores in fp32 here; bf16 asked for is emulated, and OpenVINO would compute in f32
        return Runtime.TORCH, "auto: CPU has no native bf16 unit (AMX-BF16 or AVX-512-BF16)"
    if refusal:
        return Runtime.TORCH, f"auto: {refusal}"
    if kernels is not None:
        return Runtime.TORCH, f"auto: kernels {kernels} forced (they run in torch)"
    missing = openvino_missing()
    if missing:
        return Runtime.TORCH, f"auto: {missing} not installed ({OPENVINO_INSTALL})"
    return Runtime.OPENVINO, f"auto: CPU has {unit} and OpenVINO {openvino_release()} is installed"


@dataclass(frozen=True)
class InferenceConfig:
    """How images are scored; the same settings for ``eval``, ``predict``, ``serve`` and the API.

    ``precision`` ``auto`` lets :func:`choose_precision` pick for the device (:meth:`precision_on`).
    ``runtime`` ``auto`` lets :func:`choose_runtime` pick torch or OpenVINO for the device and model
    (the scorer records what it picked: ``scorer.runtime``, ``scorer.runtime_reason``).
    ``kernels`` forces a :func:`kernels.dispatch.kernel_mode` around every batch (None: the
    dispatcher's own choice, ``INPCTL_KERNELS`` or ``auto``).
    """
    precision: Precision = Precision.AUTO
    map_mode: MapMode = MapMode.DECODER
    fast: bool = False                    # CUDA: the fused, graph-captured path (inp_former/fast_path.py)
    batch_size: int = 16                  # images per forward pass
    kernels: str | None = None
    runtime: Runtime = Runtime.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", choice(Precision, self.precision or Precision.AUTO, "precision"))
        object.__setattr__(self, "runtime", choice(Runtime, self.runtime or Runtime.AUTO, "runtime"))
        missing = openvino_missing() if self.runtime == Runtime.OPENVINO else None
        if missing:   # asked for: said before any model is loaded (the device is checked by choose_runtime)
            raise ConfigError(f"runtime openvino: {missing} not installed ({OPENVINO_INSTALL})", arg="runtime")
        object.__setattr__(self, "map_mode", choice(MapMode, self.map_mode, "map_mode"))
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size {self.batch_size}: must be at least 1", arg="batch_size")
        if self.kernels is not None and self.kernels not in KERNEL_MODES:
            raise ConfigError(f"kernels {self.kernels!r}: expected one of {', '.join(KERNEL_MODES)}", arg="kernels")

    def precision_on(self, device: torch.device | str) -> Precision:
        """The precision used on ``device`` (:func:`choose_precision`)."""
        return resolve_precision(self.precision, device)

    def precision_reason(self, device: torch.device | str) -> str:
        """Why :meth:`precision_on` is what it is (``auto: CPU has AMX-BF16``), for every output."""
        return choose_precision(self.precision, device)[1]

    def describe(self, device: torch.device | str) -> dict[str, Any]:
        """The settings as recorded beside results (metrics meta, predictions.json, serve's model block)."""
        precision, reason = choose_precision(self.precision, device)
        return {"precision": str(precision), "precision_reason": reason, "map_mode": str(self.map_mode),
                "fast": self.fast, "batch_size": self.batch_size}


def autocast(device: torch.device | str, precision: Precision | str, cache: bool = True):
    """bf16 autocast, or none; ``cache=False`` recasts weights at every use (CUDA-graph capture)."""
    device_type = torch.device(device).type
    if Precision(precision) == Precision.BF16:
        return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=cache)
    return torch.autocast(device_type, enabled=False)


def score_batch(model: INPFormer, images: torch.Tensor, cfg: RunConfig, precision: Precision | str = "fp32",
                map_mode: MapMode | str = "decoder",
                autocast_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor, INPFormerOutput]:
    """Anomaly maps (B, *cfg.model.map_hw) and image scores (B,) of preprocessed images (B, 3, H, W),
    and the model's outputs (tokens, INPs) for callers that want more than the map.

    ``autocast_cache=False`` for CUDA-graph capture (inp_former/fast_path.py)."""
    mc = cfg.model
    map_mode = MapMode(map_mode)
    with torch.no_grad():
        with autocast(images.device, precision, cache=autocast_cache):
            out = model(images)
    sizes = dict(image_size=tuple(images.shape[-2:]), out_size=mc.map_hw, kernel_size=mc.blur_kernel,
                 sigma=mc.blur_sigma, grid=out.grid)
    if map_mode == MapMode.DECODER:
        maps, scores = anomaly_maps_and_scores(out.encoder_groups, out.decoder_groups, top_fraction=mc.top_fraction,
                                               **sizes)
    else:
        maps = upsample_token_map(out.prototype_distance.float(), **sizes)
        k = max(1, int(maps[0].numel() * mc.top_fraction))
        scores = maps.flatten(1).topk(k, dim=1).values.mean(1)
    return maps, scores, out


__all__ = ["InferenceConfig", "Runtime", "autocast", "choose_precision", "choose_runtime", "export_refusal",
           "resolve_precision", "score_batch"]
