"""Datasets: each folder layout is a function that yields the same Sample records."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from inp_former.data.mvtec import mvtec_categories, mvtec_samples
from inp_former.data.records import IMAGE_EXTENSIONS, AnomalyDataset, DatasetError, Sample
from inp_former.data.transforms import (few_shot_augmentations, image_transform, load_mask, load_rgb,
                                        mask_transform, masks_for_metrics)

# layout name -> (categories(root), samples(root, category, split))
LAYOUTS: dict[str, tuple[Callable[[Path], list[str]], Callable[[Path, str, str], list[Sample]]]] = {
    "mvtec": (mvtec_categories, mvtec_samples),
}


def _layout(dataset: str):
    if dataset not in LAYOUTS:
        raise ValueError(f"--dataset {dataset!r}: expected one of {', '.join(LAYOUTS)}")
    return LAYOUTS[dataset]


def list_categories(dataset: str, root: str | Path) -> list[str]:
    return _layout(dataset)[0](Path(root))


def build_samples(dataset: str, root: str | Path, category: str, split: str) -> list[Sample]:
    return _layout(dataset)[1](Path(root), category, split)


__all__ = ["AnomalyDataset", "DatasetError", "IMAGE_EXTENSIONS", "LAYOUTS", "Sample", "build_samples",
           "few_shot_augmentations", "image_transform", "list_categories", "load_mask", "load_rgb",
           "mask_transform", "masks_for_metrics"]
