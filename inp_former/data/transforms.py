"""Image loading and the authors' preprocessing (docs/behaviour.md, 'Encoder', 'Metrics', 'Few-shot')."""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.transforms import functional as TF

from inp_former.data.geometry import Geometry
from inp_former.errors import DatasetError

Size = Union[int, Sequence[int]]   # a square side, or (height, width)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# What Pillow raises on a broken file, besides OSError (truncated data, UnidentifiedImageError):
# some plugins raise SyntaxError/EOFError/struct.error while parsing, and huge images raise
# DecompressionBombError.
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def _open(path: str | Path) -> Image.Image:
    """The fully decoded image (``load()`` here, so truncated files fail now and not in a worker)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()  # detached from the (now closed) file
    except READ_ERRORS as exc:
        reason = (str(exc).splitlines() or [exc.__class__.__name__])[0]
        raise DatasetError(f"{path}: not a readable image ({reason}); expected a PNG/JPEG/BMP/TIFF/WebP file") from exc


def _to_uint8(array: np.ndarray, top: float) -> np.ndarray:
    return np.clip(np.asarray(array, dtype=np.float64) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)


def load_rgb(path: str | Path) -> Image.Image:
    """Any readable image file as an 8-bit RGB PIL image (:func:`to_rgb`).

    Raises :class:`DatasetError` naming the file when it is missing, truncated or not an image.
    """
    img = _open(path)
    try:
        return to_rgb(img)
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB, the one conversion every reader of images uses.

    - grayscale ('L', '1') is replicated to 3 channels; palette images go through their palette;
    - alpha is DROPPED (not composited): the colour under the alpha is kept, as the authors'
      ``Image.open(p).convert('RGB')`` and anomalib do, so scores match theirs on RGBA files;
    - 16-bit ('I;16*', and 'I' which Pillow uses for 16-bit PNGs) is scaled by 255/65535 — a fixed
      scale, not per image, so all images of a dataset keep one brightness mapping; float ('F')
      images in [0, 1] are scaled by 255, others clipped to [0, 255].
    Raises ValueError for a mode that cannot become RGB.
    """
    if img.mode in _SIXTEEN_BIT:
        img = Image.fromarray(_to_uint8(np.clip(np.asarray(img), 0, 65535), 65535.0))
    elif img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(_to_uint8(array, 1.0 if array.max(initial=0) <= 1.0 else 255.0))
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # through the palette, including a transparency entry, without a warning
    try:
        return img.convert("RGB")
    except ValueError as exc:  # e.g. 'LAB' or a multi-channel 16-bit mode Pillow cannot convert
        raise ValueError(f"image mode {img.mode!r} cannot be converted to RGB") from exc


def load_mask(path: str | Path) -> Image.Image:
    """A ground-truth mask as an 8-bit 'L' image where defects are bright.

    Colour masks take the max over channels (as the authors do for multi-channel masks: a red mask
    stays 255, not its luminance 76); palette masks mark every non-zero index (index 0 is background
    in labelme/VOC-style masks); masks stored as 0/1 (raw VisA, many labelling tools) become 0/255 so
    that the > 0.5 binarisation after ToTensor keeps them.
    """
    img = _open(path)
    if img.mode in ("P", "PA"):
        array = (np.asarray(img.getchannel(0)) != 0).astype(np.uint8)
    elif img.mode in _SIXTEEN_BIT or img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        array = array if array.max(initial=0) <= 1.0 else array / (65535.0 if img.mode != "F" else 255.0)
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        # '1' becomes 0/255; alpha is dropped; any other mode goes through RGB
        img = img.convert("L") if img.mode in ("1", "L", "LA") else img.convert("RGB")
        array = np.asarray(img)
        if array.ndim == 3:
            array = array.max(axis=2)
    if array.max(initial=0) == 1:
        array = array * 255
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))


class ImageTransform:
    """PIL RGB image -> normalised (3, crop_h, crop_w) tensor: the authors' preprocessing.

    The resize is PIL's (bilinear, which low-pass filters when it shrinks; the authors resize on the
    PIL side), the crop is taken from the tensor; both come from :class:`Geometry`. Sizes are ints
    (squares) or (height, width) pairs: a keep-aspect model passes its ``resize_hw`` and ``input_hw``.
    It knows its sizes (``resize``, ``crop``, ``geometry``) so that masks can follow.
    """

    normalise = True

    def __init__(self, resize: Size = 448, crop: Size = 392) -> None:
        self.geometry = Geometry(resize, crop)
        self.resize, self.crop = resize, crop

    def __call__(self, image: Image.Image) -> torch.Tensor:
        tensor = self.geometry.crop_tensor(TF.to_tensor(self.geometry.resize_image(image)))
        return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD) if self.normalise else tensor

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resize={self.resize}, crop={self.crop})"


