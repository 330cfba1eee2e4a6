"""Data loading alone: images/s of the evaluation loader (decode + 448 resize + 392 crop + normalise),
0 vs N worker processes, on the demo data (224 px PNGs) and on generated 1024 px images.

Also measures how far the tensor preprocessing of ``inp_former.runtime.preprocess_uint8`` (the
resize/crop/normalise of images already decoded to tensors, run here on CPU) is from the PIL path,
in 8-bit levels.

    python3 -m bench.studies.loader_bench --repeats 3 --out bench/results/loader-cpu-2026-12-01

(from the repository root).

Worker counts are interleaved and repeated; each run times two passes over the images with
persistent workers: the first includes starting the workers (what one evaluation category pays),
the second is the steady state.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from inp_former.data import AnomalyDataset, image_transform, load_rgb
from inp_former.data.demo import ensure_demo_dataset
from inp_former.data.records import Sample
from inp_former.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from inp_former.runtime import loader_kwargs, preprocess_uint8

MODULE = "bench.studies.loader_bench"


def demo_images(limit: int) -> list[Path]:
    root = ensure_demo_dataset()
    return sorted(root.rglob("*.png"))[:limit] if limit else sorted(p for p in root.rglob("*.png")
                                                                      if "ground_truth" not in p.parts)


def large_images(folder: Path, count: int, size: int = 1024, suffix: str = ".png") -> list[Path]:
    """``count`` textured ``size`` px images (smooth shapes + noise: compresses like a photo, not like flat colour)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img{i:03d}{suffix}"
        if not path.is_file():
            y, x = np.mgrid[0:size, 0:size] / size
            base = 127 + 60 * np.sin(2 * np.pi * (3 + i % 5) * x) * np.cos(2 * np.pi * 4 * y)
            rgb = np.stack([base, base * 0.9 + 20, base * 0.7 + 40], -1) + rng.normal(0, 12, (size, size, 3))
            Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=92) if suffix == ".jpg" \
                else Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def time_loader(paths: list[Path], workers: int, batch: int) -> dict:
    samples = [Sample(str(p), "bench", 0, None) for p in paths]
    dataset = AnomalyDataset(samples, image_transform(448, 392))
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, **loader_kwargs("cpu", workers))
    passes = []
    for _ in range(2):
        start = time.perf_counter()
        seen = sum(len(b["label"]) for b in loader)
        passes.append(seen / (time.perf_counter() - start))
    del loader
    return {"cold_img_s": passes[0], "steady_img_s": passes[1]}


def preprocessing_difference(paths: list[Path]) -> dict:
    """PIL path vs tensor path (CPU), in 8-bit levels of the un-normalised image."""
    pil = image_transform(448, 392)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    worst, means = 0.0, []
    for path in paths:
        rgb = load_rgb(path)
        reference = pil(rgb) * std + mean
        tensor = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
        ours = preprocess_uint8([tensor], 448, 392)[0] * std + mean
        diff = (ours - reference).abs() * 255
        worst = max(worst, float(diff.max()))
        means.append(float(diff.mean()))
    return {"images": len(paths), "max_levels": round(worst, 3), "mean_levels": round(statistics.mean(means), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--demo-images", type=int, default=0, help="0: every demo image (train + test)")
    parser.add_argument("--large-images", type=int, default=48)
    parser.add_argument("--large-dir", type=Path, default=Path("/tmp/inpctl-loader-bench"))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads of the main process")
    parser.add_argument("--out", type=Path, default=None, help="Write OUT.json.")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    sets = {"demo 224 px PNG": demo_images(args.demo_images),
            "1024 px PNG": large_images(args.large_dir, args.large_images),
            "1024 px JPEG": large_images(args.large_dir, args.large_images, suffix=".jpg")}
    rng = random.Random(0)
    runs = []
    for round_index in range(args.repeats):
        plan = [(name, w) for name in sets for w in args.workers]
        rng.shuffle(plan)
        for name, workers in plan:
            load = os.getloadavg()[0]
            row = {"images": name, "workers": workers, "round": round_index, "load1_before": round(load, 2),
                   **time_loader(sets[name], workers, args.batch)}
            runs.append(row)
            print(f"round {round_index} {name:16s} workers={workers} cold {row['cold_img_s']:.1f} img/s, "
                  f"steady {row['steady_img_s']:.1f} img/s (load1 {load:.2f})", flush=True)
    summary = []
    for name in sets:
        for workers in args.workers:
            rows = [r for r in runs if r["images"] == name and r["workers"] == workers]
            summary.append({"images": name, "count": len(sets[name]), "workers": workers, "runs": len(rows),
                            **{f"{k}_{stat}": round(fn([r[k] for r in rows]), 1)
                               for k in ("cold_img_s", "steady_img_s")
                               for stat, fn in (("median", statistics.median), ("min", min), ("max", max))}})
    difference = {"demo 224 px (enlarged to 448)": preprocessing_difference(sets["demo 224 px PNG"][:20]),
                  "1024 px (reduced to 448)": preprocessing_difference(sets["1024 px PNG"][:10])}
    payload = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "libgomp default")},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": __import__("torchvision").__version__, "pillow": Image.__version__},
        "command": " ".join(["python3 -m", MODULE, *sys.argv[1:]]),
        "transform": "PIL bilinear resize 448 -> ToTensor -> CenterCrop 392 -> ImageNet normalise",
        "summary": summary, "tensor_vs_pil_preprocessing": difference, "runs": runs,
    }
    print(json.dumps({"summary": summary, "tensor_vs_pil_preprocessing": difference}, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
