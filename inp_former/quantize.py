"""INT8 ONNX for CPU deployment: static quantisation with ONNX Runtime, calibrated on normal images,
checked on labelled images before it is written.

What is quantised: the matrix products and convolutions of the trained part of the model
(bottleneck, INP extractor, decoder), weights int8 per output channel, activations uint8 with
ranges observed on the calibration images (QDQ format, which ONNX Runtime fuses into integer
kernels: VNNI / AMX-INT8 where the CPU has them). What is not:

- the frozen encoder: quantising it too lost 1.0-1.8 points of image AUROC on the demo (every
  calibration method ONNX Runtime offers: min-max, percentile, entropy; with or without the
  depthwise convolutions) for no measurable speed over quantising the rest, since with the CNN
  encoder the decoder holds most of the work (docs/performance.md);
- the scoring after the model (the ``1 - cos`` map, its ``G A G^T`` upsampling and the top-k
  score): the map is not itself rounded to 8 bits.

The check compares the int8 model with the fp32 export on the check images: the largest map
difference and the image AUROC (the mean over categories, as the paper reports it). A model whose
AUROC drops by more than ``MAX_AUROC_DROP`` points is not written unless forced.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from inp_former.errors import ConfigError

MAX_AUROC_DROP = 1.0          # points of image AUROC the int8 model may lose against fp32
CALIBRATION_IMAGES = 32       # normal images whose activation ranges set the int8 scales
QUANTISED_OPS = ("Conv", "MatMul", "Gemm")
MODEL_SCOPE = "/model/"              # ONNX node names of the model inside the exported graph (export.py)
KEPT_FP32 = ("/model/encoder/",)     # the frozen encoder stays fp32 (see above)


@dataclass
class Int8Check:
    """The int8 model against the fp32 export on the same check images."""
    images: int
    categories: list[str]
    auroc_fp32: float             # mean image AUROC over categories, in points
    auroc_int8: float
    max_map_diff: float           # largest |map_int8 - map_fp32|
    map_scale: float              # largest |map_fp32|: the difference's yardstick

    @property
    def auroc_drop(self) -> float:
        return self.auroc_fp32 - self.auroc_int8

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "auroc_drop": self.auroc_drop}


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _batches(images: Sequence[np.ndarray], size: int) -> Iterable[np.ndarray]:
    for start in range(0, len(images), size):
        yield np.stack(images[start:start + size])


def quantize_onnx(fp32_path: Path, int8_path: Path, calibration: Sequence[np.ndarray]) -> list[str]:
    """Write the int8 model of the fp32 export ``fp32_path`` to ``int8_path``; ``calibration``:
    preprocessed normal images (3, H, W) float32. Returns the names of the quantised nodes."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ConfigError("calibration: no normal images to calibrate the int8 scales on", arg="calibration")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": image[None]} for image in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="inpctl-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))   # shape inference + graph clean-up, as ORT advises
        graph = onnx.load(str(prepared)).graph
        nodes = [n.name for n in graph.node if n.op_type in QUANTISED_OPS and n.name.startswith(MODEL_SCOPE)
                 and not n.name.startswith(KEPT_FP32)]
        staged = Path(tmp) / "int8.onnx"
        quantize_static(str(prepared), str(staged), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=nodes,
                        op_types_to_quantize=list(QUANTISED_OPS))
        int8_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(int8_path))
    return nodes


