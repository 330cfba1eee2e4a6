"""The ONNX rows of ``inpctl bench model --device cpu``: the model as ``inpctl export`` writes it,
fp32 and int8 (:mod:`inp_former.quantize`), run by ONNX Runtime on the CPU; and the OpenVINO rows:
the same two files compiled by OpenVINO for its CPU plugin (an optional extra, ``inpctl[openvino]``).

The int8 model is calibrated on the benchmark's own random images: with random weights only its
speed means anything (its accuracy is what ``inpctl export --int8`` checks on real images).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from inp_former.config import RunConfig
from inp_former.inference import missing_packages, openvino_release, openvino_version
from inp_former.model import INPFormer

CALIBRATION_BATCHES = 4   # random images the int8 scales are set on (speed only: random weights)


def _missing(packages: tuple[str, ...], extra: str) -> str | None:
    """``skipped: ... not installed (pip install 'inpctl[extra]')`` naming those of ``packages`` that
    cannot be imported, or None when all can."""
    missing = missing_packages(*packages)
    return f"skipped: {' and '.join(missing)} not installed (pip install 'inpctl[{extra}]')" if missing else None


def onnx_missing() -> str | None:
    """Why the ONNX rows cannot run here (one line), or None when onnx and onnxruntime are installed."""
    return _missing(("onnx", "onnxruntime"), "export")


def openvino_missing() -> str | None:
    """Why the OpenVINO rows cannot run here (one line), or None when openvino is installed with the
    packages that write the graphs it runs (onnx, and onnxruntime's quantisation tools)."""
    return _missing(("onnx", "onnxruntime", "openvino"), "openvino")


class OnnxModels:
    """The fp32 export and its int8 quantisation in a temporary folder, with one ONNX Runtime
    session each; ``close()`` removes the folder."""

    def __init__(self, model: INPFormer, cfg: RunConfig, calibration: torch.Tensor,
                 tick: Callable[[str], None] = lambda name: None) -> None:
        from inp_former.export import export_onnx
        from inp_former.quantize import quantize_onnx

        self._folder = tempfile.TemporaryDirectory(prefix="inpctl-bench-onnx-")
        folder = Path(self._folder.name)
        self.paths = {"onnx fp32": folder / "model.onnx", "onnx int8": folder / "model.int8.onnx"}
        tick("exporting ONNX fp32")
        export_onnx(model, cfg, self.paths["onnx fp32"])
        tick("quantising ONNX int8")
        quantize_onnx(self.paths["onnx fp32"], self.paths["onnx int8"], list(calibration.numpy()))
        self.sessions = {name: _session(path) for name, path in self.paths.items()}

    def scorer(self, name: str) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``maps, scores = f(images)`` through the session of row ``name``."""
        session = self.sessions[name]

        def score(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            maps, scores = session.run(["map", "score"], {"image": np.ascontiguousarray(images.numpy())})
            return torch.from_numpy(maps), torch.from_numpy(scores)
        return score

    def close(self) -> None:
        self.sessions.clear()
        self._folder.cleanup()


class OpenVinoModels:
    """The two ONNX files of :class:`OnnxModels` compiled by OpenVINO for the CPU as they are
    (dynamic batch, the plugin's default precision: bf16 on a CPU with native bf16 units; the QDQ
    graph's quantised products run in int8), each run as the default scorer runs its network:
    batches split over OpenVINO's streams (:class:`inp_former.openvino_runtime.CompiledNetwork`)."""

    ROWS = {"openvino": "onnx fp32", "openvino int8": "onnx int8"}   # row: the ONNX row whose file it compiles

    def __init__(self, onnx: OnnxModels, tick: Callable[[str], None] = lambda name: None) -> None:
        from inp_former.openvino_runtime import CompiledNetwork

        tick("compiling OpenVINO models")
        self.networks = {row: CompiledNetwork(onnx.paths[source]) for row, source in self.ROWS.items()}

    def note(self, name: str) -> str:
        """What row ``name`` computes in: the compiled model's INFERENCE_PRECISION_HINT, its streams
        and, where the runtime model says, the precision each matrix product ran in."""
        release = openvino_release() or ""
        note = (f"{name}: OpenVINO {release}, INFERENCE_PRECISION_HINT {self.precision(name)}, "
                f"{self.networks[name].streams} streams")
        counts = _matrix_product_precisions(self.networks[name].compiled)
        if counts:
            note += "; matrix products: " + ", ".join(f"{n} {p}" for p, n in counts.items())
        return note

    def precision(self, name: str) -> str:
        """The compiled model's INFERENCE_PRECISION_HINT, e.g. ``bf16`` or ``f32``."""
        return self.networks[name].property("INFERENCE_PRECISION_HINT").get_type_name()

    def scorer(self, name: str) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``maps, scores = f(images)`` through the network of row ``name``."""
        network = self.networks[name]

        def score(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            maps, scores = network(images.numpy(), ["map", "score"])
            return torch.from_numpy(maps.copy()), torch.from_numpy(scores.copy())   # the next call reuses them
        return score

    def close(self) -> None:
        for network in self.networks.values():
            network.close()
        self.networks.clear()


def _matrix_product_precisions(compiled: Any) -> dict[str, int]:
    """How many matrix products (FullyConnected, MatMul, Convolution) of the compiled model ran in
    each precision, from its runtime model; empty where this OpenVINO does not say."""
    counts: dict[str, int] = {}
    try:
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" not in info or "runtimePrecision" not in info:
                continue
            if info["layerType"].astype(str) in ("FullyConnected", "MatMul", "Convolution"):
                precision = info["runtimePrecision"].astype(str)
                precision = "int8" if precision in ("u8", "i8") else precision   # int8 kernels, by input type
                counts[precision] = counts.get(precision, 0) + 1
    except (KeyError, RuntimeError, AttributeError):   # rt_info keys are the plugin's, not a stable API
        return {}
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


__all__ = ["CALIBRATION_BATCHES", "OnnxModels", "OpenVinoModels", "onnx_missing", "openvino_missing",
           "openvino_version"]
