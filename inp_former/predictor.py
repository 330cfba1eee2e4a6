"""Score new images with a trained model: the Python API behind ``inpctl predict``.

>>> from inp_former.predictor import Predictor
>>> predictor = Predictor.from_checkpoint("runs/mvtec-base/checkpoint.pt")   # doctest: +SKIP
>>> p = predictor.predict("part_0042.png")                                   # doctest: +SKIP
>>> p.score, p.label, p.map.shape                                            # doctest: +SKIP
(0.0731, 1, (256, 256))

``predict`` takes a file path, a PIL image, an ``np.ndarray`` (H, W, 3) uint8 (also (H, W) grayscale,
(H, W, 4) RGBA, or floats in [0, 1]) or a list of these (then it returns a list). Images get the
checkpoint's preprocessing (resize to ``cfg.model.resize``, centre crop ``cfg.model.crop``, ImageNet
normalisation); the map covers that centre crop at ``cfg.model.map_size`` x ``map_size``. A tiled
model (``cfg.model.tile``, :mod:`inp_former.tiling`) scores each image at its own resolution as
overlapping tiles, in batches of ``batch_size`` tiles; its map is (H, W), the whole image's pixels.

The label is :class:`inp_former.thresholds.DecisionRule`'s, the one every surface applies: the
``threshold`` given here, else the checkpoint's stored threshold of ``category`` (if given), else
the checkpoint's pooled threshold (``inpctl eval`` stores them); without any of them ``label`` is
None. Anomalous means ``score >= threshold``. The raw score is always kept; ``normalized_score``
maps the threshold to 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image

from inp_former.categories import CategoryReferences, CategoryResolver
from inp_former.config import MapMode, Precision, RunConfig, resolve_device
from inp_former.data.geometry import Geometry, stretch_warning
from inp_former.inference import InferenceConfig
from inp_former.model import INPFormer
from inp_former.thresholds import Calibration, Decision, DecisionRule, normalize_score, read_calibration

ImageLike = Union[str, Path, Image.Image, np.ndarray]


@dataclass
class Prediction:
    """The result for one image. ``map`` is (map_size, map_size) float32 over the centre crop; a
    tiled model's is (H, W) over the whole image (``tiled``)."""

    score: float                       # raw image score: mean of the top 1% of the map
    map: np.ndarray                    # raw anomaly map (no normalisation)
    label: int | None                  # 1 anomalous (score >= threshold), 0 normal, None without threshold
    threshold: float | None            # the image threshold used
    normalized_score: float | None     # (score - threshold) / (score range) + 0.5, clipped to [0, 1]
    path: str | None = None            # the file, when the input was one
    pixel_threshold: float | None = None
    threshold_source: str | None = None    # "given" | "checkpoint" | None
    category: str | None = None            # whose threshold was used (None: the pooled one)
    category_source: str | None = None     # "given" | "path" | "image" | "pooled" | "only" | None
    embedding: np.ndarray | None = None    # (C,): what the category rule compares (inp_former/categories.py)
    tiled: bool = False                    # a tiled model's: ``map`` is (H, W), the image's own pixels

    @property
    def decision(self) -> Decision:
        return Decision(self.label, self.threshold, self.threshold_source, self.category, self.category_source)

    @property
    def is_anomalous(self) -> bool | None:
        return None if self.label is None else bool(self.label)

    def stats(self) -> dict[str, float | None]:
        """Statistics of the map: min, max, mean, p99 and, with a pixel threshold, the fraction of
        pixels at or above it (the predicted anomalous area)."""
        return map_statistics(self.map, self.pixel_threshold)

    def mask(self, original_size: tuple[int, int], geometry: Geometry, threshold: float | None = None) -> Image.Image:
        """The predicted anomalous region at the input image's resolution: a mode "L" image, 255 where
        the map, brought back onto the image of ``original_size`` (width, height) by ``geometry``
        (:meth:`~inp_former.data.geometry.Geometry.paste`, bilinear), is >= ``threshold`` (default:
        the pixel threshold), 0 elsewhere, also where the model never looked (outside the crop).
        :meth:`Predictor.mask` passes the predictor's geometry."""
        threshold = self.pixel_threshold if threshold is None else threshold
        if threshold is None:
            raise ValueError("mask: no pixel threshold given and none stored (evaluate the checkpoint with "
                             "save_thresholds to store one)")
        values = (self.map if self.tiled  # already the image's own pixels
                  else geometry.paste(self.map, original_size, fill=np.nan, mode="bilinear"))  # NaN >= t is False
        return Image.fromarray(np.where(values >= threshold, 255, 0).astype(np.uint8))