class MaskTransform(ImageTransform):
    """'L' mask -> (1, crop_h, crop_w) float in [0, 1], resized exactly as the image (bilinear, on PIL);
    the soft edges are binarised > 0.5 only for the metrics (:func:`masks_for_metrics`), as the
    authors do."""

    normalise = False


def image_transform(resize: Size = 448, crop: Size = 392) -> ImageTransform:
    """The authors' preprocessing: resize (PIL bilinear), to tensor, center crop, ImageNet normalise."""
    return ImageTransform(resize, crop)


def mask_transform(resize: Size = 448, crop: Size = 392) -> MaskTransform:
    """The ground-truth preprocessing matching :func:`image_transform` (no normalisation)."""
    return MaskTransform(resize, crop)


def masks_for_metrics(masks: torch.Tensor, out_size: Size = 256) -> torch.Tensor:
    """(B, 1, H, W) float masks -> (B, out_h, out_w) bool (an int: a square): nearest resize, then > 0.5
    (docs/behaviour.md, 'Metrics'). A model's maps are ``cfg.model.map_hw``: pass that."""
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    return F.interpolate(masks.float(), size=size, mode="nearest")[:, 0] > 0.5


# The few-shot protocol (RegAD's augmentation, which the authors reuse): 8 small rotations, 8 diagonal
# translations in affine_grid's normalised coordinates ([-1, 1] spans the image, so 0.1 moves it by
# 5% of its size), both with reflection padding, then flip, grayscale and the three right-angle turns.
FEW_SHOT_ANGLES = (-math.pi / 4, -3 * math.pi / 16, -math.pi / 8, -math.pi / 16,
                   math.pi / 16, math.pi / 8, 3 * math.pi / 16, math.pi / 4)
FEW_SHOT_SHIFTS = ((0.2, 0.2), (-0.2, 0.2), (-0.2, -0.2), (0.2, -0.2),
                   (0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1))


def few_shot_augmentations(image: Image.Image) -> list[Image.Image]:
    """The 22 training images made from one few-shot image, in a fixed order (no randomness):
    the original, 8 rotations, 8 translations, horizontal flip, grayscale (3 channels), rot90 x1/x2/x3.

    Rotations/translations work in normalised coordinates, so on a non-square image they commute with
    the later square resize (as if applied to the preprocessed tensor, like the authors). The
    right-angle turns are exact; they swap width and height of a non-square image.
    """
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    tensor = (array[None, None] if array.ndim == 2 else array.permute(2, 0, 1)[None])  # (1, C, H, W), 0..255
    out = [image.copy()]
    out += [_warp(tensor, _rotation(angle), image.mode) for angle in FEW_SHOT_ANGLES]
    out += [_warp(tensor, _translation(tx, ty), image.mode) for tx, ty in FEW_SHOT_SHIFTS]
    out.append(ImageOps.mirror(image))
    out.append(ImageOps.grayscale(image).convert(image.mode))  # ITU-R 601 luma, replicated
    out += [image.rotate(90 * k, expand=True) for k in (1, 2, 3)]  # counter-clockwise, lossless
    return out


FEW_SHOT_COUNT = 22  # images made from each few-shot image (the original included)


def few_shot_augmentation(image: Image.Image, index: int) -> Image.Image:
    """The ``index``-th (0..21) of :func:`few_shot_augmentations` alone (same order, same pixels)."""
    if not 0 <= index < FEW_SHOT_COUNT:
        raise ValueError(f"few-shot augmentation index {index}: expected 0..{FEW_SHOT_COUNT - 1}")
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if index == 0:
        return image.copy()
    if index <= 16:
        array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
        tensor = (array[None, None] if array.ndim == 2 else array.permute(2, 0, 1)[None])
        theta = (_rotation(FEW_SHOT_ANGLES[index - 1]) if index <= 8 else _translation(*FEW_SHOT_SHIFTS[index - 9]))
        return _warp(tensor, theta, image.mode)
    if index == 17:
        return ImageOps.mirror(image)
    if index == 18:
        return ImageOps.grayscale(image).convert(image.mode)
    return image.rotate(90 * (index - 18), expand=True)


def _rotation(angle: float) -> list[list[float]]:
    return [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]]


def _translation(tx: float, ty: float) -> list[list[float]]:
    return [[1.0, 0.0, tx], [0.0, 1.0, ty]]


def _warp(tensor: torch.Tensor, theta: list[list[float]], mode: str) -> Image.Image:
    grid = F.affine_grid(torch.tensor([theta], dtype=tensor.dtype), list(tensor.shape), align_corners=False)
    warped = F.grid_sample(tensor, grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
    array = warped.round().clamp(0, 255).to(torch.uint8)  # round, not truncate, back to 8 bits
    array = array[0] if mode == "L" else array.permute(1, 2, 0)
    return Image.fromarray(array.contiguous().numpy())
