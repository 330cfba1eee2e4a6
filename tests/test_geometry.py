"""Preprocessing geometry (inp_former/data/geometry.py): the forward resize + centre crop is exactly
today's torchvision/PIL result, and the inverse puts map points and maps back where they came from."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from inp_former.config import ModelConfig
from inp_former.data import Geometry, image_transform, mask_transform
from inp_former.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from inp_former.runtime import preprocess_uint8
from inp_former.visualize import model_view

# (resize, crop): the default; offsets (65 - 50) / 2 = 7.5 -> 8 and (63 - 50) / 2 = 6.5 -> 6 (round half
# to even, as torchvision); no crop at all
SQUARE = [(448, 392), (65, 50), (63, 50), (50, 50)]
ORIGINAL = (300, 200)   # (width, height), non-square


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = 127 + 60 * np.sin(2 * np.pi * 5 * x) * np.cos(2 * np.pi * 3 * y)
    rgb = np.stack([base, base * 0.8 + 30, base * 0.6 + 50], -1) + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def binary_mask(width: int, height: int) -> Image.Image:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4:height // 2, width // 3:width // 2 + 3] = 255
    return Image.fromarray(mask)


# ---------------------------------------------------------------- the geometry itself


def test_sizes_offsets_and_config():
    g = Geometry(448, 392)
    assert g == Geometry((448, 448), (392, 392)) and g.resize == (448, 448) and g.crop == (392, 392)
    assert g.offset == (28, 28) and g.box == (28, 28, 420, 420)
    assert Geometry(65, 50).offset == (8, 8) and Geometry(63, 50).offset == (6, 6)
    assert Geometry.from_model_config(ModelConfig(resize=64, crop=56)) == Geometry(64, 56)
    tall = Geometry((300, 400), (200, 381))          # (height, width) kept apart
    assert tall.offset == (50, 10) and tall.box == (10, 50, 391, 250)
    for resize, crop in [(64, 72), (64, 0), ((64, 64), (32, 65))]:
        with pytest.raises(ValueError, match="crop"):
            Geometry(resize, crop)
    with pytest.raises(ValueError, match="resized to 64x64"):
        Geometry(64, 56).crop_tensor(torch.zeros(1, 3, 60, 64))


# ---------------------------------------------------------------- forward == today's torchvision/PIL


@pytest.mark.parametrize("resize, crop", SQUARE)
def test_forward_equals_torchvision_exactly(resize, crop):
    """image_transform, mask_transform, model_view and the tensor path, on a non-square image, against
    the torchvision pipelines they replaced: equal bit for bit."""
    image, mask = photo(*ORIGINAL), binary_mask(*ORIGINAL)
    resize_pil = T.Resize((resize, resize), interpolation=T.InterpolationMode.BILINEAR)
    old_image = T.Compose([resize_pil, T.ToTensor(), T.CenterCrop(crop), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    old_mask = T.Compose([resize_pil, T.ToTensor(), T.CenterCrop(crop)])
    assert torch.equal(image_transform(resize, crop)(image), old_image(image))
    assert torch.equal(mask_transform(resize, crop)(mask), old_mask(mask))
    old_view = T.CenterCrop(crop)(resize_pil(image))
    assert np.array_equal(np.asarray(model_view(image, resize, crop)), np.asarray(old_view))
    assert np.array_equal(np.asarray(Geometry(resize, crop).forward_image(image)), np.asarray(old_view))
    old_nearest = T.CenterCrop(crop)(T.Resize((resize, resize), interpolation=T.InterpolationMode.NEAREST)(mask))
    assert np.array_equal(np.asarray(Geometry(resize, crop).forward_mask(mask)), np.asarray(old_nearest))

    # the tensor path as runtime.preprocess_uint8 computed it before it used Geometry
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    x = F.interpolate(tensor[None].float().div_(255.0), size=(resize, resize), mode="bilinear",
                      align_corners=False, antialias=True)
    top = int(round((resize - crop) / 2.0))
    x = x[..., top:top + crop, top:top + crop]
    old = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.equal(preprocess_uint8([tensor], resize, crop), old)


def test_non_square_geometry_keeps_height_and_width_apart():
    g = Geometry((300, 400), (200, 381))
    image = photo(*ORIGINAL)
    assert g.forward_image(image).size == (381, 200)                    # PIL: (width, height)
    assert g.forward_tensor(torch.rand(2, 3, 200, 300)).shape == (2, 3, 200, 381)
    assert g.forward_mask(binary_mask(*ORIGINAL)).size == (381, 200)


def test_masks_stay_binary():
    """Nearest resampling (forward_mask, paste(mode='nearest')) keeps a binary mask binary. The
    evaluation's ground truth is different on purpose: bilinear, binarised later (test_data.py)."""
    g = Geometry(448, 392)
    view = np.asarray(g.forward_mask(binary_mask(*ORIGINAL)))
    assert set(np.unique(view)) == {0, 255}
    pasted = g.paste(view > 0, ORIGINAL, fill=False, mode="nearest")
    assert pasted.dtype == bool and pasted.shape == (200, 300) and pasted.any() and not pasted.all()
    labels = g.paste(np.where(view > 0, 255, 0).astype(np.uint8), ORIGINAL, fill=0, mode="nearest")
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 255}


