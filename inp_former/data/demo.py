"""The built-in demo dataset: MVTec-layout images cut from scikit-image's texture photos.

Three categories (brick, grass, gravel: 512x512 grayscale photos that ship with scikit-image, so no
download), each tinted its own colour, with 40 normal training crops, 10 normal test crops and
20 anomalous test crops (5 each of scratch, stain, hole, patch) with their masks. Generated once,
deterministically from a seed, into a cache folder; written to a temporary sibling folder and
renamed into place, so an interrupted generation never leaves half a dataset.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEMO_VERSION = "demo-v1"  # bump when the generated content changes, so old caches are not reused
MARKER = ".complete"
CATEGORIES = ("brick", "grass", "gravel")
TINTS = {"brick": (1.10, 0.80, 0.65), "grass": (0.75, 1.05, 0.70), "gravel": (0.90, 0.95, 1.10)}
DEFECTS = ("scratch", "stain", "hole", "patch")
CROP = 224
N_TRAIN, N_TEST_GOOD, N_PER_DEFECT = 40, 10, 5
STALE_STAGING_S = 3600  # a staging folder this old belongs to a generation that was killed


def default_cache_dir() -> Path:
    """``$INPCTL_CACHE``, else ``~/.cache/inpctl``."""
    return Path(os.environ.get("INPCTL_CACHE") or Path.home() / ".cache" / "inpctl")


def demo_folder_name(seed: int = 0) -> str:
    # each seed gets its own folder, so asking for another seed never returns a cache made with seed 0
    return DEMO_VERSION if seed == 0 else f"{DEMO_VERSION}-seed{seed}"


def ensure_demo_dataset(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """The demo dataset's root (MVTec layout), generated on first use and reused afterwards."""
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = parent / demo_folder_name(seed)
    if (target / MARKER).is_file():
        return target
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(parent, target.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    try:
        generate_demo_dataset(staging, seed)
        os.chmod(staging, 0o755)  # mkdtemp made it private; the dataset is a shareable cache
        if (target / MARKER).is_file():  # another process finished first: keep its copy
            return target
        if target.exists():  # a leftover without its marker (not made by this code): replace it
            shutil.rmtree(target)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / MARKER).is_file():  # not a lost race with another process
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_stale_staging(parent: Path, name: str) -> None:
    for folder in parent.glob(f".{name}.*"):
        try:
            if time.time() - folder.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


def generate_demo_dataset(target: Path, seed: int = 0) -> None:
    """Write the whole dataset under ``target`` (which should be empty), marker file last."""
    target = Path(target)
    textures = {name: _texture(name) for name in CATEGORIES}
    for index, name in enumerate(CATEGORIES):
        # one generator per category, so categories do not depend on each other's draws
        rng = np.random.default_rng([seed, index])
        texture, other = textures[name], textures[CATEGORIES[(index + 1) % len(CATEGORIES)]]
        base = target / name
        for i in range(N_TRAIN):
            _save(_crop(rng, texture), base / "train" / "good" / f"{i:03d}.png")
        for i in range(N_TEST_GOOD):
            _save(_crop(rng, texture), base / "test" / "good" / f"{i:03d}.png")
        for kind in DEFECTS:
            for i in range(N_PER_DEFECT):
                image, mask = DEFECT_MAKERS[kind](rng, _crop(rng, texture), other)
                _save(image, base / "test" / kind / f"{i:03d}.png")
                _save(mask.astype(np.uint8) * 255, base / "ground_truth" / kind / f"{i:03d}_mask.png")
    (target / MARKER).write_text(f"{DEMO_VERSION} seed={seed}\n")


def _texture(name: str) -> np.ndarray:
    """The grayscale photo as a tinted float RGB array (H, W, 3) in [0, 255]."""
    import skimage.data  # imported here: only the demo needs scikit-image's data

    gray = getattr(skimage.data, name)().astype(np.float64)
    if gray.ndim == 3:
        gray = gray[..., :3].mean(axis=2)
    return np.stack([np.clip(gray * t, 0, 255) for t in TINTS[name]], axis=-1)


def _crop(rng: np.random.Generator, texture: np.ndarray, size: int = CROP) -> np.ndarray:
    y, x = rng.integers(0, texture.shape[0] - size + 1), rng.integers(0, texture.shape[1] - size + 1)
    crop = np.rot90(texture[y:y + size, x:x + size], k=int(rng.integers(4)))
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def _soft(mask: np.ndarray, radius: float) -> np.ndarray:
    """A boolean mask blurred into an alpha in [0, 1] (soft defect edges)."""
    image = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(image, dtype=np.float64) / 255.0


