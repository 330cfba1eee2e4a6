"""Images/s of ``inpctl predict`` on one process and on two (torchrun, gloo), one thread each.

The same images, the same checkpoint and the same flags; the two process counts alternate within
one run (``--rounds`` pairs, the order flipped every round) and the 1-minute load average is
recorded before each, because the machine is shared. Per run, two rates:

* end to end: images / wall time of the whole command (Python and torch start-up, model load,
  rendezvous, scoring, the final files): what a user waits for;
* scoring: the rate the command's own progress line reports at the end (rank 0: images of all
  processes, from its first batch to its last): the part that splits over the processes;
* CPU seconds of the whole command (every process, start-up included): what the second process
  adds in work, whatever the other users of a shared machine take.

    python3 -m bench.studies.predict_processes --out bench/results/predict-processes-cpu-2026-12-06

Model: a random-weight ViT-S (``--encoder small --encoder-weights random``) at 256 -> 224 px, so the
numbers measure the sharding, not INP-Former's accuracy. Images: generated, 512 x 512 PNG.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]   # the repository
COUNT, SPEED = re.compile(r"predict: (\d+)/\d+"), re.compile(r"([\d.]+) img/s")


def prepare(folder: Path, images: int, size: int, resize: int, crop: int) -> tuple[Path, Path]:
    """``images`` generated images and a random-weight checkpoint under ``folder``."""
    import numpy as np
    from PIL import Image

    from inp_former.checkpoint import save_checkpoint
    from inp_former.config import ModelConfig, RunConfig
    from inp_former.model import INPFormer

    inputs = folder / "images"
    inputs.mkdir(parents=True)
    (folder / "one").mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):   # smooth random texture, as the tests' data
        cells = rng.normal(128, 30, size=(size // 16, size // 16, 3))
        pixels = np.kron(cells, np.ones((16, 16, 1))) + rng.normal(0, 8, size=(size, size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(inputs / f"{i:04d}.png")
        if i == 0:   # a folder of one image: what a command costs besides its images
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / "one" / "0000.png")
    model = INPFormer(ModelConfig(encoder="small", encoder_weights="random", resize=resize, crop=crop))
    checkpoint = folder / "checkpoint.pt"
    save_checkpoint(checkpoint, model, RunConfig(model=model.cfg))
    return inputs, checkpoint


def run_once(processes: int, inputs: Path, checkpoint: Path, out: Path, batch_size: int, threshold: float,
             precision: str, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", INPCTL_PROGRESS_SECONDS="5")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--standalone"]
                if processes > 1 else [sys.executable])
    command = [*launcher, "-m", "inpctl", "predict", str(inputs), "--ckpt", str(checkpoint), "--out", str(out),
               "--device", "cpu", "--batch-size", str(batch_size), "--threshold", str(threshold),
               "--precision", precision]
    load = os.getloadavg()[0]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed: {done.stderr[-2000:]}")
    printed = done.stdout + done.stderr
    images, speeds = int(COUNT.findall(printed)[-1]), SPEED.findall(printed)
    used = json.loads((out / "predictions.json").read_text())["precision"]
    return {"processes": processes, "precision": used, "load1_before": load, "wall_s": wall, "cpu_s": cpu,
            "images": images, "end_to_end_img_s": images / wall,
            "scoring_img_s": float(speeds[-1]) if speeds else None}   # None: one batch, no rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--size", type=int, default=512, help="Side of the generated images.")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=1.0, help="Given, as a calibrated checkpoint's would be: "
                        "the overlay scale is then 0 .. 2 x threshold, and no process scores the first batch "
                        "to find one (what an uncalibrated checkpoint costs each extra process).")
    parser.add_argument("--precision", default="fp32", help="Given, so that the numbers do not follow a "
                        "changing default (auto: bf16 on CPUs with bf16 units).")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds allowed per command.")
    parser.add_argument("--out", type=Path, default=None, help="Write OUT.json (raw runs and summary).")
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs, checkpoint = prepare(Path(tmp), args.images, args.size, args.resize, args.crop)
        for round_ in range(args.rounds):
            for processes in ((1, 2) if round_ % 2 == 0 else (2, 1)):
                for name, folder in (("all", inputs), ("one", inputs.parent / "one")):
                    run = run_once(processes, folder, checkpoint, Path(tmp) / f"out-{round_}-{processes}-{name}",
                                   args.batch_size, args.threshold, args.precision, args.timeout)
                    runs.append({"round": round_, "inputs": name, **run})
                    print(json.dumps(runs[-1]), flush=True)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    summary = {}
    for processes in (1, 2):
        full = [r for r in runs if r["processes"] == processes and r["inputs"] == "all"]
        fixed = median([r["cpu_s"] for r in runs if r["processes"] == processes and r["inputs"] == "one"])
        summary[processes] = {key: median([r[key] for r in full])
                              for key in ("end_to_end_img_s", "scoring_img_s", "wall_s", "cpu_s", "load1_before")}
        # CPU of the images alone: the whole command's less that of the one-image command
        summary[processes].update(fixed_cpu_s=fixed, cpu_ms_per_image=1000 * (summary[processes]["cpu_s"] - fixed)
                                  / (args.images - 1))
    ratios = {key: summary[2][key] / summary[1][key] for key in ("end_to_end_img_s", "scoring_img_s")}
    # per round, 2 processes against the 1 process run beside it
    paired = [next(r["scoring_img_s"] for r in runs if (r["round"], r["processes"], r["inputs"]) == (k, 2, "all"))
              / next(r["scoring_img_s"] for r in runs if (r["round"], r["processes"], r["inputs"]) == (k, 1, "all"))
              for k in range(args.rounds)]
    for processes in (1, 2):
        m = summary[processes]
        print(f"{processes} process(es), medians: {m['end_to_end_img_s']:.2f} img/s end to end, "
              f"{m['scoring_img_s']:.2f} scoring; CPU {m['cpu_s']:.1f} s ({m['fixed_cpu_s']:.1f} s for one image; "
              f"{m['cpu_ms_per_image']:.0f} ms per further image)")
    print(f"2 over 1: {ratios['end_to_end_img_s']:.2f}x end to end, {ratios['scoring_img_s']:.2f}x scoring "
          f"(per round: {', '.join(f'{p:.2f}' for p in paired)})")
    if args.out is not None:
        import torch

        flags = subprocess.run("grep -o 'amx_bf16\\|avx512_bf16' /proc/cpuinfo | sort -u", shell=True,
                               capture_output=True, text=True).stdout.split()
        payload = {"date": dt.date.today().isoformat(), "machine": platform.node(), "cpus": os.cpu_count(),
                   "cpu_flags": flags, "python": platform.python_version(), "torch": torch.__version__,
                   "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=ROOT).stdout.strip(),
                   "command": "python3 -m bench.studies.predict_processes " + " ".join(sys.argv[1:]),
                   "settings": vars(args) | {"out": str(args.out)}, "runs": runs,
                   "median": summary, "ratio_2_over_1": ratios, "paired_scoring_ratio": paired}
        from inp_former.io import atomic_write_text

        atomic_write_text(Path(f"{args.out}.json"), json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
