"""KolektorSDD with every tall image (200 x ~508 px) cut into a top and a bottom half (200 x ~254):
the square resize then distorts 1.27:1 instead of 2.54:1. The aspect-ratio experiment of
docs/quality.md, for a pipeline whose token grids are square.

    python3 -m bench.studies.quality.halves SRC_CATEGORY_DIR DST_CATEGORY_DIR
    # e.g. .../kolektorsdd/kolektor /tmp/kolektor-halves/kolektor, then:
    inpctl bench quality --data /tmp/kolektor-halves --categories kolektor

A test half is ``crack`` when its half of the mask has a defect pixel, else ``good``; MVTec layout.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def halves(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    width, height = image.size
    return image.crop((0, 0, width, height // 2)), image.crop((0, height // 2, width, height))


def main(src: Path, dst: Path) -> dict[str, int]:
    def save(image: Image.Image, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)

    for split in ("train", "test"):
        for path in sorted((src / split / "good").iterdir()):
            for i, part in enumerate(halves(Image.open(path))):
                save(part, dst / split / "good" / f"{path.stem}_h{i}.png")
    counts = {"crack": 0, "good": 0}
    for path in sorted((src / "test" / "crack").iterdir()):
        mask = Image.open(src / "ground_truth" / "crack" / f"{path.stem}_mask.png")
        for i, (part, mask_part) in enumerate(zip(halves(Image.open(path)), halves(mask))):
            kind = "crack" if np.asarray(mask_part).max() > 0 else "good"
            counts[kind] += 1
            save(part, dst / "test" / kind / f"{path.stem}_h{i}.png")
            if kind == "crack":
                save(mask_part, dst / "ground_truth" / "crack" / f"{path.stem}_h{i}_mask.png")
    return counts


if __name__ == "__main__":
    print("halves of the cracked test images:", main(Path(sys.argv[1]), Path(sys.argv[2])))
