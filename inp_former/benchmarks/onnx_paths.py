"""The ONNX rows of ``inpctl bench model --device cpu``: the model as ``inpctl export`` writes it,
fp32 and int8 (:mod:`inp_former.quantize`), run by ONNX Runtime on the CPU.

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
from inp_former.model import INPFormer

CALIBRATION_BATCHES = 4   # random images the int8 scales are set on (speed only: random weights)


def onnx_missing() -> str | None:
    """Why the ONNX rows cannot run here (one line), or None when onnx and onnxruntime are installed."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        return f"skipped: {' and '.join(missing)} not installed (pip install 'inpctl[export]')"
    return None


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


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


__all__ = ["CALIBRATION_BATCHES", "OnnxModels", "onnx_missing"]
