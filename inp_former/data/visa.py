"""The VisA layouts: the "1cls" folders the authors train on, and raw VisA with its split csv.

1cls (made from the official ``split_csv/1cls.csv`` by VisA's preparation script)::

    <root>/<category>/train/good/*.JPG
    <root>/<category>/test/good/*.JPG
    <root>/<category>/test/bad/*.JPG
    <root>/<category>/ground_truth/bad/<image name>.png

Raw VisA (as downloaded), read through the csv on the fly (nothing is written, the folder is never
edited)::

    <root>/split_csv/1cls.csv          columns object,split,label,image,mask
    <root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG
    <root>/<category>/Data/Masks/Anomaly/*.png   (0/1 masks)

``--data`` may name the 1cls folder itself, its parent (``VisA_pytorch`` holding ``1cls``), or the raw
VisA folder holding ``split_csv/1cls.csv``; the layout is detected from what is there.
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path

from inp_former.data.records import DatasetError, Sample, list_images

LAYOUT_1CLS = ("expected <root>/<category>/train/good/*.JPG, test/{good,bad}/*.JPG, ground_truth/bad/<name>.png "
               "(VisA 1cls), or raw VisA: <root>/split_csv/1cls.csv with <root>/<category>/Data/Images/...")
CSV_NAME = Path("split_csv") / "1cls.csv"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")


def _resolve(root: Path) -> tuple[str, Path]:
    """('1cls', folder) or ('raw', root) for a data root."""
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder ({LAYOUT_1CLS})")
    if (root / CSV_NAME).is_file():
        return "raw", root
    for candidate in (root, root / "1cls"):
        if candidate.is_dir() and any((p / "train" / "good").is_dir() for p in candidate.iterdir() if p.is_dir()):
            return "1cls", candidate
    if (root / "train" / "good").is_dir():
        raise DatasetError(f"{root}: this is one category folder; pass its parent folder instead ({LAYOUT_1CLS})")
    if (root / "split_csv").is_dir():
        raise DatasetError(f"{root / CSV_NAME}: no such file; raw VisA needs the official split csv ({LAYOUT_1CLS})")
    raise DatasetError(f"{root}: neither VisA 1cls folders (<category>/train/good) nor split_csv/1cls.csv "
                       f"found ({LAYOUT_1CLS})")


@functools.lru_cache(maxsize=8)
def _read_csv(path: str, mtime: float) -> tuple[tuple[str, str, str, str, str], ...]:
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(CSV_COLUMNS)})")
        for line, row in enumerate(reader, start=2):
            values = tuple((row.get(c) or "").strip() for c in CSV_COLUMNS)
            if values[1] not in ("train", "test") or values[2] not in ("normal", "anomaly"):
                raise DatasetError(f"{path}:{line}: split must be train|test and label normal|anomaly "
                                   f"(got {values[1]!r}, {values[2]!r})")
            rows.append(values)
    if not rows:
        raise DatasetError(f"{path}: the split csv has no rows")
    return tuple(rows)


def _csv_rows(root: Path):
    path = root / CSV_NAME
    return _read_csv(str(path), path.stat().st_mtime)


def visa_categories(root: str | Path) -> list[str]:
    kind, base = _resolve(Path(root))
    if kind == "raw":
        return sorted({row[0] for row in _csv_rows(base)})
    return sorted(p.name for p in base.iterdir() if not p.name.startswith(".") and (p / "train" / "good").is_dir())


def visa_samples(root: str | Path, category: str, split: str) -> list[Sample]:
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected 'train' or 'test'")
    kind, base = _resolve(Path(root))
    available = visa_categories(root)
    if category not in available:
        raise DatasetError(f"{base / category}: no such VisA category (available: {', '.join(available)})")
    if kind == "raw":
        return _raw_samples(base, category, split)
    return _1cls_samples(base / category, category, split)


def _1cls_samples(base: Path, category: str, split: str) -> list[Sample]:
    if split == "train":
        folder = base / "train" / "good"
        images = list_images(folder)
        if not images:
            raise DatasetError(f"{folder}: no training images ({LAYOUT_1CLS})")
        return [Sample(str(p), category, 0, None, "good") for p in images]
    good, bad, truth = base / "test" / "good", base / "test" / "bad", base / "ground_truth" / "bad"
    samples = [Sample(str(p), category, 0, None, "good") for p in list_images(good)]
    masks: dict[str, Path] = {}
    for mask in list_images(truth):
        stem = mask.stem.lower()
        masks[stem[:-5] if stem.endswith("_mask") else stem] = mask
    for image in list_images(bad):
        mask = masks.get(image.stem.lower())
        if mask is None:
            raise DatasetError(f"{image}: anomalous test image without its mask (expected {truth / image.stem}.png; "
                               f"{LAYOUT_1CLS})")
        samples.append(Sample(str(image), category, 1, str(mask), "bad"))
    if not samples:
        raise DatasetError(f"{base / 'test'}: no test images ({LAYOUT_1CLS})")
    return samples


def _raw_samples(root: Path, category: str, split: str) -> list[Sample]:
    csv_path = root / CSV_NAME
    samples = []
    for obj, row_split, label, image, mask in _csv_rows(root):
        if obj != category or row_split != split:
            continue
        image_path = root / image
        if not image_path.is_file():
            raise DatasetError(f"{image_path}: listed in {csv_path} but missing ({LAYOUT_1CLS})")
        if label == "anomaly":
            if not mask:
                raise DatasetError(f"{csv_path}: anomalous image {image} has no mask entry")
            mask_path = root / mask
            if not mask_path.is_file():
                raise DatasetError(f"{mask_path}: mask listed in {csv_path} but missing")
            samples.append(Sample(str(image_path), category, 1, str(mask_path), "bad"))
        else:
            samples.append(Sample(str(image_path), category, 0, None, "good"))
    if not samples:
        raise DatasetError(f"{csv_path}: no {split} rows for category {category!r}")
    return sorted(samples, key=lambda s: s.path)
