"""Peak memory of ``inpctl predict`` on one large image with a tiled model: bounded by the batch of
tiles, not by the image.

Each run is its own ``inpctl predict`` process (overlay and raw map written, as a user runs it) on
one generated image of SIZE x SIZE pixels; its peak resident memory is the kernel's ``ru_maxrss``
of that process (``os.wait4``), its time the wall time of the whole command (start-up included).
A 512 x 512 image (one tile) gives the floor: Python, torch, the model and one forward pass.

    python3 -m bench.studies.tiling_memory --out bench/results/tiling-memory-cpu-2026-12-06

Model: EfficientNet-Lite0 with RANDOM weights (``encoder_weights random``: memory and time do not
depend on the weights; the maps mean nothing), the demo's token stride 16, tile 512 px, the default
overlap (64 px), so a 4096 x 4096 image is 81 tiles. Images: uniform noise, PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]   # the repository


def prepare(folder: Path, sizes: list[int], tile: int) -> tuple[Path, dict[int, Path]]:
    """A random-weight tiled checkpoint and one generated image per size under ``folder``."""
    import numpy as np
    from PIL import Image

    from inp_former.checkpoint import save_checkpoint
    from inp_former.config import ModelConfig, RunConfig
    from inp_former.model import INPFormer

    model = INPFormer(ModelConfig(encoder="efficientnet_lite0", encoder_weights="random", token_stride=16, tile=tile))
    checkpoint = folder / "checkpoint.pt"
    save_checkpoint(checkpoint, model, RunConfig(model=model.cfg), meta={"iterations": 0})
    rng = np.random.default_rng(0)
    images = {}
    for size in sizes:
        images[size] = folder / f"image-{size}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(images[size])
    return checkpoint, images


def measure(checkpoint: Path, image: Path, batch: int, out: Path) -> dict:
    """One ``inpctl predict`` process: its peak RSS (MiB) and wall seconds."""
    command = [sys.executable, "-m", "inpctl", "predict", str(image), "--ckpt", str(checkpoint), "--out", str(out),
               "--save-maps", "--batch-size", str(batch), "--device", "cpu"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-2000:]}")
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16], help="tiles per forward pass")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True, help="results: OUT.json and OUT.md")
    args = parser.parse_args()
    from bench.studies.provenance import provenance
    from inp_former.io import atomic_write_text
    from inp_former.tiling import TileLayout

    rows = []
    with tempfile.TemporaryDirectory(prefix="tiling-memory-") as scratch:
        checkpoint, images = prepare(Path(scratch), args.sizes, args.tile)
        for batch in args.batches:
            for size in args.sizes:
                tiles = len(TileLayout.of(size, size, args.tile, args.tile // 8))
                result = measure(checkpoint, images[size], batch, Path(scratch) / f"out-{size}-{batch}")
                rows.append({"size": size, "batch": batch, "tiles": tiles, **result})
                print(json.dumps(rows[-1]), flush=True)
    command = "python3 -m bench.studies.tiling_memory " + " ".join(sys.argv[1:])
    record = {"provenance": provenance(command), "tile": args.tile, "overlap": args.tile // 8,
              "model": "efficientnet_lite0, RANDOM weights, token stride 16, precision auto", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    lines = [f"# Peak memory of inpctl predict with tiling (tile {args.tile} px, overlap {args.tile // 8} px)", "",
             *(f"- {k}: {v}" for k, v in record["provenance"].items()), f"- model: {record['model']}", "",
             "| image | tiles | tiles per batch | peak RSS (MiB) | wall s |", "|---|---|---|---|---|",
             *(f"| {r['size']} x {r['size']} | {r['tiles']} | {r['batch']} | {r['peak_rss_mib']} | {r['seconds']} |"
               for r in rows)]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
