"""Tiny datasets in the real VisA (1cls and raw), Real-IAD and generic-folder layouts, for tests."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from tests.datagen import _image


def _defect(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    image, mask = _image(rng, size), np.zeros((size, size), np.uint8)
    y, x = rng.integers(4, size // 2, size=2)
    h, w = rng.integers(size // 8, size // 3, size=2)
    image[y:y + h, x:x + w] = 250
    mask[y:y + h, x:x + w] = 1
    return image.astype(np.uint8), mask


def _save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def make_visa_raw(root: Path, categories: Sequence[str] = ("candle", "pcb1"), n_train: int = 4, n_test_good: int = 2,
                  n_test_bad: int = 2, size: int = 64, seed: int = 1) -> Path:
    """Raw VisA: ``<cat>/Data/Images/{Normal,Anomaly}/*.JPG``, ``<cat>/Data/Masks/Anomaly/*.png`` (0/1)
    and ``split_csv/1cls.csv`` (object,split,label,image,mask)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    rows = []
    for category in categories:
        data = root / category / "Data"
        for i in range(n_train + n_test_good):
            name = f"{i:04d}.JPG"
            _save(_image(rng, size), data / "Images" / "Normal" / name)
            rows.append([category, "train" if i < n_train else "test", "normal",
                         f"{category}/Data/Images/Normal/{name}", ""])
        for i in range(n_test_bad):
            image, mask = _defect(rng, size)
            _save(image, data / "Images" / "Anomaly" / f"{i:03d}.JPG")
            _save(mask, data / "Masks" / "Anomaly" / f"{i:03d}.png")
            rows.append([category, "test", "anomaly", f"{category}/Data/Images/Anomaly/{i:03d}.JPG",
                         f"{category}/Data/Masks/Anomaly/{i:03d}.png"])
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return root


def make_visa_1cls(root: Path, categories: Sequence[str] = ("candle", "pcb1"), n_train: int = 4, n_test_good: int = 2,
                   n_test_bad: int = 2, size: int = 64, seed: int = 1) -> Path:
    """VisA 1cls (what VisA's preparation script writes): ``<cat>/train/good``, ``test/{good,bad}``,
    ``ground_truth/bad/<image stem>.png`` (0/255)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for category in categories:
        base = root / category
        for i in range(n_train):
            _save(_image(rng, size), base / "train" / "good" / f"{i:04d}.JPG")
        for i in range(n_test_good):
            _save(_image(rng, size), base / "test" / "good" / f"{i + n_train:04d}.JPG")
        for i in range(n_test_bad):
            image, mask = _defect(rng, size)
            _save(image, base / "test" / "bad" / f"{i:03d}.JPG")
            _save(mask * 255, base / "ground_truth" / "bad" / f"{i:03d}.png")
    return root


def make_realiad(root: Path, categories: Sequence[str] = ("audiokack", "bottle_cap"), n_train: int = 4,
                 n_test_good: int = 2, n_test_bad: int = 2, size: int = 64, seed: int = 2) -> Path:
    """Real-IAD: ``realiad_1024/<cat>/{OK,NG/<defect>}/S<sample>/<name>_C<view>.jpg`` (+ ``.png`` masks) and
    ``realiad_jsons/realiad_jsons/<cat>.json``; json paths are relative to the category folder."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for category in categories:
        base = root / "realiad_1024" / category
        split: dict[str, list] = {"train": [], "test": []}
        for i in range(n_train + n_test_good):
            view = i % 5 + 1
            rel = f"OK/S{i // 5:04d}/{category}_{i:04d}_OK_C{view}.jpg"
            _save(_image(rng, size), base / rel)
            split["train" if i < n_train else "test"].append(
                {"category": category, "anomaly_class": "OK", "image_path": rel, "mask_path": None})
        for i in range(n_test_bad):
            image, mask = _defect(rng, size)
            rel = f"NG/QS/S{100 + i:04d}/{category}_{i:04d}_NG_QS_C{i % 5 + 1}"
            _save(image, base / f"{rel}.jpg")
            _save(mask * 255, base / f"{rel}.png")
            split["test"].append({"category": category, "anomaly_class": "QS", "image_path": f"{rel}.jpg",
                                  "mask_path": f"{rel}.png"})
        jsons = root / "realiad_jsons" / "realiad_jsons"
        jsons.mkdir(parents=True, exist_ok=True)
        (jsons / f"{category}.json").write_text(json.dumps(
            {"meta": {"prefix": "", "normal_class": "OK", "pixel_anomaly": True}, **split}))
    return root


def make_folder(root: Path, n_normal: int = 10, n_abnormal: int = 2, masks: bool = True, size: int = 64,
                seed: int = 3) -> Path:
    """Generic folder dataset: ``normal/``, ``abnormal/`` and (optionally) ``mask/`` named like the images."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for i in range(n_normal):
        _save(_image(rng, size), root / "normal" / f"n{i:03d}.png")
    for i in range(n_abnormal):
        image, mask = _defect(rng, size)
        _save(image, root / "abnormal" / f"a{i:03d}.png")
        if masks:
            _save(mask * 255, root / "mask" / f"a{i:03d}.png")
    return root
