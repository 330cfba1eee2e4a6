"""A generic folder dataset for your own images (``--dataset folder``).

One category::

    <root>/normal/*.png              normal images (required; also accepted: good/)
    <root>/abnormal/*.png            anomalous images (optional; also: anomaly/, bad/; may hold <defect>/ subfolders)
    <root>/mask/*.png                their masks (optional; also: masks/, ground_truth/), named like the image
                                     (<name>.png or <name>_mask.png, same <defect>/ subfolder as the image)
    <root>/normal_test/*.png         normal test images (optional, see below)

Several categories: the same, one folder per category (``<root>/<category>/normal/...``).

Train/test split: when there is no ``normal_test/`` folder, a fixed, seeded fraction
(:data:`HOLDOUT_FRACTION`, 20%, at least one image; seed :data:`HOLDOUT_SEED`) of ``normal/`` is held
out for testing and never trained on; the rest is the training set. The split depends only on the
file names, so training and a later evaluation see the same split. Anomalous images are test-only.
Anomalous images without a mask count for the image metrics; their pixel metrics treat them as
having no defective pixels, so give masks when you want pixel metrics.
"""
from __future__ import annotations

import random
from pathlib import Path

from inp_former.data.records import DatasetError, Sample, list_images

NORMAL_DIRS = ("normal", "good")
ABNORMAL_DIRS = ("abnormal", "anomaly", "bad")
MASK_DIRS = ("mask", "masks", "ground_truth")
NORMAL_TEST_DIRS = ("normal_test", "test_normal")
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0
LAYOUT = ("expected <root>/normal/*.png (required), optional <root>/abnormal/[<defect>/]*.png, optional "
          "<root>/mask/[<defect>/]<name>.png and optional <root>/normal_test/*.png; or one such folder per "
          "category: <root>/<category>/normal/...")


def _first_dir(base: Path, names: tuple[str, ...]) -> Path | None:
    return next((base / n for n in names if (base / n).is_dir()), None)


def _single(root: Path) -> bool:
    return _first_dir(root, NORMAL_DIRS) is not None


def folder_categories(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder ({LAYOUT})")
    if _single(root):
        return [root.name]
    found = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and not p.name.startswith(".") and _single(p))
    if not found:
        raise DatasetError(f"{root}: no normal/ folder, nor category folders holding one ({LAYOUT})")
    return found


def _category_dir(root: Path, category: str) -> Path:
    available = folder_categories(root)
    if category not in available:
        raise DatasetError(f"{root / category}: no such category (available: {', '.join(available)})")
    return root if _single(root) else root / category


def split_normal(images: list[Path], fraction: float = HOLDOUT_FRACTION,
                 seed: int = HOLDOUT_SEED) -> tuple[list[Path], list[Path]]:
    """(train, held-out test) from a sorted list of normal images; deterministic for given names."""
    images = sorted(images)
    if len(images) < 2:
        return images, []
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    n_test = min(len(images) - 1, max(1, round(fraction * len(images))))
    held = set(order[:n_test])
    return ([p for i, p in enumerate(images) if i not in held], [p for i, p in enumerate(images) if i in held])


def _abnormal(base: Path, category: str) -> list[Sample]:
    folder = _first_dir(base, ABNORMAL_DIRS)
    if folder is None:
        return []
    masks_dir = _first_dir(base, MASK_DIRS)
    groups = [("bad", folder)] + [(p.name, p) for p in sorted(folder.iterdir())
                                  if p.is_dir() and not p.name.startswith(".")]
    samples = []
    for defect, images_dir in groups:
        masks: dict[str, Path] = {}
        if masks_dir is not None:
            mask_folder = masks_dir if images_dir == folder else masks_dir / defect
            for mask in list_images(mask_folder):
                stem = mask.stem.lower()
                masks[stem[:-5] if stem.endswith("_mask") else stem] = mask
        for image in list_images(images_dir):
            mask = masks.get(image.stem.lower())
            if masks_dir is not None and mask is None:
                where = masks_dir if images_dir == folder else masks_dir / defect
                raise DatasetError(f"{image}: anomalous image without its mask (expected {where / image.stem}.png; "
                                   f"remove {masks_dir} to evaluate without masks; {LAYOUT})")
            samples.append(Sample(str(image), category, 1, str(mask) if mask else None, defect))
    return samples


def folder_samples(root: str | Path, category: str, split: str) -> list[Sample]:
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected 'train' or 'test'")
    base = _category_dir(Path(root), category)
    normal_dir = _first_dir(base, NORMAL_DIRS)
    normal = list_images(normal_dir)
    if not normal:
        raise DatasetError(f"{normal_dir}: no normal images ({LAYOUT})")
    test_dir = _first_dir(base, NORMAL_TEST_DIRS)
    if test_dir is not None:
        train, held = normal, list_images(test_dir)
    else:
        train, held = split_normal(normal)
    if split == "train":
        return [Sample(str(p), category, 0, None, "good") for p in train]
    samples = [Sample(str(p), category, 0, None, "good") for p in held] + _abnormal(base, category)
    if not samples:
        raise DatasetError(f"{base}: no test images: add normal_test/ or abnormal/ images, or more than one "
                           f"normal image ({LAYOUT})")
    return samples