def run_onnx(path: Path, images: Sequence[np.ndarray], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(maps, scores) of an exported model on preprocessed images."""
    session = _session(path)
    outputs = [session.run(["map", "score"], {"image": batch}) for batch in _batches(images, batch_size)]
    return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])


def mean_category_auroc(labels: np.ndarray, scores: np.ndarray, categories: np.ndarray) -> float:
    """Image AUROC in points, averaged over the categories that have both normal and anomalous images."""
    from sklearn.metrics import roc_auc_score

    values = [roc_auc_score(labels[categories == c], scores[categories == c]) for c in sorted(set(categories))
              if len(set(labels[categories == c])) == 2]
    return 100.0 * float(np.mean(values)) if values else math.nan


def check_int8(fp32_path: Path, int8_path: Path, images: Sequence[np.ndarray], labels: Sequence[int],
               categories: Sequence[str], batch_size: int = 16) -> Int8Check:
    """Both models on the same labelled images: image AUROC of each and the largest map difference."""
    labels_np, categories_np = np.asarray(labels), np.asarray(categories)
    maps32, scores32 = run_onnx(fp32_path, images, batch_size)
    maps8, scores8 = run_onnx(int8_path, images, batch_size)
    return Int8Check(len(images), sorted(set(categories)), mean_category_auroc(labels_np, scores32, categories_np),
                     mean_category_auroc(labels_np, scores8, categories_np), float(np.abs(maps8 - maps32).max()),
                     float(np.abs(maps32).max()))


def refuse_if_worse(check: Int8Check, force: bool, limit: float = MAX_AUROC_DROP) -> None:
    """A ConfigError (nothing written) when the int8 model loses more than ``limit`` AUROC points."""
    if math.isnan(check.auroc_drop):
        if not force:
            raise ConfigError(f"int8: the {check.images} check images hold no category with both normal and "
                              "anomalous images, so the accuracy of the int8 model cannot be checked; give "
                              "check_data with a test split, or force", arg="int8", others=("check_data", "force"))
        return
    if check.auroc_drop > limit and not force:
        raise ConfigError(f"int8: image AUROC drops by {check.auroc_drop:.2f} points ({check.auroc_fp32:.2f} fp32 -> "
                          f"{check.auroc_int8:.2f} int8 on {check.images} check images), more than {limit:g}; the "
                          "int8 model was not written; force writes it anyway", arg="int8", others=("force",))


def evenly_spaced(items: Sequence[Any], count: int) -> list[Any]:
    """At most ``count`` of ``items``, spread over all of them (deterministic)."""
    if len(items) <= count:
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]


def calibration_images(cfg: Any, folder: Path | None, count: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """Preprocessed normal images for the int8 scales: every image under ``folder`` (recursively),
    else the training images of the checkpoint's categories; ``count`` of them, evenly spaced."""
    from inp_former.data import IMAGE_EXTENSIONS, image_transform, load_rgb
    from inp_former.settings import category_samples, resolve_categories

    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"calibration {folder}: no such directory", arg="calibration")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise ConfigError(f"calibration {folder}: no images in it", arg="calibration")
    else:
        paths = sorted(s.path for c in resolve_categories(cfg.data) for s in category_samples(cfg.data, c, "train"))
    transform = image_transform(cfg.model.resize_hw, cfg.model.input_hw)
    return [transform(load_rgb(p)).numpy() for p in evenly_spaced(paths, count)]


def check_images(cfg: Any, per_category: int = 64) -> tuple[list[np.ndarray], list[int], list[str]]:
    """The labelled test images of ``cfg``'s categories (up to ``per_category`` each, evenly spaced,
    normal and anomalous alike): (preprocessed images, labels, categories)."""
    from inp_former.data import image_transform, load_rgb
    from inp_former.settings import category_samples, resolve_categories

    transform = image_transform(cfg.model.resize_hw, cfg.model.input_hw)
    images, labels, categories = [], [], []
    for category in resolve_categories(cfg.data):
        for sample in evenly_spaced(sorted(category_samples(cfg.data, category, "test"), key=lambda s: str(s.path)),
                                    per_category):
            images.append(transform(load_rgb(sample.path)).numpy())
            labels.append(int(sample.label))
            categories.append(category)
    return images, labels, categories


__all__ = ["CALIBRATION_IMAGES", "Int8Check", "MAX_AUROC_DROP", "calibration_images", "check_images", "check_int8",
           "evenly_spaced", "mean_category_auroc", "quantize_onnx", "refuse_if_worse", "run_onnx"]
