"""Tiling for high resolution: score a large image as overlapping tiles at its native resolution.

A tiled model (``ModelConfig.tile``) sees ``tile x tile`` pixels cut from the image as it is: no
resize, no crop (``resize``/``crop`` are unused). Scoring one image:

1. **Layout** (:class:`TileLayout`): along each axis, the fewest tiles that cover the image with at
   least ``tile_overlap`` pixels shared by neighbours, spread evenly; the first tile starts at 0 and
   the last is flush with the border. An image smaller than a tile along an axis is padded at its
   bottom/right by reflection (texture continues; a constant or replicated edge would look like a
   streak to the model), and the map of the padding is cut off again.
2. **Scoring**: the tiles go through the scorer ``InferenceConfig`` describes (``score_batch``, or
   the CUDA fast path) in batches of ``InferenceConfig.batch_size`` tiles, so precision, kernels
   and graphs are those of every other surface. Each tile map (``map_size`` x ``map_size``) is
   resized bilinearly to the tile's pixels.
3. **Blending**: a tile map's weight falls off linearly over ``tile_overlap`` pixels towards each
   tile border (:func:`blend_ramp`, separable), and the full-resolution map is the weighted mean
   of the tiles covering each pixel. The tile maps are least reliable at their borders (the blur's
   zero padding, the encoder's edge), which is where the neighbour takes over, so seams do not
   show; every pixel keeps a positive weight (at least 0.5 / overlap), so the mean is defined
   everywhere and a constant map stays exactly constant.
4. **Image score**: the mean of the top ``top_fraction`` of the full-resolution map, as for a
   square model (:func:`kernels.scoring.top_k_mean`).

Memory: one batch of tiles (and its maps) at a time, plus the full-resolution map (float32,
H x W) and the image itself (uint8): never all tiles at once. The blend weights are separable over a
grid layout, so their sum is two vectors, not a second H x W array.

The scorer is handed in by the caller (predictor, evaluation): this module imports no model,
training or metrics code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from torchvision.transforms import functional as TF

from inp_former.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kernels.scoring import top_k_count, top_k_mean

# tiles -> (maps (b, S, S), scores (b,)[, embeddings (b, C)]): score_batch's or the fast path's outputs
TileScorer = Callable[[torch.Tensor], Sequence[torch.Tensor]]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along an axis of ``length`` pixels: [0] when one tile covers it
    (padded if ``length < tile``); else the fewest evenly spread tiles with neighbours sharing at
    least ``overlap`` pixels, the last one ending at ``length``."""
    if not 0 <= overlap < tile:
        raise ValueError(f"tile_overlap {overlap}: expected 0 <= overlap < tile {tile}")
    if length <= tile:
        return [0]
    gaps = -(-(length - tile) // (tile - overlap))          # ceil: steps of at most tile - overlap
    return [i * (length - tile) // gaps for i in range(gaps + 1)]


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of an image of ``height x width`` pixels lie: the grid ``rows x cols`` of
    start offsets (top, left), row-major."""

    height: int
    width: int
    tile: int
    overlap: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @classmethod
    def of(cls, height: int, width: int, tile: int, overlap: int) -> "TileLayout":
        return cls(height, width, tile, overlap, tuple(tile_starts(height, tile, overlap)),
                   tuple(tile_starts(width, tile, overlap)))

    @property
    def padded(self) -> tuple[int, int]:
        """(height, width) after padding an image smaller than a tile up to it."""
        return max(self.height, self.tile), max(self.width, self.tile)

    @property
    def positions(self) -> list[tuple[int, int]]:
        return [(top, left) for top in self.rows for left in self.cols]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)


def blend_ramp(tile: int, overlap: int) -> torch.Tensor:
    """(tile,) float32 weights along one axis of a tile: 1 inside, falling linearly over the
    ``overlap`` border pixels to 0.5 / overlap at the outermost pixel (never 0); all ones without
    overlap. Where two neighbours share exactly ``overlap`` pixels their ramps sum to 1."""
    if overlap == 0:
        return torch.ones(tile)
    centre = torch.arange(tile, dtype=torch.float64) + 0.5
    distance = torch.minimum(centre, tile - centre)          # to the nearer border, pixel centres
    return (distance / overlap).clamp(max=1.0).float()


def axis_weight_sum(starts: Sequence[int], length: int, ramp: torch.Tensor) -> torch.Tensor:
    """(length,) the sum of the ramps of the tiles at ``starts`` (length: the padded extent)."""
    total = torch.zeros(length)
    for start in starts:
        total[start:start + len(ramp)] += ramp
    return total


def to_uint8_tensor(image: Any) -> torch.Tensor:
    """An RGB PIL image (or (H, W, 3) uint8 array) as a (3, H, W) uint8 tensor at its own
    resolution: what a tiled model's images are held as (a quarter of float32's memory); tiles
    are normalised one batch at a time (:func:`normalise`)."""
    array = np.array(image, dtype=np.uint8)   # a writable copy (PIL's array view is read-only)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image of shape {array.shape}: expected (H, W, 3) RGB")
    return torch.from_numpy(array).permute(2, 0, 1)


def normalise(tiles: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32, ImageNet-normalised: the same operations as the square
    preprocessing (to_tensor's / 255, then normalize), so a tile equals that preprocessing's output
    for the same pixels."""
    return TF.normalize(tiles.float().div(255), IMAGENET_MEAN, IMAGENET_STD)


def pad_to_tile(image: torch.Tensor, tile: int) -> torch.Tensor:
    """(3, H, W) with its bottom/right reflected out to at least ``tile`` pixels on each axis
    (unchanged, not copied, when it is large enough)."""
    height, width = image.shape[-2:]
    if height >= tile and width >= tile:
        return image
    array = np.pad(image.cpu().numpy(), ((0, 0), (0, max(0, tile - height)), (0, max(0, tile - width))),
                   mode="reflect")
    return torch.from_numpy(array).to(image.device)


def tile_batches(image: torch.Tensor, layout: TileLayout,
                 batch_size: int) -> Iterator[tuple[torch.Tensor, list[tuple[int, int]]]]:
    """(tiles (b, 3, tile, tile) normalised float32, their (top, left)) of a (3, H, W) uint8 image,
    ``batch_size`` tiles at a time (the last batch may be smaller)."""
    padded = pad_to_tile(image, layout.tile)
    positions, size = layout.positions, layout.tile
    for first in range(0, len(positions), batch_size):
        chunk = positions[first:first + batch_size]
        tiles = torch.stack([padded[:, top:top + size, left:left + size] for top, left in chunk])
        yield normalise(tiles), chunk


@dataclass
class TiledScore:
    """One image scored through its tiles."""

    map: torch.Tensor                   # (H, W) float32 on the CPU, the image's own resolution
    score: torch.Tensor                 # () float32: mean of the top top_fraction of ``map``
    embedding: torch.Tensor | None      # (C,) unit length: the mean of the tiles' embeddings, if scored


def score_image(image: torch.Tensor, model_cfg: Any, score_tiles: TileScorer, batch_size: int,
                device: torch.device | str = "cpu") -> TiledScore:
    """The full-resolution anomaly map and image score of a (3, H, W) uint8 image, scored by
    ``score_tiles`` (tiles -> maps, scores[, embeddings]) in batches of ``batch_size`` tiles.

    ``model_cfg`` is the model's ``ModelConfig`` (``tile``, ``tile_overlap``, ``top_fraction``)."""
    if image.dim() != 3 or image.dtype != torch.uint8:
        raise ValueError(f"image {tuple(image.shape)} {image.dtype}: expected (3, H, W) uint8 (to_uint8_tensor)")
    tile, overlap = int(model_cfg.tile), int(model_cfg.tile_overlap)
    height, width = image.shape[-2:]
    layout = TileLayout.of(height, width, tile, overlap)
    ramp = blend_ramp(tile, overlap)
    weight = ramp[:, None] * ramp[None, :]
    total = torch.zeros(layout.padded)                       # the one full-resolution array
    embeddings = None
    for tiles, positions in tile_batches(image, layout, batch_size):
        scored = score_tiles(tiles.to(device))
        maps = scored[0].detach().float()
        if maps.shape[-1] != tile or maps.shape[-2] != tile:
            maps = F.interpolate(maps[:, None], size=(tile, tile), mode="bilinear", align_corners=False)[:, 0]
        maps = maps.cpu() * weight
        for tile_map, (top, left) in zip(maps, positions):
            total[top:top + tile, left:left + tile] += tile_map
        if len(scored) > 2 and scored[2] is not None:
            part = scored[2].detach().float().sum(0).cpu()
            embeddings = part if embeddings is None else embeddings + part
        del scored, maps, tiles
    # divide by the separable weight sum, in place: no second H x W array
    total.div_(axis_weight_sum(layout.rows, layout.padded[0], ramp)[:, None])
    total.div_(axis_weight_sum(layout.cols, layout.padded[1], ramp)[None, :])
    full = total if layout.padded == (height, width) else total[:height, :width].contiguous()
    score = top_k_mean(full.reshape(1, -1), top_k_count(full.numel(), model_cfg.top_fraction))[0]
    embedding = None if embeddings is None else F.normalize(embeddings, dim=0)
    return TiledScore(full, score, embedding)


__all__ = ["TileLayout", "TileScorer", "TiledScore", "axis_weight_sum", "blend_ramp", "normalise",
           "pad_to_tile", "score_image", "tile_batches", "tile_starts", "to_uint8_tensor"]
