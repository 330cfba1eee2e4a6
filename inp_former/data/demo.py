"""The built-in demo dataset: MVTec-layout images cut from scikit-image's texture photos.

Three categories (brick, grass, gravel), each with normal training crops and test crops with
synthetic defects of four kinds (scratch, stain, hole, patch) and their masks. Generated once,
deterministically, into a cache folder; written to a temporary folder first and renamed, so an
interrupted generation never leaves half a dataset.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEMO_VERSION = "demo-v1"
CATEGORIES = ("brick", "grass", "gravel")
TINTS = {"brick": (1.10, 0.80, 0.65), "grass": (0.75, 1.05, 0.70), "gravel": (0.95, 0.95, 1.00)}
DEFECTS = ("scratch", "stain", "hole", "patch")
CROP = 224
N_TRAIN, N_TEST_GOOD, N_PER_DEFECT = 40, 10, 5


def default_cache_dir() -> Path:
    return Path(os.environ.get("INPCTL_CACHE", Path.home() / ".cache" / "inpctl"))


def _texture(name: str) -> np.ndarray:
    import skimage.data

    gray = getattr(skimage.data, name)().astype(np.float64)
    return np.stack([np.clip(gray * t, 0, 255) for t in TINTS[name]], axis=-1)


def _crop(rng: np.random.Generator, texture: np.ndarray) -> np.ndarray:
    y, x = rng.integers(0, texture.shape[0] - CROP, size=2)
    crop = texture[y:y + CROP, x:x + CROP]
    crop = np.rot90(crop, k=int(rng.integers(4)))
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def _blob_mask(rng: np.random.Generator, min_r: int, max_r: int) -> np.ndarray:
    mask = Image.new("L", (CROP, CROP), 0)
    cx, cy = rng.integers(CROP // 5, 4 * CROP // 5, size=2)
    rx, ry = rng.integers(min_r, max_r, size=2)
    ImageDraw.Draw(mask).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    return np.asarray(mask) > 127


def _defect(rng: np.random.Generator, image: np.ndarray, kind: str, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = image.copy()
    if kind == "scratch":
        canvas = Image.new("L", (CROP, CROP), 0)
        points = [tuple(int(v) for v in rng.integers(20, CROP - 20, size=2))]
        for _ in range(3):
            step = rng.integers(-50, 50, size=2)
            points.append(tuple(int(np.clip(p + s, 5, CROP - 5)) for p, s in zip(points[-1], step)))
        ImageDraw.Draw(canvas).line(points, fill=255, width=int(rng.integers(3, 6)))
        mask = np.asarray(canvas) > 127
        shade = 240.0 if rng.random() < 0.5 else 20.0
        image[mask] = 0.25 * image[mask] + 0.75 * shade
    elif kind == "stain":
        mask = _blob_mask(rng, 12, 30)
        soft = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(4))) / 255.0
        colour = rng.uniform(0, 255, size=3)
        image = image * (1 - 0.7 * soft[..., None]) + colour * 0.7 * soft[..., None]
        mask = soft > 0.3
    elif kind == "hole":
        mask = _blob_mask(rng, 8, 22)
        soft = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))) / 255.0
        image = image * (1 - 0.85 * soft[..., None]) + 10.0 * 0.85 * soft[..., None]
        mask = soft > 0.3
    else:  # patch: a square from another texture
        size = int(rng.integers(30, 60))
        y, x = rng.integers(10, CROP - size - 10, size=2)
        sy, sx = rng.integers(0, other.shape[0] - size, size=2)
        image[y:y + size, x:x + size] = other[sy:sy + size, sx:sx + size]
        mask = np.zeros((CROP, CROP), bool)
        mask[y:y + size, x:x + size] = True
    return np.clip(image, 0, 255), mask


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array).astype(np.uint8)).save(path)


def generate_demo_dataset(target: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    textures = {name: _texture(name) for name in CATEGORIES}
    for index, name in enumerate(CATEGORIES):
        texture, other = textures[name], textures[CATEGORIES[(index + 1) % len(CATEGORIES)]]
        base = target / name
        for i in range(N_TRAIN):
            _save(_crop(rng, texture), base / "train" / "good" / f"{i:03d}.png")
        for i in range(N_TEST_GOOD):
            _save(_crop(rng, texture), base / "test" / "good" / f"{i:03d}.png")
        for kind in DEFECTS:
            for i in range(N_PER_DEFECT):
                image, mask = _defect(rng, _crop(rng, texture), kind, other)
                _save(image, base / "test" / kind / f"{i:03d}.png")
                _save(mask.astype(np.uint8) * 255, base / "ground_truth" / kind / f"{i:03d}_mask.png")
    (target / ".complete").write_text(f"{DEMO_VERSION} seed={seed}\n")


def ensure_demo_dataset(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """The demo dataset's root, generated on first use."""
    target = Path(cache_dir or default_cache_dir()) / DEMO_VERSION
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}.", dir=target.parent))
    try:
        generate_demo_dataset(staging, seed)
        if target.exists():  # a leftover without its marker: replace it
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
