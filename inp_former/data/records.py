"""What every dataset layout yields: a list of Samples, read by one Dataset class."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from inp_former.data.transforms import load_mask, load_rgb, mask_transform as make_mask_transform
from inp_former.errors import DatasetError  # re-exported as inp_former.data.DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Sample:
    path: str
    category: str
    label: int                 # 0 normal, 1 anomalous
    mask_path: str | None      # ground truth of an anomalous image, if any
    defect: str = "good"       # the defect folder / class name ("good" for normal images)


def is_image(path: Path) -> bool:
    """An image file by its extension (any case). Hidden files are skipped: macOS copies of datasets
    carry ``._name.png`` AppleDouble files that are not images."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (extensions matched case-insensitively), sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image(p)) if folder.is_dir() else []


class AnomalyDataset(Dataset):
    """Samples -> dict(image (3,crop,crop), mask (1,crop,crop), label, category, path).

    ``mask`` is all zeros for normal images. ``mask_transform`` defaults to the one matching
    ``transform`` when that came from :func:`image_transform` (it knows its resize/crop); with another
    ``transform`` and samples that have masks, pass ``mask_transform`` explicitly.
    """

    def __init__(self, samples: list[Sample], transform: Callable[[Any], torch.Tensor],
                 mask_transform: Callable[[Any], torch.Tensor] | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        if mask_transform is None and hasattr(transform, "resize") and hasattr(transform, "crop"):
            mask_transform = make_mask_transform(transform.resize, transform.crop)
        if mask_transform is None and any(s.mask_path for s in self.samples):
            raise ValueError("AnomalyDataset: samples have ground-truth masks but no mask_transform was given "
                             "and none can be derived from the image transform")
        self.mask_transform = mask_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        picture = load_rgb(sample.path)
        image = self.transform(picture)
        if sample.mask_path is not None and self.mask_transform is not None:
            ground_truth = load_mask(sample.mask_path)
            if ground_truth.size != picture.size:  # a mask of another image, or a resized copy: refuse
                raise DatasetError(f"{sample.mask_path}: mask of {ground_truth.size[0]}x{ground_truth.size[1]} "
                                   f"pixels; expected the size of its image {sample.path} "
                                   f"({picture.size[0]}x{picture.size[1]})")
            mask = self.mask_transform(ground_truth)
        else:
            mask = torch.zeros(1, *image.shape[-2:])
        return {"image": image, "mask": mask, "label": sample.label, "category": sample.category,
                "path": sample.path}
