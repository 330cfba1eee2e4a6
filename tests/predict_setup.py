"""What the predict tests (masks, exit codes, messages) share: a tiny checkpoint and noise images.

The model is an untrained INP-Former on a random ViT-S (64 -> 56 px, 32 x 32 maps): its scores
measure nothing about INP-Former, only how predict treats them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def save_tiny_checkpoint(path: Path) -> Path:
    from inp_former.checkpoint import save_checkpoint
    from inp_former.config import RunConfig
    from tests.helpers import tiny_model

    model = tiny_model()
    save_checkpoint(path, model, RunConfig(model=model.cfg))
    return path


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """An RGB noise PNG of width x height."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path
