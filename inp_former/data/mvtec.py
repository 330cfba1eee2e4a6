"""The MVTec-AD layout.

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<defect|good>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

Image extensions are matched case-insensitively, masks by ``<stem>_mask`` with any image extension.
"""
from __future__ import annotations

from pathlib import Path

from inp_former.data.records import DatasetError, Sample, list_images

LAYOUT = "expected <root>/<category>/train/good/*.png, test/<defect>/*.png, ground_truth/<defect>/<name>_mask.png"
MASK_SUFFIX = "_mask"


def mvtec_categories(root: str | Path) -> list[str]:
    """Sorted names of the category folders under ``root`` (those holding ``train/good``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder ({LAYOUT})")
    found = sorted(p.name for p in root.iterdir()
                   if not p.name.startswith(".") and (p / "train" / "good").is_dir())
    if found:
        return found
    if (root / "train" / "good").is_dir():  # a common slip: the category folder itself was given
        raise DatasetError(f"{root}: this is one category folder; pass its parent folder instead ({LAYOUT})")
    what = "is empty" if not any(root.iterdir()) else "has no category folder with train/good inside"
    raise DatasetError(f"{root}: the dataset folder {what} ({LAYOUT})")


def mvtec_samples(root: str | Path, category: str, split: str) -> list[Sample]:
    """The samples of one category and split ('train': normal images only; 'test': all), sorted."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected 'train' or 'test'")
    root = Path(root)
    available = mvtec_categories(root)  # also checks the root itself
    if category not in available:
        raise DatasetError(f"{root / category}: no such category with train/good inside "
                           f"(available: {', '.join(available)})")
    base = root / category
    if split == "train":
        return _train_samples(base, category)
    return _test_samples(base, category)


def _train_samples(base: Path, category: str) -> list[Sample]:
    folder = base / "train" / "good"
    images = list_images(folder)
    if not images:
        raise DatasetError(f"{folder}: no training images ({LAYOUT})")
    return [Sample(str(p), category, 0, None, "good") for p in images]


def _masks_by_stem(folder: Path) -> dict[str, Path]:
    """``{image stem (lower case): mask path}`` for the ``<stem>_mask.<ext>`` files in ``folder``."""
    masks: dict[str, Path] = {}
    for mask in list_images(folder):
        stem = mask.stem.lower()
        if not stem.endswith(MASK_SUFFIX):
            raise DatasetError(f"{mask}: a ground-truth file not named <image name>{MASK_SUFFIX}.png ({LAYOUT})")
        key = stem[: -len(MASK_SUFFIX)]
        if key in masks:
            raise DatasetError(f"{mask}: a second mask for the same image (the other is {masks[key]})")
        masks[key] = mask
    return masks


def _test_samples(base: Path, category: str) -> list[Sample]:
    test, ground_truth = base / "test", base / "ground_truth"
    defects = sorted(p.name for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if test.is_dir() else []
    samples: list[Sample] = []
    for defect in defects:
        images = list_images(test / defect)
        if defect == "good":
            samples += [Sample(str(p), category, 0, None, defect) for p in images]
            continue
        masks = _masks_by_stem(ground_truth / defect)
        for image in images:
            mask = masks.pop(image.stem.lower(), None)
            if mask is None:
                expected = ground_truth / defect / f"{image.stem}{MASK_SUFFIX}.png"
                raise DatasetError(f"{image}: anomalous test image without its mask (expected {expected})")
            samples.append(Sample(str(image), category, 1, str(mask), defect))
        if masks:  # masks left over: their images are missing
            mask = sorted(masks.values())[0]
            stem = mask.stem[: -len(MASK_SUFFIX)]
            raise DatasetError(f"{mask}: mask without its image (expected {test / defect / stem}.png)")
    if not samples:
        raise DatasetError(f"{test}: no test images ({LAYOUT})")
    # ground-truth folders of defects that have no test folder at all
    if ground_truth.is_dir():
        for folder in sorted(p for p in ground_truth.iterdir() if p.is_dir() and p.name not in defects):
            masks = _masks_by_stem(folder)
            if masks:
                mask = sorted(masks.values())[0]
                stem = mask.stem[: -len(MASK_SUFFIX)]
                raise DatasetError(f"{mask}: mask without its image (expected {test / folder.name / stem}.png)")
    return samples
