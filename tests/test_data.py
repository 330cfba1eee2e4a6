"""Data: preprocessing, robust image loading, the MVTec layout, few-shot augmentations, the demo set."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inp_former.data import (AnomalyDataset, DatasetError, Sample, build_samples, few_shot_augmentations,
                             image_transform, list_categories, load_mask, load_rgb, mask_transform,
                             masks_for_metrics, mvtec_categories, mvtec_samples, register_layout)
from inp_former.data import demo as demo_module
from inp_former.data.demo import ensure_demo_dataset, generate_demo_dataset
from inp_former.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from tests.datagen import make_mvtec_tree

MEAN = np.array(IMAGENET_MEAN)[:, None, None]
STD = np.array(IMAGENET_STD)[:, None, None]


def random_rgb(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def read(path: str | Path, dtype=np.uint8) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img, dtype=dtype)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- transforms


def test_image_transform_shape_and_range():
    out = image_transform()(random_rgb(100, 130))
    assert out.shape == (3, 392, 392) and out.dtype == torch.float32
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    values = out.numpy()
    assert (values >= low - 1e-5).all() and (values <= high + 1e-5).all()


def test_image_transform_equals_hand_computation():
    image = random_rgb(10, 12)
    # PIL bilinear resize to 8x8, to [0, 1], center crop 6 (offset 1), ImageNet normalisation
    expected = np.asarray(image.resize((8, 8), Image.BILINEAR), dtype=np.float64).transpose(2, 0, 1) / 255.0
    expected = (expected[:, 1:7, 1:7] - MEAN) / STD
    np.testing.assert_allclose(image_transform(8, 6)(image).numpy(), expected, atol=1e-6)


def test_crop_larger_than_resize_is_refused():
    with pytest.raises(ValueError, match="crop"):
        image_transform(64, 72)


def test_mask_pipeline_is_resized_like_the_image_then_binarised():
    mask = np.zeros((40, 40), np.uint8)
    mask[10:25, 5:30] = 255
    out = mask_transform(64, 56)(Image.fromarray(mask))
    assert out.shape == (1, 56, 56) and out.min() >= 0 and out.max() <= 1
    assert ((out > 0) & (out < 1)).any()  # bilinear edges, binarised only for the metrics
    binary = masks_for_metrics(out[None], out_size=32)
    assert binary.shape == (1, 32, 32) and binary.dtype == torch.bool
    expected = torch.nn.functional.interpolate(out[None], size=32, mode="nearest")[:, 0] > 0.5
    assert torch.equal(binary, expected) and binary.any() and not binary.all()


@pytest.mark.parametrize("kind", ["zero-one", "red-rgb", "palette", "bilevel"])
def test_masks_in_other_encodings_keep_their_defect(tmp_path, kind):
    region = np.zeros((16, 16), bool)
    region[4:10, 6:12] = True
    if kind == "zero-one":
        img = Image.fromarray(region.astype(np.uint8))
    elif kind == "red-rgb":  # luminance of pure red is 76: it must not vanish
        rgb = np.zeros((16, 16, 3), np.uint8)
        rgb[region] = (255, 0, 0)
        img = Image.fromarray(rgb)
    elif kind == "palette":
        img = Image.fromarray(region.astype(np.uint8)).convert("P")
        img.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    else:
        img = Image.fromarray(region.astype(np.uint8) * 255).convert("1")
    img.save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png")
    assert mask.mode == "L"
    assert np.array_equal(np.asarray(mask), region.astype(np.uint8) * 255)


# ---------------------------------------------------------------- load_rgb


def test_load_rgb_converts_grayscale_rgba_16bit_palette(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = np.asarray(load_rgb(tmp_path / "gray.png"))
    assert out.shape == (8, 8, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))

    rgba = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: alpha is dropped, the colour under it is kept
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "rgba.png")), rgba[..., :3])

    sixteen = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 257 * 4)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as deep:
        assert deep.mode.startswith("I")
    out = load_rgb(tmp_path / "deep.png")
    assert out.mode == "RGB" and np.array_equal(np.asarray(out)[..., 0], gray)

    palette = Image.fromarray(np.indices((8, 8)).sum(0).astype(np.uint8) % 2).convert("P")
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    out = np.asarray(load_rgb(tmp_path / "palette.png"))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (200, 100, 50)

    Image.fromarray(gray).save(tmp_path / "upper.JPG", quality=95)
    assert load_rgb(tmp_path / "upper.JPG").size == (8, 8)


def test_load_rgb_reports_broken_files_by_name(tmp_path):
    random_rgb(64, 64).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.png").write_text("not an image\n")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("truncated.png", "notes.png", "empty.jpg", "missing.png"):
        with pytest.raises(DatasetError) as error:
            load_rgb(tmp_path / name)
        assert str(tmp_path / name) in one_line(error)


# ---------------------------------------------------------------- MVTec layout


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_mvtec_tree(tmp_path / "mvtec", categories=("bottle", "cable"), n_train=3, n_test_good=2,
                           n_test_bad=2, size=32)


def test_mvtec_categories_and_samples(tree):
    assert mvtec_categories(tree) == ["bottle", "cable"] == list_categories("mvtec", tree)
    train = mvtec_samples(tree, "cable", "train")
    assert [Path(s.path).name for s in train] == ["000.png", "001.png", "002.png"]
    assert all(s.label == 0 and s.mask_path is None and s.category == "cable" for s in train)
    test = mvtec_samples(tree, "cable", "test")
    assert [(s.defect, s.label) for s in test] == [("defect", 1)] * 2 + [("good", 0)] * 2
    for s in test:
        assert (s.mask_path is None) == (s.label == 0)
        if s.mask_path:
            assert Path(s.mask_path).name == Path(s.path).stem + "_mask.png"
    assert build_samples("mvtec", tree, "cable", "test") == test  # deterministic


def test_mvtec_extensions_are_case_insensitive(tree):
    base = tree / "bottle"
    (base / "train/good/001.png").rename(base / "train/good/001.PNG")
    (base / "test/defect/000.png").rename(base / "test/defect/000.Png")
    (base / "ground_truth/defect/000_mask.png").rename(base / "ground_truth/defect/000_MASK.PNG")
    (base / "train/good/._002.png").write_bytes(b"AppleDouble junk")  # hidden: ignored
    (base / "train/good/readme.txt").write_text("ignored")
    assert len(mvtec_samples(tree, "bottle", "train")) == 3
    anomalous = [s for s in mvtec_samples(tree, "bottle", "test") if s.label == 1]
    assert Path(anomalous[0].path).name == "000.Png" and Path(anomalous[0].mask_path).name == "000_MASK.PNG"


def test_mvtec_root_errors(tmp_path, tree):
    with pytest.raises(DatasetError) as error:
        mvtec_categories(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in one_line(error) and "train/good" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        mvtec_categories(tmp_path / "empty")
    (tmp_path / "other" / "stuff").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no category folder"):
        mvtec_categories(tmp_path / "other")
    with pytest.raises(DatasetError, match="parent"):  # a category folder given as the root
        mvtec_categories(tree / "bottle")


def test_mvtec_unknown_category_lists_the_available_ones(tree):
    with pytest.raises(DatasetError) as error:
        mvtec_samples(tree, "screw", "train")
    assert "screw" in one_line(error) and "available: bottle, cable" in str(error.value)


def test_mvtec_missing_mask_names_the_image_and_the_expected_mask(tree):
    (tree / "cable/ground_truth/defect/001_mask.png").unlink()
    with pytest.raises(DatasetError) as error:
        mvtec_samples(tree, "cable", "test")
    message = one_line(error)
    assert str(tree / "cable/test/defect/001.png") in message
    assert str(tree / "cable/ground_truth/defect/001_mask.png") in message
    assert mvtec_samples(tree, "cable", "train")  # the train split does not need masks


def test_mvtec_mask_without_image_is_named(tree):
    (tree / "cable/test/defect/001.png").unlink()
    with pytest.raises(DatasetError) as error:
        mvtec_samples(tree, "cable", "test")
    assert str(tree / "cable/ground_truth/defect/001_mask.png") in one_line(error)


def test_mvtec_no_train_or_test_images(tree):
    for image in (tree / "bottle/train/good").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match="no training images"):
        mvtec_samples(tree, "bottle", "train")
    shutil.rmtree(tree / "cable/test")
    shutil.rmtree(tree / "cable/ground_truth")
    with pytest.raises(DatasetError, match="no test images"):
        mvtec_samples(tree, "cable", "test")


def test_registry_rejects_unknown_layouts_and_trains_on_normal_images_only(tree):
    with pytest.raises(ValueError, match="mvtec"):
        build_samples("kolektor", tree, "bottle", "train")
    with pytest.raises(ValueError, match="split"):
        build_samples("mvtec", tree, "bottle", "val")
    sloppy = [Sample("a.png", "x", 0, None), Sample("b.png", "x", 1, "b_mask.png", "crack")]
    register_layout("sloppy-test-layout", lambda root: ["x"], lambda root, category, split: sloppy)
    try:
        assert build_samples("sloppy-test-layout", tree, "x", "train") == sloppy[:1]
    finally:
        from inp_former.data import LAYOUTS
        LAYOUTS.pop("sloppy-test-layout")


def test_anomaly_dataset_items(tree):
    test = AnomalyDataset(build_samples("mvtec", tree, "cable", "test"), image_transform(40, 28))
    anomalous, normal = test[0], test[len(test) - 1]
    assert set(anomalous) == {"image", "mask", "label", "category", "path"}
    assert anomalous["image"].shape == (3, 28, 28) and anomalous["mask"].shape == (1, 28, 28)
    assert anomalous["label"] == 1 and anomalous["mask"].max() > 0.5  # mask transform derived from the image's
    assert normal["label"] == 0 and not normal["mask"].any()
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=4)))
    assert batch["image"].shape == (4, 3, 28, 28) and batch["mask"].shape == (4, 1, 28, 28)
    train = AnomalyDataset(build_samples("mvtec", tree, "cable", "train"), image_transform(40, 28))
    assert all(train[i]["label"] == 0 and not train[i]["mask"].any() for i in range(len(train)))


def test_anomaly_dataset_needs_a_mask_transform_for_masks_with_a_custom_transform(tree):
    samples = build_samples("mvtec", tree, "cable", "test")
    with pytest.raises(ValueError, match="mask_transform"):
        AnomalyDataset(samples, lambda image: torch.zeros(3, 8, 8))


# ---------------------------------------------------------------- few-shot


def test_few_shot_augmentations():
    image = random_rgb(48, 48, seed=3)
    out = few_shot_augmentations(image)
    assert len(out) == 22
    assert all(a.size == image.size and a.mode == "RGB" for a in out)
    arrays = [np.asarray(a) for a in out]
    assert np.array_equal(arrays[0], np.asarray(image))
    assert np.array_equal(arrays[17], np.asarray(image)[:, ::-1])  # horizontal flip
    gray = arrays[18]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    for k, turned in zip((1, 2, 3), arrays[19:]):
        assert np.array_equal(turned, np.rot90(np.asarray(image), k))
    assert all(not np.array_equal(a, arrays[0]) for a in arrays[1:17])  # rotations, translations change it
    again = few_shot_augmentations(image)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(arrays, again))  # deterministic


def test_few_shot_warps_keep_a_flat_image_flat():
    flat = Image.new("RGB", (20, 20), (120, 40, 200))
    for warped in few_shot_augmentations(flat)[1:17]:  # reflection padding: no black borders
        assert np.all(np.asarray(warped) == (120, 40, 200))


def test_few_shot_translation_moves_by_a_twentieth_per_tenth():
    # a 0.1 shift in affine_grid's [-1, 1] coordinates is 5% of the image: 2 px of 40
    ramp = np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1))
    out = np.asarray(few_shot_augmentations(Image.fromarray(ramp))[13])  # (0.1, 0.1)
    assert np.array_equal(out[20, 10:30], ramp[20, 12:32])


# ---------------------------------------------------------------- demo dataset


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return ensure_demo_dataset(tmp_path_factory.mktemp("cache"), seed=0)


def test_demo_dataset_layout(demo_root):
    assert demo_root.name == "demo-v1" and (demo_root / ".complete").is_file()
    assert mvtec_categories(demo_root) == ["brick", "grass", "gravel"]
    for category in ("brick", "grass", "gravel"):
        train = mvtec_samples(demo_root, category, "train")
        test = mvtec_samples(demo_root, category, "test")
        assert len(train) == 40 and sum(s.label == 0 for s in test) == 10
        anomalous = [s for s in test if s.label == 1]
        assert len(anomalous) == 20 and {s.defect for s in anomalous} == {"scratch", "stain", "hole", "patch"}
        for s in anomalous:
            image, mask = read(s.path), read(s.mask_path)
            assert image.ndim == 3 and image.shape[2] == 3 and image.shape[:2] == mask.shape
            assert 0 < (mask > 127).mean() < 0.25  # a real, local defect
    assert not any(p.name.startswith(".demo-v1.") for p in demo_root.parent.iterdir())  # no staging left


def test_demo_dataset_defects_are_visible(demo_root):
    """Inside the mask the image differs from a normal crop's statistics; outside it is untouched texture."""
    for s in (s for c in ("brick", "grass", "gravel") for s in mvtec_samples(demo_root, c, "test")):
        if s.label == 1:
            image, mask = read(s.path, np.float64), read(s.mask_path) > 127
            inside, outside = image[mask].mean(axis=0), image[~mask].mean(axis=0)
            assert np.abs(inside - outside).max() > 20, s.path


