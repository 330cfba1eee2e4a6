"""The Real-IAD layout: images under ``realiad_1024``, splits in one json per category.

    <root>/realiad_1024/<category>/<...>/*.jpg            (each view is one image)
    <root>/realiad_jsons/realiad_jsons/<category>.json    (also accepted: <root>/realiad_jsons/<category>.json)

Each json holds ``{"meta": ..., "train": [...], "test": [...]}``; a record has ``image_path``,
``mask_path`` (null for normal images) and ``anomaly_class`` (``"OK"`` = normal). Paths are relative
to the category folder ``realiad_1024/<category>`` (also accepted: relative to ``realiad_1024``).
Only the default split (``realiad_jsons/realiad_jsons``, the one the paper uses) is read; the other json
folders (``realiad_jsons_sv``, ``realiad_jsons_fuiad_*``) are ignored.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from inp_former.data.records import DatasetError, Sample

LAYOUT = ("expected <root>/realiad_1024/<category>/... images and <root>/realiad_jsons/realiad_jsons/<category>.json "
          "with train/test lists of {image_path, mask_path, anomaly_class ('OK' = normal)}")
NORMAL_CLASS = "OK"


def _json_folder(root: Path) -> Path:
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder ({LAYOUT})")
    for folder in (root / "realiad_jsons" / "realiad_jsons", root / "realiad_jsons"):
        if folder.is_dir() and any(folder.glob("*.json")):
            return folder
    if (root.name == "realiad_jsons" or root.name == "realiad_1024") and (root.parent / "realiad_1024").is_dir():
        raise DatasetError(f"{root}: pass the Real-IAD folder that holds realiad_1024 and realiad_jsons ({LAYOUT})")
    raise DatasetError(f"{root / 'realiad_jsons' / 'realiad_jsons'}: no <category>.json split files ({LAYOUT})")


def realiad_categories(root: str | Path) -> list[str]:
    root = Path(root)
    folder = _json_folder(root)
    return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))


@functools.lru_cache(maxsize=64)
def _read_json(path: str, mtime: float) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable json file ({exc.__class__.__name__}; {LAYOUT})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("train"), list) or not isinstance(data.get("test"), list):
        raise DatasetError(f"{path}: expected a json object with 'train' and 'test' lists ({LAYOUT})")
    return data


def realiad_samples(root: str | Path, category: str, split: str) -> list[Sample]:
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected 'train' or 'test'")
    root = Path(root)
    available = realiad_categories(root)
    if category not in available:
        raise DatasetError(f"{_json_folder(root) / category}.json: no such Real-IAD category "
                           f"(available: {', '.join(available)})")
    json_path = _json_folder(root) / f"{category}.json"
    records = _read_json(str(json_path), json_path.stat().st_mtime)[split]
    images = root / "realiad_1024"
    if not images.is_dir():
        raise DatasetError(f"{images}: no such image folder ({LAYOUT})")
    base = None
    samples = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or "image_path" not in record:
            raise DatasetError(f"{json_path}: {split}[{index}] has no image_path ({LAYOUT})")
        if base is None:  # paths relative to the category folder (the authors' json), else to realiad_1024
            first = record["image_path"]
            base = next((b for b in (images / category, images) if (b / first).is_file()), None)
            if base is None:
                raise DatasetError(f"{images / category / first}: image listed in {json_path} is missing ({LAYOUT})")
        anomalous = str(record.get("anomaly_class", NORMAL_CLASS)) != NORMAL_CLASS
        mask = record.get("mask_path")
        if anomalous and not mask:
            raise DatasetError(f"{json_path}: {split}[{index}] ({record['image_path']}) is anomalous but has no mask_path")
        for kind, rel in (("image", record["image_path"]), ("mask", mask if anomalous else None)):
            if rel is not None and not (base / rel).is_file():
                raise DatasetError(f"{base / rel}: {kind} listed in {json_path} ({split}[{index}]) is missing ({LAYOUT})")
        samples.append(Sample(str(base / record["image_path"]), category, int(anomalous),
                              str(base / mask) if anomalous else None,
                              str(record.get("anomaly_class", NORMAL_CLASS)) if anomalous else "good"))
    if not samples:
        raise DatasetError(f"{json_path}: the {split!r} list is empty")
    return samples