def _blob(rng: np.random.Generator, radius: tuple[int, int]) -> np.ndarray:
    """An irregular closed blob: an ellipse whose radius wobbles smoothly with the angle."""
    cy, cx = rng.integers(CROP // 5, 4 * CROP // 5, size=2)
    ry, rx = rng.integers(radius[0], radius[1] + 1, size=2)
    turn = rng.uniform(0, np.pi)
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    wobble = 1 + sum(rng.uniform(0, 0.12) * np.sin(k * angles + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    ex, ey = rx * wobble * np.cos(angles), ry * wobble * np.sin(angles)
    xs = cx + ex * np.cos(turn) - ey * np.sin(turn)
    ys = cy + ex * np.sin(turn) + ey * np.cos(turn)
    canvas = Image.new("L", (CROP, CROP), 0)
    ImageDraw.Draw(canvas).polygon(list(zip(xs.tolist(), ys.tolist())), fill=255)
    return np.asarray(canvas) > 127


def _blend(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``image`` moved towards ``colour`` ((3,) or an image) by ``alpha`` (H, W)."""
    return image * (1 - alpha[..., None]) + colour * alpha[..., None]


def _scratch(rng: np.random.Generator, image: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin bright or dark polyline (3-5 segments wandering from a random start)."""
    point = rng.uniform(50, CROP - 50, size=2)
    heading = rng.uniform(0, 2 * np.pi)
    points = [tuple(point)]
    for _ in range(int(rng.integers(3, 6))):
        heading += rng.uniform(-0.6, 0.6)
        point = np.clip(point + rng.uniform(20, 35) * np.array([np.cos(heading), np.sin(heading)]), 8, CROP - 8)
        points.append(tuple(point))
    canvas = Image.new("L", (CROP, CROP), 0)
    ImageDraw.Draw(canvas).line(points, fill=255, width=int(rng.integers(3, 6)), joint="curve")
    alpha = 0.85 * _soft(np.asarray(canvas) > 127, 0.6)
    # towards light or dark, keeping some texture: visible without being a flat white/black line;
    # dark only where few pixels are dark already (on grass a dark line hides among the shadows)
    level = 235.0 if rng.random() < 0.5 or np.percentile(image.mean(axis=2), 10) < 75.0 else 25.0
    colour = np.full(3, level)
    return _blend(image, colour, alpha), alpha > 0.25


def _stain(rng: np.random.Generator, image: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A smooth blob with a colour cast, the cast chosen far from the crop's mean colour."""
    region = _blob(rng, (14, 32))
    alpha = 0.6 * _soft(region, 4)
    palette = np.array([[120, 60, 20], [60, 50, 40], [210, 190, 90], [70, 90, 170], [170, 70, 150]], float)
    mean = image.reshape(-1, 3).mean(axis=0)
    far = np.argsort(-np.linalg.norm(palette - mean, axis=1))[:2]  # the two most different colours
    colour = palette[far[int(rng.integers(2))]]
    return _blend(image, colour, alpha), alpha > 0.2


def _hole(rng: np.random.Generator, image: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dark elliptical region with a soft edge; a little texture shows through."""
    cy, cx = rng.integers(CROP // 5, 4 * CROP // 5, size=2)
    ry, rx = rng.integers(9, 24, size=2)
    canvas = Image.new("L", (CROP, CROP), 0)
    ImageDraw.Draw(canvas).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    alpha = 0.8 * _soft(np.asarray(canvas) > 127, 2.5)
    return _blend(image, np.full(3, 15.0), alpha), alpha > 0.3


def _patch(rng: np.random.Generator, image: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle pasted from another category's texture (its own tint and grain make it visible;
    a piece of the same texture would often be invisible on the isotropic ones)."""
    h, w = (int(v) for v in rng.integers(28, 60, size=2))
    y, x = int(rng.integers(12, CROP - h - 12)), int(rng.integers(12, CROP - w - 12))
    pasted = image.copy()
    pasted[y:y + h, x:x + w] = _crop(rng, other, size=max(h, w))[:h, :w]
    region = np.zeros((CROP, CROP), bool)
    region[y:y + h, x:x + w] = True
    alpha = _soft(region, 0.8)  # just enough to hide the staircase edge
    return _blend(image, pasted, alpha), alpha > 0.5


DEFECT_MAKERS = {"scratch": _scratch, "stain": _stain, "hole": _hole, "patch": _patch}


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.clip(np.ascontiguousarray(array) + 0.5, 0, 255).astype(np.uint8))
    image.save(path, compress_level=1)  # fast: noisy textures barely compress anyway