def map_statistics(anomaly_map: np.ndarray, pixel_threshold: float | None = None) -> dict[str, float | None]:
    flat = np.asarray(anomaly_map, dtype=np.float64).reshape(-1)
    return {"map_min": float(flat.min()), "map_max": float(flat.max()), "map_mean": float(flat.mean()),
            "map_p99": float(np.quantile(flat, 0.99)),
            "anomalous_area": None if pixel_threshold is None else float((flat >= pixel_threshold).mean())}


def to_pil(image: ImageLike) -> Image.Image:
    """A path, PIL image or array as an 8-bit RGB PIL image (raises DatasetError/ValueError if it cannot)."""
    from inp_former.data import load_rgb

    if isinstance(image, (str, Path)):
        return load_rgb(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
            raise ValueError(f"image array of shape {image.shape}: expected (H, W, 3), (H, W, 4) or (H, W) "
                             "(channels last)")
        if array.dtype != np.uint8:
            if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
                raise ValueError(f"image array of dtype {array.dtype}: expected uint8 or floats in [0, 1]")
            array = array.astype(np.float64)
            if np.issubdtype(image.dtype, np.floating) and array.max(initial=0) <= 1.0:
                array = array * 255.0
            array = np.clip(array + 0.5, 0, 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 4:
            array = array[..., :3]
        return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    raise ValueError(f"cannot read an image from a {type(image).__name__}: expected a path, PIL image or array")


class Predictor:
    """A loaded model, its preprocessing, its scoring settings and its decision rule; scores images,
    arrays and batches."""

    def __init__(self, model: INPFormer, cfg: RunConfig, calibration: Calibration | None = None,
                 inference: InferenceConfig = InferenceConfig(), device: str | torch.device | None = "auto",
                 threshold: float | None = None, category: str | None = None,
                 references: CategoryReferences | None = None, latency: bool = False) -> None:
        from inp_former.data import image_transform
        from inp_former.fast_path import scoring_function
        from inp_former.tiling import to_uint8_tensor

        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.cfg, self.inference, self.calibration = cfg, inference, calibration
        self.decision = DecisionRule(calibration, threshold)
        if calibration is not None:
            self.decision.check_category(category)
        self.category = category
        # no category given: each image's from its path, else from its look (inp_former/categories.py)
        self.resolver = CategoryResolver(self.decision.categories, references)
        self.tiled = cfg.model.tile is not None
        # a tiled model keeps each image whole, as uint8; its tiles are normalised batch by batch
        self.transform = to_uint8_tensor if self.tiled else image_transform(cfg.model.resize_hw, cfg.model.input_hw)
        # images -> (maps, scores): torch eager, on CUDA with ``fast`` the graph-captured fast path,
        # or OpenVINO on a CPU where inference.choose_runtime picks it
        # (``latency``: tuned for images that come one at a time, as in serve: pass it when scoring
        # image by image through OpenVINO, where batch scoring splits each call over streams;
        # fast_path.scoring_function)
        self.scorer = scoring_function(self.model, cfg, inference, self.device, latency=latency)
        self.seen = self.stretched = 0            # images preprocessed; of them stretched (keep-aspect)
        self.meta: dict = {}                     # the checkpoint's metadata (from_checkpoint)
        self.checkpoint: Path | None = None       # the file it came from (from_checkpoint)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = "auto",
                        inference: InferenceConfig = InferenceConfig(), threshold: float | None = None,
                        category: str | None = None, encoder_weights: str | None = None,
                        allow_encoder_mismatch: bool = False, latency: bool = False) -> "Predictor":
        """Load an inpctl checkpoint (or the authors' ``model.pth``) with its stored calibration of
        ``inference.map_mode``.

        The encoder must be the one the model was trained with (see
        :func:`inp_former.checkpoint.load_checkpoint`); ``meta`` keeps the checkpoint's metadata."""
        from inp_former.checkpoint import load_checkpoint

        chosen = resolve_device(device)
        model, cfg, meta = load_checkpoint(Path(path), chosen, encoder_weights, allow_encoder_mismatch)
        predictor = cls(model, cfg, read_calibration(meta, str(inference.map_mode)), inference, chosen, threshold,
                        category, CategoryReferences.from_meta(meta), latency)
        predictor.meta, predictor.checkpoint = meta, Path(path)
        return predictor

    # -- settings
    @property
    def map_mode(self) -> MapMode:
        return self.inference.map_mode

    @property
    def precision(self) -> Precision:
        """The precision actually used on this predictor's device."""
        return self.inference.precision_on(self.device)

    @property
    def precision_reason(self) -> str:
        """Why :attr:`precision` (``auto: CPU has AMX-BF16``, ``given``, ...)."""
        return self.inference.precision_reason(self.device)

    @property
    def runtime(self) -> str:
        """What runs the model: ``torch`` or ``openvino`` (:func:`inp_former.inference.choose_runtime`)."""
        return self.scorer.runtime

    @property
    def runtime_reason(self) -> str | None:
        """Why :attr:`runtime` (``auto: CPU has AMX-BF16 and OpenVINO 2026.4.1 is installed``, ``given``, ...)."""
        return self.scorer.runtime_reason

    @property
    def batch_size(self) -> int:
        return self.inference.batch_size

    @property
    def threshold(self) -> float | None:
        """The default image threshold (of ``category`` if given, else the pooled one)."""
        return self.decision.threshold(self.category)[0]

    @property
    def threshold_source(self) -> str | None:
        return self.decision.threshold(self.category)[1]

    @property
    def pixel_threshold(self) -> float | None:
        return self.decision.pixel_threshold(self.category)

    @property
    def category_warning(self) -> str | None:
        """One line for a person when images may fall back to the pooled threshold: a multi-category
        checkpoint without the references the image rule needs (written before they existed)."""
        if self.category is not None or self.decision.given is not None or not self.resolver.needs_references:
            return None
        where = self.checkpoint or "this checkpoint"
        return (f"{where} holds no category references (it predates them): an image whose path names no trained "
                f"category ({', '.join(self.decision.categories)}) is labelled with the pooled threshold; add "
                f"them with: inpctl eval --ckpt {where} --save-thresholds")

    @property
    def precision_warning(self) -> str | None:
        """One line when the stored thresholds were calibrated on scores of another precision (or
        runtime, where the calibration records one) than this predictor scores with (a threshold
        follows the path it was calibrated on)."""
        source = (self.calibration.source or {}) if self.calibration is not None else {}
        calibrated, now = source.get("precision"), str(self.precision)
        if self.decision.given is not None:
            return None
        where = self.checkpoint or "this checkpoint"
        runtime = source.get("runtime")
        if (calibrated is None or calibrated == now) and runtime is not None and runtime != self.runtime:
            return (f"the thresholds in {where} were calibrated on scores of the {runtime} runtime; this run scores "
                    f"with {self.runtime} ({self.runtime_reason}), so an image scored within rounding of its threshold "
                    f"may get another label; recalibrate with: inpctl eval --ckpt {where} --runtime {self.runtime} "
                    f"--save-thresholds")
        if calibrated is None or calibrated == now:
            return None
        return (f"the thresholds in {where} were calibrated on {calibrated} scores; this run scores in {now} "
                f"({self.precision_reason}), so an image scored within rounding of its threshold may get another "
                f"label; recalibrate for {now} with: inpctl eval --ckpt {where} --precision {now} --save-thresholds")

    def decide(self, score: float, category: str | None = None, path: str | Path | None = None,
               embedding: torch.Tensor | np.ndarray | None = None) -> Decision:
        """The label of ``score``: with the threshold of ``category`` if given (else the predictor's
        own ``category``), else of the category the image's ``path`` or ``embedding`` resolves to
        (:class:`inp_former.categories.CategoryResolver`), else the pooled one."""
        category = category if category is not None else self.category
        if category is not None:
            self.decision.check_category(category)
            return self.decision.decide(score, category, "given")
        if self.decision.given is not None:
            return self.decision.decide(score)
        resolved, how = self.resolver.resolve(path, None if embedding is None else torch.as_tensor(embedding))
        return self.decision.decide(score, resolved, how)

    # -- inputs
    @property
    def map_range(self) -> tuple[float, float] | None:
        """The fixed overlay colour scale stored at calibration, or None."""
        if self.calibration is None or not self.calibration.map_range:
            return None
        lo, hi = self.calibration.map_range
        return float(lo), float(hi)

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """(3, crop, crop) float tensor, normalised as the model was trained; a tiled model's:
        the whole image, (3, H, W) uint8. A keep-aspect model's input is (3, *input_hw): images
        of another aspect ratio are stretched to it, and counted (:attr:`aspect_warning`)."""
        picture = to_pil(image)
        self.seen += 1
        self.stretched += self.cfg.model.stretches((picture.height, picture.width))
        return self.transform(picture)

    @property
    def aspect_warning(self) -> str | None:
        """One line once a keep-aspect model has stretched images of another aspect ratio to its input."""
        if not self.stretched:
            return None
        return stretch_warning(self.stretched, self.seen, "scored", self.cfg.model.input_hw)

    # -- scoring
    def predict(self, image: ImageLike | Sequence[ImageLike]) -> Prediction | list[Prediction]:
        """One image -> one Prediction; a list or tuple of images -> a list of Predictions."""
        if isinstance(image, (list, tuple)):
            return self.predict_batch(image)
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Iterable[ImageLike], batch_size: int | None = None) -> list[Prediction]:
        """Score images in batches of ``batch_size`` (default: the predictor's); a tiled model
        scores one image at a time, in batches of its tiles."""
        items = list(images)
        size = 1 if self.tiled else batch_size or self.batch_size
        out: list[Prediction] = []
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            paths = [str(item) if isinstance(item, (str, Path)) else None for item in chunk]
            out.extend(self.predict_tensor([self.preprocess(item) for item in chunk], paths))
        return out

    def predict_tensor(self, images: torch.Tensor | Sequence[torch.Tensor],
                       paths: Sequence[str | None] | None = None) -> list[Prediction]:
        """Predictions for preprocessed images (:meth:`preprocess`): (B, 3, crop, crop), (3, crop,
        crop) or a list of (3, crop, crop); a tiled model's: (3, H, W) uint8 each, any sizes."""
        if self.tiled:
            return self._predict_tiled([images] if torch.is_tensor(images) and images.dim() == 3 else images, paths)
        images = torch.stack(list(images)) if not torch.is_tensor(images) else images
        if images.dim() == 3:
            images = images.unsqueeze(0)
        maps, scores, embeddings = self.scorer.score(images.to(self.device))
        return self.predictions(maps, scores, paths, embeddings)

    def _predict_tiled(self, images: Sequence[torch.Tensor], paths: Sequence[str | None] | None) -> list[Prediction]:
        from inp_former.tiling import score_image

        out = []
        for index, image in enumerate(images):
            scored = score_image(image, self.cfg.model, self.scorer.score, self.batch_size, self.device)
            out += self.predictions(scored.map[None], scored.score[None], None if paths is None else [paths[index]],
                                    None if scored.embedding is None else scored.embedding[None])
        return out

    def predictions(self, maps: torch.Tensor, scores: torch.Tensor, paths: Sequence[str | None] | None = None,
                    embeddings: torch.Tensor | None = None) -> list[Prediction]:
        """Wrap scorer outputs into Predictions (decision, normalised score)."""
        maps_np = maps.detach().float().cpu().numpy()
        emb_np = None if embeddings is None else embeddings.detach().float().cpu().numpy()
        out = []
        rng = self.calibration.score_range if self.calibration is not None else {}
        for index, score in enumerate(scores.detach().float().cpu().tolist()):
            path = None if paths is None else paths[index]
            embedding = None if emb_np is None else emb_np[index]
            decision = self.decide(score, path=path, embedding=embedding)
            normalized = normalize_score(score, decision.threshold, rng.get("min"), rng.get("max"))
            out.append(Prediction(score=score, map=maps_np[index], label=decision.label, threshold=decision.threshold,
                                  normalized_score=normalized, path=path,
                                  pixel_threshold=self.decision.pixel_threshold(decision.category),
                                  threshold_source=decision.threshold_source, category=decision.category,
                                  category_source=decision.category_source, embedding=embedding,
                                  tiled=self.tiled))
        return out

    # -- pictures
    @property
    def geometry(self) -> Geometry:
        """How an image becomes the model's input, and a map goes back onto the image. A tiled
        model's input is a tile (``Geometry(tile, tile)``); its maps need no geometry (they are the
        image's own pixels, :attr:`Prediction.tiled`)."""
        if self.tiled:
            return Geometry(self.cfg.model.tile, self.cfg.model.tile)
        return Geometry.from_model_config(self.cfg.model)

    def mask(self, image: ImageLike, prediction: Prediction, threshold: float | None = None) -> Image.Image:
        """The binary mask of ``prediction`` at ``image``'s resolution (:meth:`Prediction.mask`):
        ``predictor.mask("part.png", p).save("part_mask.png")``."""
        return prediction.mask(to_pil(image).size, self.geometry, threshold)

    def view(self, image: ImageLike) -> Image.Image:
        """The RGB crop the model sees (resized, centre-cropped, not normalised): what maps cover;
        a tiled model's: the whole image."""
        from inp_former.visualize import map_view

        if self.tiled:
            return to_pil(image)
        return map_view(to_pil(image), self.cfg.model)

    def overlay(self, image: ImageLike, prediction: Prediction,
                value_range: tuple[float, float] | None = None) -> Image.Image:
        """The heatmap of ``prediction`` over ``image`` on the fixed colour scale (``value_range``,
        else the stored one, else 0 .. 2 x threshold, else the map's own range)."""
        from inp_former.visualize import overlay

        return overlay(self.view(image), prediction.map, value_range or self.default_range(prediction.map),
                       pixel_threshold=self.pixel_threshold)

    def default_range(self, anomaly_map: np.ndarray | None = None) -> tuple[float, float]:
        """The overlay scale: stored map range, else [0, 2 x threshold], else the given map's range."""
        if self.map_range is not None:
            return self.map_range
        if self.threshold is not None and self.threshold > 0:
            return 0.0, 2.0 * self.threshold
        if anomaly_map is None:
            return 0.0, 1.0
        lo, hi = float(np.min(anomaly_map)), float(np.max(anomaly_map))
        return lo, hi if hi > lo else lo + 1e-6
