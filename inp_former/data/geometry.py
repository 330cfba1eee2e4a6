"""Preprocessing geometry: the one implementation of "resize, then centre crop", and of its inverse.

Forward (what the model sees): the original image is resized to ``resize`` (bilinear: PIL's filter
for PIL images, which low-pass filters when it shrinks; ``F.interpolate(antialias=True)``, its float
counterpart, for tensors), then the centre ``crop`` is cut out with torchvision ``CenterCrop``'s
offset rule. The anomaly map (map_size x map_size) covers exactly that crop.

Inverse (where a map value lies in the original image): the same chain read backwards, one affine
map per axis. Coordinates are continuous pixel coordinates, the convention of PIL and of
``F.interpolate(align_corners=False)``: pixel i covers [i, i + 1) and its centre is i + 0.5, so the
pixel holding a point at x is ``floor(x)``.

Conventions: a Geometry's sizes and map sizes are (height, width), like tensor shapes and
torchvision's Resize/CenterCrop; ``original_size`` is (width, height), like PIL's ``Image.size``,
because that is what callers hold; points are (x, y) and boxes (left, top, right, bottom), as in PIL.
Height and width are handled separately throughout, so a non-square resize or crop
(aspect-preserving resizing, tiling) changes how a Geometry is built, not the code here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Pair = tuple[int, int]                   # (height, width)
Box = tuple[float, float, float, float]  # (left, top, right, bottom)
BILINEAR = Image.Resampling.BILINEAR
NEAREST = Image.Resampling.NEAREST


class SizedModel(Protocol):
    """What :meth:`Geometry.from_model_config` reads (a ``ModelConfig``; not imported, to keep
    this module free of the config module)."""

    @property
    def resize_hw(self) -> Pair: ...

    @property
    def input_hw(self) -> Pair: ...


def _pair(value: int | Sequence[int]) -> Pair:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    height, width = value
    return int(height), int(width)


def _label(pair: Pair) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


@dataclass(frozen=True)
class Geometry:
    """Resize to ``resize``, then take the centre ``crop`` of it; both (height, width), an int
    meaning a square (``Geometry(448, 392)``). Frozen: safe to share between loader workers."""

    resize: Pair
    crop: Pair

    def __post_init__(self) -> None:
        resize, crop = _pair(self.resize), _pair(self.crop)
        if not all(0 < c <= r for c, r in zip(crop, resize)):
            # torchvision's CenterCrop would pad instead: never what the model was trained on
            raise ValueError(f"crop {_label(crop)} / resize {_label(resize)}: expected 0 < crop <= resize "
                             f"(the crop would pad)")
        object.__setattr__(self, "resize", resize)
        object.__setattr__(self, "crop", crop)

    @classmethod
    def from_model_config(cls, model: SizedModel) -> Geometry:
        """The geometry of a ``ModelConfig`` (``cfg.model``): resize then centre crop, or with
        ``keep_aspect`` a resize to the input size and no crop."""
        return cls(model.resize_hw, model.input_hw)

    @property
    def offset(self) -> Pair:
        """(top, left) of the crop in the resized image: torchvision CenterCrop's rule,
        ``int(round((resize - crop) / 2.0))`` (Python's round: half to even)."""
        top, left = (int(round((r - c) / 2.0)) for r, c in zip(self.resize, self.crop))
        return top, left

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the crop in resized coordinates (PIL's crop box)."""
        (top, left), (height, width) = self.offset, self.crop
        return left, top, left + width, top + height

    # --- forward: PIL images ----------------------------------------------------------------

    def resize_image(self, image: Image.Image, resample: Image.Resampling = BILINEAR) -> Image.Image:
        """PIL resize to ``resize``. PIL's bilinear widens its filter when it shrinks (antialiasing);
        the authors resize on the PIL side, 8-bit in and out."""
        height, width = self.resize
        return image.resize((width, height), resample)

    def crop_image(self, image: Image.Image) -> Image.Image:
        """The centre crop of an image already resized by :meth:`resize_image`."""
        _check_resized((image.size[1], image.size[0]), self.resize)
        return image.crop(self.box)

    def forward_image(self, image: Image.Image, resample: Image.Resampling = BILINEAR) -> Image.Image:
        """Resize and centre-crop a PIL image: the pixels the model sees, before normalisation."""
        return self.crop_image(self.resize_image(image, resample))

    def forward_mask(self, mask: Image.Image) -> Image.Image:
        """:meth:`forward_image` with nearest resampling: a binary (or label) mask keeps its values.
        (The evaluation's ground truth goes bilinear instead, see ``mask_transform``.)"""
        return self.forward_image(mask, NEAREST)

    # --- forward: tensors ---------------------------------------------------------------------

    def resize_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> (B, C, *resize): bilinear with antialias=True, which is PIL's
        low-pass filter when shrinking (when enlarging both are plain bilinear). Not rounded to 8 bits
        as PIL is: within about one level of 255 of :meth:`resize_image`."""
        return F.interpolate(images, size=self.resize, mode="bilinear", align_corners=False, antialias=True)

    def crop_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """(..., *resize) -> (..., *crop), a view: the centre crop of a resized tensor."""
        _check_resized(tuple(images.shape[-2:]), self.resize)
        left, top, right, bottom = self.box
        return images[..., top:bottom, left:right]

    def forward_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> (B, C, *crop): resize and centre-crop on the tensor's device."""
        return self.crop_tensor(self.resize_tensor(images))

    # --- inverse: coordinates -------------------------------------------------------------------

    def _chain(self, original_size: Sequence[int], map_size: int | Sequence[int]) -> np.ndarray:
        """(2, 5): for x then y, the sizes a coordinate passes through: (original, resized, offset,
        crop, map). :func:`_to_map` and :func:`_to_original` read them."""
        width, height = original_size
        map_h, map_w = _pair(map_size)
        (resize_h, resize_w), (crop_h, crop_w), (top, left) = self.resize, self.crop, self.offset
        return np.array([(width, resize_w, left, crop_w, map_w), (height, resize_h, top, crop_h, map_h)],
                        dtype=np.float64)

    def to_original(self, points: np.ndarray | Sequence, original_size: Sequence[int],
                    map_size: int | Sequence[int]) -> np.ndarray:
        """(..., 2) points (x, y) in the anomaly map's continuous coordinates -> the same points in
        the original image of ``original_size`` (width, height), float64. The map pixel (i, j) is the
        point (i + 0.5, j + 0.5); the original pixel holding a point is its floor."""
        return _to_original(np.asarray(points, dtype=np.float64), *self._chain(original_size, map_size).T)

    def to_map(self, points: np.ndarray | Sequence, original_size: Sequence[int],
               map_size: int | Sequence[int]) -> np.ndarray:
        """The inverse of :meth:`to_original`: original-image points (x, y) -> map coordinates
        (outside [0, map) when the point lies outside the crop)."""
        return _to_map(np.asarray(points, dtype=np.float64), *self._chain(original_size, map_size).T)

    def box_to_original(self, box: Sequence[float], original_size: Sequence[int],
                        map_size: int | Sequence[int]) -> Box:
        """A box (left, top, right, bottom) in map coordinates -> in original-image coordinates
        (floats; the pixels it covers are floor(left)..ceil(right) - 1). The whole map,
        ``(0, 0, map_w, map_h)``, gives the crop region of the original image."""
        corners = self.to_original(np.asarray(box, dtype=np.float64).reshape(2, 2), original_size, map_size)
        left, top, right, bottom = (float(v) for v in corners.reshape(4))
        return left, top, right, bottom

    # --- inverse: maps --------------------------------------------------------------------------

    def paste(self, values: np.ndarray, original_size: Sequence[int], fill: float = math.nan,
              mode: str = "bilinear") -> np.ndarray:
        """A (map_h, map_w) map over the crop -> an (height, width) array over the original image.

        Every original pixel whose centre lies in the crop region takes the map's value at that
        centre: ``"bilinear"`` (as ``F.interpolate(align_corners=False)``: edge values are held, not
        blended with ``fill``) or ``"nearest"`` (labels and binary masks keep their values); the
        others get ``fill`` (NaN by default: the model never saw them). Bilinear output is at least
        float32; nearest keeps the map's dtype where ``fill`` fits it.
        """
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"paste mode {mode!r}: expected 'bilinear' or 'nearest'")
        values = np.asarray(values)
        if values.ndim != 2:
            raise ValueError(f"paste: expected a 2-D map, got shape {values.shape}")
        width, height = original_size
        # each axis: which original pixels lie in the crop, and where their centres fall in the map
        (cols, x0, x1, wx), (rows, y0, y1, wy) = (
            _sample_axis(_to_map(np.arange(axis[0]) + 0.5, *axis), int(axis[4]), mode)
            for axis in self._chain(original_size, values.shape))
        dtype = np.result_type(values.dtype if mode == "nearest" else np.result_type(values.dtype, np.float32), fill)
        out = np.full((height, width), fill, dtype=dtype)
        if mode == "nearest":
            block = values[np.ix_(y0, x0)]
        else:
            tall = values[y0].astype(np.float64) * (1 - wy)[:, None] + values[y1] * wy[:, None]
            block = tall[:, x0] * (1 - wx) + tall[:, x1] * wx
        out[np.ix_(rows, cols)] = block
        return out


def keep_aspect_size(image_hw: Sequence[int], resize: int, stride: int) -> Pair:
    """The (height, width) a keep-aspect model sees for images of ``image_hw``: the shorter side
    resized to ``resize``, the longer in proportion, each rounded to the nearest multiple of the
    token ``stride`` (at least one token)."""
    height, width = (int(v) for v in image_hw)
    scale = resize / min(height, width)
    return tuple(max(stride, int(side * scale / stride + 0.5) * stride)  # type: ignore[return-value]
                 for side in (height, width))


def stretch_warning(count: int, total: int, what: str, input_hw: Pair) -> str:
    """The one line a keep-aspect run says when ``count`` of ``total`` ``what`` images (training,
    test, ...) have another aspect ratio than the model's input and are stretched to it."""
    return (f"warning: keep aspect: {count} of {total} {what} images have another aspect ratio than the model's "
            f"input {input_hw[0]}x{input_hw[1]} (height x width) and are resized to it (stretched)")


def _check_resized(shape: tuple[int, ...], resize: Pair) -> None:
    if tuple(shape) != resize:
        raise ValueError(f"centre crop: expected an image resized to {resize[0]}x{resize[1]} (height x width), "
                         f"got {shape[0]}x{shape[1]}")


def _to_map(points: np.ndarray, original: float, resized: float, offset: float, crop: float,
            mapped: float) -> np.ndarray:
    """Original -> map coordinates along axes given by :meth:`Geometry._chain` (broadcast):
    into the resized image, minus the crop's offset, scaled to the map. Each step multiplies before it
    divides (no pre-computed, already rounded scale factor): a point whose exact image is a whole
    pixel edge comes out as that edge, not an ulp off, so it falls in the same pixel as PIL's."""
    return (points * resized / original - offset) * mapped / crop


def _to_original(points: np.ndarray, original: float, resized: float, offset: float, crop: float,
                 mapped: float) -> np.ndarray:
    """Map -> original coordinates: :func:`_to_map` read backwards."""
    return (points * crop / mapped + offset) * original / resized


def _sample_axis(u: np.ndarray, mapped: int, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For one axis of :meth:`Geometry.paste`, given the map coordinate ``u`` of each original pixel
    centre: the pixels inside the crop (bool mask), and for each of them the two map indices and the
    weight of the second (bilinear), or the one index (nearest; second index and weight unused)."""
    inside = (u >= 0) & (u < mapped)
    u = u[inside]
    if mode == "nearest":
        index = np.clip(np.floor(u), 0, mapped - 1).astype(np.intp)
        return inside, index, index, np.zeros(len(index))
    s = np.clip(u - 0.5, 0, mapped - 1)                      # align_corners=False, edges held
    first = np.floor(s).astype(np.intp)
    return inside, first, np.minimum(first + 1, mapped - 1), s - first


__all__ = ["BILINEAR", "Box", "Geometry", "NEAREST", "Pair", "SizedModel", "keep_aspect_size", "stretch_warning"]