# ---------------------------------------------------------------- inverse: coordinates


@pytest.mark.parametrize("map_size", [256, 392])
def test_crop_corners_and_centre_map_to_the_right_original_pixels(map_size):
    """Worked by hand: a 300 x 200 image resized to 448 x 448, cropped [28, 420) on both axes; the map
    covers the crop. x: 28 * 300/448 = 18.75, 420 * 300/448 = 281.25; y: 28 * 200/448 = 12.5, 187.5."""
    g = Geometry(448, 392)
    corners = [(0, 0), (map_size, 0), (0, map_size), (map_size, map_size), (map_size / 2, map_size / 2)]
    expected = [(18.75, 12.5), (281.25, 12.5), (18.75, 187.5), (281.25, 187.5), (150.0, 100.0)]
    np.testing.assert_allclose(g.to_original(corners, ORIGINAL, map_size), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.to_map(expected, ORIGINAL, map_size), corners, rtol=0, atol=1e-9)
    box = g.box_to_original((0, 0, map_size, map_size), ORIGINAL, map_size)
    assert box == pytest.approx((18.75, 12.5, 281.25, 187.5))
    # the corner map PIXELS' centres lie half a map pixel inside: x 18.75 + 0.5 * 392/map * 300/448
    # (19.26 at map 256, 19.09 at 392) and 281.25 minus that; y 12.5 + 0.5 * 392/map * 200/448 (12.84,
    # 12.72) and 187.5 minus that. The original pixel holding a point is its floor.
    first, last, middle = 0.5, map_size - 0.5, map_size / 2
    pixels = np.floor(g.to_original([(first, first), (last, last), (middle, middle)], ORIGINAL, map_size))
    assert pixels.tolist() == [[19, 12], [280, 187], [150, 100]]
    # a centre exactly on a pixel edge stays exact: (11.5 + 8) * 300/65 = 90, so it is in pixel 90, not 89
    assert Geometry(65, 50).to_original([(11.5, 0.5)], ORIGINAL, 50)[0, 0] == 90.0


# offsets 28, (64 - 51) / 2 = 6.5 -> 6, 7.5 -> 8, and (28, 1.5 -> 2) for (height, width) = (256, 384)
@pytest.mark.parametrize("geometry", [Geometry(448, 392), Geometry(64, 51), Geometry(64, 49),
                                      Geometry((256, 384), (200, 381))],
                         ids=["448-392", "64-51", "64-49", "non-square"])
def test_every_crop_pixel_maps_to_the_original_pixel_pil_samples(geometry):
    """An independent check of the inverse: an image holding each pixel's own x (and y) index, pushed
    forward with PIL's nearest resampling, names the original pixel under each crop pixel's centre;
    to_original must name the same one (map_size = crop, so map pixels are crop pixels).

    The sizes put no crop pixel centre exactly on an original pixel edge ((2k + 1) * W / (2 * resize)
    is never whole when W / (2 * resize) reduces to an even denominator: 150/448, 150/64, 100/256...):
    at such ties PIL's own incrementally summed coordinate can fall an ulp either side."""
    width, height = ORIGINAL
    ys, xs = np.mgrid[0:height, 0:width].astype(np.int32)
    seen_x = np.asarray(geometry.forward_image(Image.fromarray(xs, "I"), Image.Resampling.NEAREST))
    seen_y = np.asarray(geometry.forward_image(Image.fromarray(ys, "I"), Image.Resampling.NEAREST))
    crop_h, crop_w = geometry.crop
    rows, cols = np.mgrid[0:crop_h, 0:crop_w] + 0.5
    centres = np.stack([cols, rows], -1)
    ours = np.floor(geometry.to_original(centres, ORIGINAL, geometry.crop)).astype(int)
    assert np.array_equal(ours[..., 0], seen_x) and np.array_equal(ours[..., 1], seen_y)