def test_demo_dataset_is_reused_not_rewritten(demo_root):
    probe = demo_root / "brick/train/good/000.png"
    before = (probe.stat().st_mtime_ns, (demo_root / ".complete").stat().st_mtime_ns)
    assert ensure_demo_dataset(demo_root.parent, seed=0) == demo_root
    assert (probe.stat().st_mtime_ns, (demo_root / ".complete").stat().st_mtime_ns) == before


def test_demo_dataset_is_deterministic(demo_root, tmp_path):
    generate_demo_dataset(tmp_path / "same", seed=0)
    assert tree_digest(tmp_path / "same") == tree_digest(demo_root)
    generate_demo_dataset(tmp_path / "other", seed=1)
    other = tree_digest(tmp_path / "other")
    assert other.keys() == tree_digest(demo_root).keys() and other != tree_digest(demo_root)


def test_demo_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def crash(target: Path, seed: int = 0) -> None:
        (Path(target) / "brick").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "generate_demo_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_dataset(tmp_path, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_demo_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("INPCTL_CACHE", str(tmp_path))
    assert demo_module.default_cache_dir() == tmp_path
    monkeypatch.delenv("INPCTL_CACHE")
    assert demo_module.default_cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "inpctl"
    assert demo_module.demo_folder_name(0) == "demo-v1" and demo_module.demo_folder_name(3) == "demo-v1-seed3"
