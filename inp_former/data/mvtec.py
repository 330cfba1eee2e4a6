"""The MVTec-AD layout: <root>/<cat>/train/good, test/<defect|good>, ground_truth/<defect>/<stem>_mask.png."""
from __future__ import annotations

from pathlib import Path

from inp_former.data.records import DatasetError, Sample, is_image, list_images

LAYOUT = "expected <root>/<category>/train/good/*.png, test/<defect>/*.png, ground_truth/<defect>/<name>_mask.png"


def mvtec_categories(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder ({LAYOUT})")
    found = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
    if not found:
        raise DatasetError(f"{root}: no category folder with train/good inside ({LAYOUT})")
    return found


def _find_mask(folder: Path, stem: str) -> Path | None:
    if not folder.is_dir():
        return None
    for candidate in folder.iterdir():
        if is_image(candidate) and candidate.stem.lower() == f"{stem}_mask".lower():
            return candidate
    return None


def mvtec_samples(root: str | Path, category: str, split: str) -> list[Sample]:
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected train or test")
    root = Path(root)
    base = root / category
    if not base.is_dir():
        available = ", ".join(mvtec_categories(root))
        raise DatasetError(f"{base}: no such category (available: {available})")
    if split == "train":
        images = list_images(base / "train" / "good")
        if not images:
            raise DatasetError(f"{base / 'train' / 'good'}: no training images ({LAYOUT})")
        return [Sample(str(p), category, 0, None) for p in images]
    test = base / "test"
    defects = sorted(p.name for p in test.iterdir() if p.is_dir()) if test.is_dir() else []
    samples: list[Sample] = []
    for defect in defects:
        for image in list_images(test / defect):
            if defect == "good":
                samples.append(Sample(str(image), category, 0, None, defect))
                continue
            mask = _find_mask(base / "ground_truth" / defect, image.stem)
            if mask is None:
                expected = base / "ground_truth" / defect / f"{image.stem}_mask.png"
                raise DatasetError(f"{image}: anomalous test image without its mask (expected {expected})")
            samples.append(Sample(str(image), category, 1, str(mask), defect))
    if not samples:
        raise DatasetError(f"{test}: no test images ({LAYOUT})")
    gt = base / "ground_truth"
    if gt.is_dir():
        stems = {(Path(s.path).parent.name, Path(s.path).stem.lower()) for s in samples}
        for defect_dir in sorted(p for p in gt.iterdir() if p.is_dir()):
            for mask in list_images(defect_dir):
                stem = mask.stem[: -len("_mask")] if mask.stem.lower().endswith("_mask") else mask.stem
                if (defect_dir.name, stem.lower()) not in stems:
                    raise DatasetError(f"{mask}: mask without its image (expected {test / defect_dir.name / stem}.png)")
    return samples
