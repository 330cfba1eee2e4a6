"""Image loading and the authors' preprocessing (SPEC.md, 'Encoder': resize, crop, normalise)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision import transforms as T

from inp_former.data.records import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | Path) -> Image.Image:
    """Any readable image as 8-bit RGB: grayscale is replicated, alpha dropped, 16-bit rescaled."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img, dtype=np.float64)
                top = 65535.0 if array.max() > 255 else 255.0
                img = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
            elif img.mode == "F":
                array = np.asarray(img, dtype=np.float64)
                img = Image.fromarray(np.clip(array * (255.0 if array.max() <= 1 else 1.0), 0, 255).astype(np.uint8))
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: no such image file") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc.__class__.__name__}); expected PNG/JPEG/BMP/TIFF") from exc


def load_mask(path: str | Path) -> Image.Image:
    """A ground-truth mask as an 8-bit single-channel image."""
    return load_rgb(path).convert("L")


def image_transform(resize: int = 448, crop: int = 392) -> T.Compose:
    # PIL's bilinear resize low-pass filters when it shrinks; the authors resize on the PIL side.
    return T.Compose([T.Resize((resize, resize), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor(),
                      T.CenterCrop(crop), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def mask_transform(resize: int = 448, crop: int = 392) -> T.Compose:
    return T.Compose([T.Resize((resize, resize), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor(),
                      T.CenterCrop(crop)])


def masks_for_metrics(masks: torch.Tensor, out_size: int = 256) -> torch.Tensor:
    """(B, 1, crop, crop) float masks -> (B, out, out) bool: nearest resize, then > 0.5."""
    return F.interpolate(masks.float(), size=out_size, mode="nearest")[:, 0] > 0.5


def few_shot_augmentations(image: Image.Image) -> list[Image.Image]:
    """The 22 training images made from one few-shot image (SPEC.md, 'Few-shot')."""
    tensor = T.functional.to_tensor(image).unsqueeze(0)
    out = [image]
    for angle in (math.pi / 16, math.pi / 8, 3 * math.pi / 16, math.pi / 4):
        for sign in (1, -1):
            out.append(_affine(tensor, angle=sign * angle))
    for shift in (0.1, 0.2):
        for sign in (1, -1):
            out.append(_affine(tensor, tx=sign * shift))
            out.append(_affine(tensor, ty=sign * shift))
    out.append(ImageOps.mirror(image))
    out.append(ImageOps.grayscale(image).convert("RGB"))
    out.extend(image.rotate(90 * k, expand=True) for k in (1, 2, 3))
    return out


def _affine(tensor: torch.Tensor, angle: float = 0.0, tx: float = 0.0, ty: float = 0.0) -> Image.Image:
    """Rotate by ``angle`` (radians) / translate by (tx, ty) in normalised coordinates, reflection padding."""
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=tensor.dtype).unsqueeze(0)
    grid = F.affine_grid(theta, list(tensor.shape), align_corners=False)
    warped = F.grid_sample(tensor, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return T.functional.to_pil_image(warped[0].clamp(0, 1))
