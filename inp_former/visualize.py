"""Pictures like the paper's figures, drawn with PIL and numpy (no plotting library).

* :func:`overlay`: an anomaly map as a heatmap over the image, with the ground-truth contour
  (Fig. 3). The colour scale is FIXED by the caller (``value_range``), normally the calibration's
  ``map_range`` = [median of normal test pixels, 99.9th percentile of all test pixels] (see
  :mod:`inp_former.thresholds`): values at or below ``lo`` are dark blue, at or above ``hi`` dark red,
  whatever the other images are, so a normal image does not look hot.
* :func:`inp_attention_maps`: for each INP, the INP Extractor's cross-attention over the image's
  patches (Fig. 7 and Fig. S6, "cross-attention maps between INPs and image patches"): the softmax
  weights with which INP query m aggregates the patch tokens, averaged over heads, (B, M, grid_h, grid_w).
  They are read by a forward hook that recomputes them from the block's own inputs and weights; the
  model's outputs are untouched. (The decoder's ReLU attention goes the other way, patch -> INPs, and
  is not what the figure shows.) Each map sums to 1 over the patches; pictures scale each map by its
  own maximum, as attention figures usually do.
* :func:`distance_map`: per patch, 1 - cos to the nearest INP (``out.prototype_distance``; Fig. 4/8),
  upsampled and blurred like the anomaly maps (the zero-shot map).
* :func:`density_svg`: the density of anomaly scores of normal vs anomalous pixels (Fig. 5), from the
  calibration histograms (a histogram density, not a KDE), as an inline SVG plot.
* :func:`loss_curve_svg`: the training loss against the iteration (a run's ``train_log.csv``).

Colours: the "jet" colormap (blue -> cyan -> yellow -> red), as in the paper's figures; ground truth is
drawn as a green contour, the predicted region (map >= pixel threshold) as a white contour.
"""
from __future__ import annotations

import base64
import contextlib
import html
import io
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

GT_COLOUR = (0, 255, 0)
PREDICTED_COLOUR = (255, 255, 255)
HEATMAP_ROWS = 256   # rows coloured at a time (heatmap)


# --- images -------------------------------------------------------------------------------------

def model_view(image: Image.Image, resize: int | tuple[int, int], crop: int | tuple[int, int]) -> Image.Image:
    """The RGB crop the model sees (what its maps cover): resize to ``resize`` (PIL bilinear),
    centre crop, by the same :class:`~inp_former.data.geometry.Geometry` as the preprocessing.
    Sizes are ints (squares) or (height, width)."""
    from inp_former.data.geometry import Geometry

    return Geometry(resize, crop).forward_image(image.convert("RGB"))


def map_view(image: Image.Image, model) -> Image.Image:
    """The picture a map of a model (``cfg.model``) is drawn over: the centre crop it sees
    (:func:`model_view`), or with ``keep_aspect``, which crops nothing, the whole image at its own
    size (the map is resized back to it, so the overlay has the input image's size)."""
    if model.keep_aspect:
        return image.convert("RGB")
    return model_view(image, model.resize_hw, model.input_hw)


def denormalize(image: torch.Tensor) -> Image.Image:
    """A preprocessed (3, H, W) tensor (ImageNet-normalised) back to an RGB image."""
    from inp_former.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    array = ((image.detach().float().cpu() * std + mean).clamp(0, 1) * 255 + 0.5).byte()
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB with the jet colormap (…, 3)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    rgb = np.stack([np.clip(1.5 - np.abs(4 * v - 3), 0, 1), np.clip(1.5 - np.abs(4 * v - 2), 0, 1),
                    np.clip(1.5 - np.abs(4 * v - 1), 0, 1)], axis=-1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map to (width, height) = ``size``."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape[::-1] == tuple(size):
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values))[None, None]
    return F.interpolate(tensor, size=(size[1], size[0]), mode="bilinear", align_corners=False)[0, 0].numpy()


def heatmap(values: np.ndarray, value_range: tuple[float, float], size: tuple[int, int] | None = None) -> Image.Image:
    """A map coloured on the fixed scale ``value_range`` = (lo, hi)."""
    lo, hi = value_range
    if size is not None:
        values = resize_map(values, size)
    values = np.asarray(values)
    colours = np.empty((*values.shape, 3), dtype=np.uint8)
    # in bands of rows: a full-resolution map (tiling) costs 3 bytes per pixel here, not jet's ~60
    for start in range(0, values.shape[0], HEATMAP_ROWS):
        band = values[start:start + HEATMAP_ROWS]
        colours[start:start + HEATMAP_ROWS] = jet((np.asarray(band, dtype=np.float64) - lo) / max(hi - lo, 1e-12))
    return Image.fromarray(colours)


