"""A tiny MVTec-layout dataset for tests: smooth random images, bright rectangles as defects."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def _image(rng: np.random.Generator, size: int, width: int | None = None) -> np.ndarray:
    """A (size, width or size, 3) float image."""
    width = width or size
    base = rng.uniform(80, 140, size=3)
    cells = -(-max(size, width) // 8)  # ceil, so sizes that are not multiples of 8 work too
    noise = rng.normal(0, 12, size=(cells, cells, 3))
    noise = np.kron(noise, np.ones((8, 8, 1)))[:size, :width]
    return np.clip(base + noise, 0, 255)


def make_mvtec_tree(root: Path, categories: Sequence[str] = ("bottle", "cable"), n_train: int = 4,
                    n_test_good: int = 2, n_test_bad: int = 2, size: int = 64, seed: int = 0,
                    width: int | None = None) -> Path:
    """Write the layout under ``root`` and return ``root``: per category ``train/good/000.png...``,
    ``test/good``, ``test/defect`` and ``ground_truth/defect/<stem>_mask.png`` (a bright rectangle).
    Images are ``size`` x ``size``, or ``size`` high and ``width`` wide."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for category in categories:
        base = root / category
        for folder in ("train/good", "test/good", "test/defect", "ground_truth/defect"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n_train):
            Image.fromarray(_image(rng, size, width).astype(np.uint8)).save(base / "train/good" / f"{i:03d}.png")
        for i in range(n_test_good):
            Image.fromarray(_image(rng, size, width).astype(np.uint8)).save(base / "test/good" / f"{i:03d}.png")
        for i in range(n_test_bad):
            image, mask = _image(rng, size, width), np.zeros((size, width or size), np.uint8)
            y, x = rng.integers(4, min(size, width or size) // 2, size=2)
            h, w = rng.integers(size // 8, size // 3, size=2)
            image[y:y + h, x:x + w] = 250
            mask[y:y + h, x:x + w] = 255
            Image.fromarray(image.astype(np.uint8)).save(base / "test/defect" / f"{i:03d}.png")
            Image.fromarray(mask).save(base / "ground_truth/defect" / f"{i:03d}_mask.png")
    return root
