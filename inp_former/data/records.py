"""What every dataset layout yields: a list of Samples, read by one Dataset class."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A dataset folder or file does not match the expected layout (one line, names the path)."""


@dataclass(frozen=True)
class Sample:
    path: str
    category: str
    label: int                 # 0 normal, 1 anomalous
    mask_path: str | None      # ground truth of an anomalous image, if any
    defect: str = "good"


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (extensions matched case-insensitively), sorted."""
    return sorted(p for p in folder.iterdir() if is_image(p)) if folder.is_dir() else []


class AnomalyDataset(Dataset):
    """Samples -> dict(image, mask, label, category, path); masks are zeros where none exists."""

    def __init__(self, samples: list[Sample], transform: Callable, mask_transform: Callable | None = None) -> None:
        self.samples = samples
        self.transform = transform
        self.mask_transform = mask_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        from inp_former.data.transforms import load_mask, load_rgb

        sample = self.samples[index]
        image = self.transform(load_rgb(sample.path))
        item = {"image": image, "label": sample.label, "category": sample.category, "path": sample.path}
        if self.mask_transform is not None:
            if sample.mask_path is not None:
                item["mask"] = self.mask_transform(load_mask(sample.mask_path))
            else:
                item["mask"] = torch.zeros(1, *image.shape[-2:])
        return item