def contour(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The boundary pixels of a boolean mask (inside edge), ``thickness`` pixels wide."""
    mask = np.asarray(mask, dtype=bool)
    inner = mask.copy()
    for _ in range(max(1, thickness)):
        padded = np.pad(inner, 1, mode="edge")
        inner = (inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def _thickness(size: tuple[int, int]) -> int:
    return max(1, round(min(size) / 200))


def overlay(image: Image.Image, values: np.ndarray, value_range: tuple[float, float], alpha: float = 0.5,
            mask: np.ndarray | None = None, pixel_threshold: float | None = None) -> Image.Image:
    """``values`` (any size; resized to the image) as a heatmap blended over ``image``.

    ``mask``: ground truth (any size, > 0.5 = anomalous), drawn as a green contour. ``pixel_threshold``:
    the region ``values >= pixel_threshold`` drawn as a white contour.
    """
    image = image.convert("RGB")
    size = image.size
    resized = resize_map(values, size)
    blended = Image.blend(image, heatmap(resized, value_range), alpha)
    array = np.array(blended)
    thick = _thickness(size)
    if pixel_threshold is not None:
        array[contour(resized >= pixel_threshold, thick)] = PREDICTED_COLOUR
    if mask is not None:
        gt = resize_map(np.asarray(mask, dtype=np.float32), size) > 0.5
        array[contour(gt, thick)] = GT_COLOUR
    return Image.fromarray(array)


def with_contour(image: Image.Image, mask: np.ndarray | None) -> Image.Image:
    """The image with the ground-truth contour (Fig. 3's top row)."""
    image = image.convert("RGB")
    if mask is None:
        return image
    array = np.array(image)
    gt = resize_map(np.asarray(mask, dtype=np.float32), image.size) > 0.5
    array[contour(gt, _thickness(image.size))] = GT_COLOUR
    return Image.fromarray(array)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


# --- what the model computes ------------------------------------------------------------------------

@contextlib.contextmanager
def capture_inp_attention(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every forward of ``model`` appends the INP Extractor's cross-attention
    weights (B, M, N) (softmax over the N patches, mean over heads) to the yielded list.

    A forward hook recomputes them from the attention block's inputs and weights, so the model's
    outputs do not change (the fused scaled_dot_product_attention does not expose its weights).
    """
    attn = model.extractor.attn
    captured: list[torch.Tensor] = []

    def hook(module, args, output) -> None:
        queries, tokens = args[0], args[1]
        with torch.no_grad():
            b, m, c = queries.shape
            n, h = tokens.shape[1], module.num_heads
            d = c // h
            q = module.q(queries).float().reshape(b, m, h, d).transpose(1, 2)             # (B, H, M, D)
            k = module.kv(tokens)[..., :c].float().reshape(b, n, h, d).transpose(1, 2)     # (B, H, N, D)
            weights = torch.softmax(q @ k.transpose(-2, -1) * d ** -0.5, dim=-1)           # (B, H, M, N)
            captured.append(weights.mean(1).cpu())

    handle = attn.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def inp_attention_maps(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, M, grid_h, grid_w): each INP's cross-attention over the patches of preprocessed ``images``."""
    with capture_inp_attention(model) as captured, torch.no_grad():
        out = model(images)
    weights = captured[-1]
    return weights.reshape(weights.shape[0], weights.shape[1], *out.grid)


def distance_map(prototype_distance: torch.Tensor, image_size: int | tuple[int, int],
                 map_size: int | tuple[int, int], kernel_size: int = 5, sigma: float = 4.0,
                 grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, N) distance to the nearest INP on the token ``grid`` (None: square) of images of
    ``image_size`` -> (B, *map_size) maps (ints: squares), processed like the anomaly maps."""
    from kernels.scoring import upsample_token_map

    return upsample_token_map(prototype_distance.float(), image_size=image_size, out_size=map_size,
                              kernel_size=kernel_size, sigma=sigma, grid=grid)


def attention_images(view: Image.Image, weights: torch.Tensor, alpha: float = 0.6) -> list[Image.Image]:
    """One overlay per INP of (M, grid_h, grid_w) attention weights, each scaled by its own maximum."""
    out = []
    for w in weights.float().cpu().numpy():
        top = float(w.max())
        out.append(overlay(view, w, (0.0, top if top > 0 else 1.0), alpha=alpha))
    return out


# --- score densities (Fig. 5) -------------------------------------------------------------------------

def _smooth(values: Sequence[float], sigma_bins: float = 1.0) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 3:
        return values
    radius = max(1, int(3 * sigma_bins))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-x ** 2 / (2 * sigma_bins ** 2))
    kernel /= kernel.sum()
    return np.convolve(values, kernel, mode="same")


def density_svg(density: dict[str, list[float]], title: str = "", threshold: float | None = None,
                width: int = 420, height: int = 220) -> str:
    """An inline SVG of the densities of normal (blue) and anomalous (red) pixel scores.

    ``density``: {'edges', 'normal', 'anomalous'} as :meth:`inp_former.thresholds.PixelHistogram.density`
    gives it. A dashed line marks ``threshold`` (the pixel threshold)."""
    edges = np.asarray(density.get("edges", []), dtype=np.float64)
    left, right, top, bottom = 48, 12, 26, 34
    pw, ph = width - left - right, height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="15" text-anchor="middle" font-size="12">{html.escape(title)}</text>']
    if len(edges) < 2:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no pixels</text></svg>')
        return "".join(parts)
    centres = (edges[:-1] + edges[1:]) / 2
    curves = {name: _smooth(density.get(name) or []) for name in ("normal", "anomalous")}
    peak = max([float(c.max()) for c in curves.values() if len(c)] + [1e-12])
    x0, x1 = float(edges[0]), float(edges[-1])

    def sx(x: float) -> float:
        return left + (x - x0) / max(x1 - x0, 1e-12) * pw

    def sy(y: float) -> float:
        return top + ph - y / peak * ph

    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    for name, colour in (("normal", "#1f77b4"), ("anomalous", "#d62728")):
        curve = curves[name]
        if not len(curve):
            continue
        points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(centres, curve))
        area = f"{sx(centres[0]):.1f},{sy(0):.1f} {points} {sx(centres[-1]):.1f},{sy(0):.1f}"
        parts.append(f'<polygon points="{area}" fill="{colour}" fill-opacity="0.25" stroke="none"/>')
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        parts.append(f'<line x1="{sx(x):.1f}" y1="{top + ph}" x2="{sx(x):.1f}" y2="{top + ph + 4}" stroke="#444"/>')
        anchor = "end" if i == 4 else "middle"  # the last label would run past the right edge
        parts.append(f'<text x="{sx(x):.1f}" y="{top + ph + 16}" text-anchor="{anchor}">{_fmt(x)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 3}" text-anchor="middle">anomaly score (map value)</text>')
    parts.append(f'<text x="12" y="{top + ph / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + ph / 2})">density</text>')
    if threshold is not None and x0 <= threshold <= x1:
        parts.append(f'<line x1="{sx(threshold):.1f}" y1="{top}" x2="{sx(threshold):.1f}" y2="{top + ph}" '
                     f'stroke="#333" stroke-dasharray="4,3"/>')
    legend_x = left + pw - 110
    for i, (name, colour) in enumerate((("normal pixels", "#1f77b4"), ("anomalous pixels", "#d62728"))):
        y = top + 12 + 14 * i
        parts.append(f'<line x1="{legend_x}" y1="{y - 4}" x2="{legend_x + 16}" y2="{y - 4}" stroke="{colour}" '
                     f'stroke-width="3"/><text x="{legend_x + 20}" y="{y}">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)


def loss_curve_svg(iterations: Sequence[float], losses: Sequence[float], title: str = "", width: int = 420,
                   height: int = 220, points: int = 400) -> str:
    """An inline SVG of the training loss against the iteration (``train_log.csv``'s columns).

    Non-finite losses (skipped steps) are left out; a long run is drawn as ``points`` averages of
    consecutive steps, so the file stays small and the curve readable."""
    x, y = np.asarray(iterations, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    span = (float(x.min()), float(x.max())) if len(x) else (0.0, 0.0)   # of the steps, not of the averages
    if len(x) > points:  # the mean of each run of consecutive steps
        x, y = (np.array([chunk.mean() for chunk in np.array_split(v, points)]) for v in (x, y))
    left, right, top, bottom = 52, 12, 26, 34
    pw, ph = width - left - right, height - top - bottom
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} '
            f'{height}" font-family="sans-serif" font-size="11"><rect width="{width}" height="{height}" fill="white"/>'
            f'<text x="{width / 2}" y="15" text-anchor="middle" font-size="12">{html.escape(title)}</text>')
    if not len(x):
        return head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no finite losses</text></svg>'
    (x0, x1), (y0, y1) = span, (float(y.min()), float(y.max()))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1e-12)

    def sx(value: float) -> float:
        return left + (value - x0) / (x1 - x0) * pw

    def sy(value: float) -> float:
        return top + ph - (value - y0) / (y1 - y0) * ph

    parts = [head, f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>',
             f'<polyline points="{" ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x, y))}" fill="none" '
             'stroke="#1f77b4" stroke-width="1.5"/>']
    for i in range(5):
        tx, ty = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        anchor = "end" if i == 4 else "middle"  # the last label would run past the right edge
        parts.append(f'<text x="{sx(tx):.1f}" y="{top + ph + 16}" text-anchor="{anchor}">{tx:.0f}</text>'
                     f'<text x="{left - 4}" y="{sy(ty) + 4:.1f}" text-anchor="end">{_fmt(ty)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 3}" text-anchor="middle">iteration</text>'
                 f'<text x="12" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 12 {top + ph / 2})">'
                 "loss</text></svg>")
    return "".join(parts)


def _fmt(x: float) -> str:
    if x == 0 or 1e-3 <= abs(x) < 1e4:
        return f"{x:.3g}"
    return f"{x:.1e}"


def colour_bar(value_range: tuple[float, float], width: int = 256, height: int = 12) -> Image.Image:
    """A horizontal jet colour bar for ``value_range`` (the labels go in the HTML)."""
    ramp = np.tile(np.linspace(0, 1, width)[None, :], (height, 1))
    return Image.fromarray(jet(ramp))


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