# ---------------------------------------------------------------- inverse: maps


def forward_map(original: np.ndarray, geometry: Geometry, map_size: int) -> np.ndarray:
    """An original-size map pushed forward as an image would be (the geometry's tensor resize and crop),
    then brought to map_size with plain bilinear, which reproduces affine functions exactly."""
    tensor = geometry.forward_tensor(torch.from_numpy(original)[None, None])
    return F.interpolate(tensor, size=(map_size, map_size), mode="bilinear", align_corners=False)[0, 0].numpy()


def test_paste_fills_outside_the_crop():
    g, values = Geometry(448, 392), np.ones((256, 256), np.float32)
    pasted = g.paste(values, ORIGINAL)
    assert pasted.shape == (200, 300) and pasted.dtype == np.float32
    inside = np.isfinite(pasted)
    # pixels whose centres lie in [18.75, 281.25) x [12.5, 187.5): columns 19..280, rows 12..186
    assert inside[12:187, 19:281].all() and inside.sum() == 175 * 262
    assert np.all(pasted[inside] == 1)
    assert np.all(g.paste(values, ORIGINAL, fill=-1.0)[~inside] == -1)
    with pytest.raises(ValueError, match="mode"):
        g.paste(values, ORIGINAL, mode="bicubic")


MAP, MARGIN = 256, 3   # map pixels within MARGIN of the map's edge see the fill (NaN) or the held edge


@pytest.mark.parametrize("original", [(300, 200), (200, 333)])
def test_paste_then_forward_gives_the_map_back(original):
    """Paste, then resize/crop forward again. When the original is smaller than the resize every step
    is linear interpolation, which is exact on affine maps: ramps come back to rounding error (a
    geometric slip of 1/448 px would not). A smooth map comes back within the interpolation bound:
    each of the three resamplings (paste, resize, crop -> map) adds at most h^2/8 (|f_xx| + |f_yy|),
    with grid spacing h <= 1 map pixel, hence the bound 3/8 (max|f_xx| + max|f_yy|)."""
    g = Geometry(448, 392)
    rows, cols = np.mgrid[0:MAP, 0:MAP] + 0.5
    inner = (slice(MARGIN, MAP - MARGIN),) * 2
    for ramp in (cols, rows, 0.3 * cols - 0.7 * rows):
        back = forward_map(g.paste(ramp, original), g, MAP)
        np.testing.assert_allclose(back[inner], ramp[inner], rtol=0, atol=1e-9)
    period_x, period_y = 64, 48  # features of the size the blurred (sigma 4) anomaly maps have
    smooth = np.sin(2 * np.pi * cols / period_x) * np.cos(2 * np.pi * rows / period_y)
    bound = 3 / 8 * ((2 * np.pi / period_x) ** 2 + (2 * np.pi / period_y) ** 2)
    back = forward_map(g.paste(smooth, original), g, MAP)
    assert not np.isnan(back[inner]).any()
    assert np.abs(back[inner] - smooth[inner]).max() <= bound


def test_paste_then_forward_when_the_original_is_shrunk():
    """Shrinking (1000 x 700 -> 448) goes through the antialiased filter (PIL's, and torch's antialias),
    whose triangle is placed on truncated supports: it moves samples by ~0.02 map pixels, so a unit
    ramp comes back within 0.05. A half-pixel slip in the geometry would be 0.15 here."""
    g = Geometry(448, 392)
    rows, cols = np.mgrid[0:MAP, 0:MAP] + 0.5
    inner = (slice(MARGIN, MAP - MARGIN),) * 2
    for ramp in (cols, rows):
        back = forward_map(g.paste(ramp, (1000, 700)), g, MAP)
        np.testing.assert_allclose(back[inner], ramp[inner], rtol=0, atol=0.05)
    assert math.isclose(0.5 * MAP / 392 * 448 / 1000, 0.146, abs_tol=1e-3)  # the half-pixel slip, in map px
