"""Training on tiles: random ``tile x tile`` crops of the normal training images at their own resolution.

A tiled model (``ModelConfig.tile``, :mod:`inp_former.tiling`) is trained on what it scores: tiles
cut from the images as they are, never resized. Each image gives as many tiles per epoch as
scoring cuts from it (its :class:`~inp_former.tiling.TileLayout`), so an epoch covers about every
training pixel once; their positions are uniform over the image, drawn from ``(seed, index)``:
the same tiles every epoch (in a new order: the sampler shuffles), and a resumed run draws exactly
the tiles an uninterrupted one would. An image smaller than a tile is padded by reflection, as
for scoring.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from inp_former.data.records import Sample
from inp_former.data.transforms import load_rgb
from inp_former.tiling import TileLayout, normalise, pad_to_tile, to_uint8_tensor


class TileDataset(Dataset):
    """Random tiles of ``samples`` (whose (height, width) are ``sizes``, read from their headers):
    items as :class:`~inp_former.data.records.AnomalyDataset`'s, the image (3, tile, tile)
    normalised, the path ``<file>#tile<top>,<left>``."""

    def __init__(self, samples: Sequence[Sample], sizes: Sequence[tuple[int, int]], tile: int, overlap: int,
                 seed: int) -> None:
        if len(samples) != len(sizes):
            raise ValueError(f"TileDataset: {len(samples)} samples but {len(sizes)} sizes")
        self.samples, self.sizes, self.tile, self.seed = list(samples), list(sizes), int(tile), int(seed)
        self.items = [(which, draw) for which, (height, width) in enumerate(self.sizes)
                      for draw in range(len(TileLayout.of(height, width, self.tile, overlap)))]

    def __len__(self) -> int:
        return len(self.items)

    def position(self, index: int) -> tuple[int, int]:
        """(top, left) of item ``index``'s tile: uniform over its image, fixed by (seed, index)."""
        height, width = self.sizes[self.items[index][0]]
        rng = random.Random(f"{self.seed}:{index}")   # a string seed is hashed the same in every process
        return rng.randint(0, max(0, height - self.tile)), rng.randint(0, max(0, width - self.tile))

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[self.items[index][0]]
        top, left = self.position(index)
        image = pad_to_tile(to_uint8_tensor(load_rgb(sample.path)), self.tile)
        tile = normalise(image[:, top:top + self.tile, left:left + self.tile])
        return {"image": tile, "mask": torch.zeros(1, self.tile, self.tile), "label": 0, "category": sample.category,
                "path": f"{sample.path}#tile{top},{left}"}


__all__ = ["TileDataset"]
