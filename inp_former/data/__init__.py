"""Datasets: each folder layout is two functions that yield the same Sample records.

A layout is registered with :func:`register_layout` (name, ``categories(root)``,
``samples(root, category, split)``); the rest of the library only calls :func:`list_categories`
and :func:`build_samples`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from inp_former.data.demo import ensure_demo_dataset
from inp_former.data.geometry import Geometry
from inp_former.data.mvtec import mvtec_categories, mvtec_samples
from inp_former.errors import ConfigError
from inp_former.data.records import IMAGE_EXTENSIONS, AnomalyDataset, DatasetError, Sample
from inp_former.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, few_shot_augmentations, image_transform,
                                        load_mask, load_rgb, mask_transform, masks_for_metrics)

SPLITS = ("train", "test")


class Layout(NamedTuple):
    categories: Callable[[Path], list[str]]
    samples: Callable[[Path, str, str], list[Sample]]


LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, categories: Callable[[Path], list[str]],
                    samples: Callable[[Path, str, str], list[Sample]]) -> None:
    """Make a folder layout available by ``name`` (e.g. ``--dataset name`` on the command line)."""
    LAYOUTS[name] = Layout(categories, samples)


register_layout("mvtec", mvtec_categories, mvtec_samples)


def _register_builtin_layouts() -> None:
    from inp_former.data.folder import folder_categories, folder_samples
    from inp_former.data.realiad import realiad_categories, realiad_samples
    from inp_former.data.visa import visa_categories, visa_samples

    register_layout("visa", visa_categories, visa_samples)
    register_layout("realiad", realiad_categories, realiad_samples)
    register_layout("folder", folder_categories, folder_samples)


_register_builtin_layouts()


def _layout(dataset: str) -> Layout:
    if dataset not in LAYOUTS:
        raise ConfigError(f"dataset {dataset!r}: expected one of {', '.join(sorted(LAYOUTS))}", arg="dataset")
    return LAYOUTS[dataset]


def list_categories(dataset: str, root: str | Path) -> list[str]:
    """The category names of the dataset at ``root``, sorted."""
    return _layout(dataset).categories(Path(root))


def build_samples(dataset: str, root: str | Path, category: str, split: str) -> list[Sample]:
    """The samples of one category and split; the 'train' split holds normal images only."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    samples = _layout(dataset).samples(Path(root), category, split)
    if split == "train":  # unsupervised training: whatever a layout lists, never train on anomalies
        samples = [s for s in samples if s.label == 0]
        if not samples:
            raise DatasetError(f"{root}: category {category!r} has no normal training images")
    return samples


__all__ = ["AnomalyDataset", "DatasetError", "Geometry", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "LAYOUTS",
           "Layout", "SPLITS", "Sample", "build_samples", "ensure_demo_dataset", "few_shot_augmentations",
           "image_transform", "list_categories", "load_mask", "load_rgb", "mask_transform", "masks_for_metrics",
           "mvtec_categories", "mvtec_samples", "register_layout"]
