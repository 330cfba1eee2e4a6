"""`inpctl predict`'s scoring on a CPU: the fp32 eager reference against the defaults, side by side.

Issue 21's yardstick: ViT-S/14, 392 px, batch 8. One checkpoint (random weights: speed does not
depend on them; the maps' differences are reported, not their quality) is loaded once per path
through :meth:`inp_former.predictor.Predictor.from_checkpoint`, as `inpctl predict` loads it, and
the same image files are scored through :meth:`Predictor.predict_batch` (decoding, preprocessing,
scoring, decisions; not the overlays and files `predict` writes) in interleaved rounds:

- ``fp32 torch``: ``--precision fp32`` (the reference path, torch eager);
- ``torch default``: ``--runtime torch`` (bf16 autocast on a CPU with native bf16);
- ``default``: no flags (``auto``: OpenVINO where it is installed and the CPU has native bf16);
- ``default, serve's latency setting``: the same, with each batch on all threads in one request, as
  ``serve`` runs it (``latency``: :class:`inp_former.openvino_runtime.CompiledNetwork`), to show
  what splitting batches over OpenVINO's streams gives.

Reported per path: images/s (median round), the ratio to ``fp32 torch``, the time to load (for
OpenVINO: export and compile, or the cache), and the largest map difference to the fp32 maps,
relative to their maximum (issue 21: within 1%).

    python3 -m bench.studies.predict_runtime --images 32 --rounds 3 \\
        --out bench/results/predict-runtime-cpu-2026-12-06
"""
from __future__ import annotations

from inp_former.runtime import apply_env_defaults

apply_env_defaults()   # before torch loads libgomp, as the CLI's entry point does

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.studies.provenance import header_lines, provenance, write_record  # noqa: E402

PATHS = {"fp32 torch": {"precision": "fp32", "runtime": "torch"},
         "torch default": {"runtime": "torch"},
         "default": {},
         "default, serve's latency setting": {"latency": True}}


def make_checkpoint(folder: Path, size: int) -> Path:
    import torch

    from inp_former.checkpoint import save_checkpoint
    from inp_former.config import ModelConfig, RunConfig
    from inp_former.model import INPFormer

    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(encoder="small", encoder_weights="random", resize=size, crop=size))
    model = INPFormer(cfg.model)
    path = folder / "checkpoint.pt"
    save_checkpoint(path, model, dataclasses.replace(cfg, model=model.cfg))
    return path


def make_images(folder: Path, count: int, size: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def measure(count: int, rounds: int, size: int, batch: int) -> dict[str, Any]:
    import torch

    from inp_former.inference import InferenceConfig, openvino_release
    from inp_former.predictor import Predictor

    os.environ.pop("INPCTL_RUNTIME", None)   # auto means auto here
    with tempfile.TemporaryDirectory(prefix="inpctl-predict-runtime-") as tmp:
        folder = Path(tmp)
        checkpoint, images = make_checkpoint(folder, size), make_images(folder, count, size)
        predictors, load_seconds, described = {}, {}, {}
        for name, flags in PATHS.items():
            started = time.perf_counter()
            flags = dict(flags)
            latency = flags.pop("latency", False)
            predictors[name] = Predictor.from_checkpoint(checkpoint, "cpu", InferenceConfig(batch_size=batch, **flags),
                                                         latency=latency)
            predictors[name].predict_batch(images[:batch])   # warm-up (and OpenVINO's first inference)
            load_seconds[name] = round(time.perf_counter() - started, 1)
            described[name] = predictors[name].scorer.describe()
        seconds: dict[str, list[float]] = {name: [] for name in PATHS}
        maps: dict[str, torch.Tensor] = {}
        for round_index in range(rounds):
            for name, predictor in predictors.items():
                started = time.perf_counter()
                predictions = predictor.predict_batch(images)
                seconds[name].append(time.perf_counter() - started)
                maps[name] = torch.stack([torch.as_tensor(p.map) for p in predictions])
                print(f"round {round_index + 1}/{rounds} {name}: {count / seconds[name][-1]:.2f} img/s",
                      file=sys.stderr, flush=True)
    reference = maps["fp32 torch"]
    scale = float(reference.abs().max())
    rate = {name: count / statistics.median(values) for name, values in seconds.items()}
    return {"openvino": openvino_release(), "images": count, "rounds": rounds, "size": size, "batch": batch, "describe": described,
            "load_seconds": load_seconds, "seconds": seconds, "img_per_s": rate,
            "x_fp32": {name: rate[name] / rate["fp32 torch"] for name in PATHS},
            "max_map_diff": {name: float((maps[name] - reference).abs().max()) / scale for name in PATHS}}


def markdown(result: dict[str, Any]) -> str:
    prov = result["provenance"]
    lines = ["# `inpctl predict` scoring on a CPU: fp32 reference against the defaults", "",
             *header_lines(prov, f"onnxruntime {prov['onnxruntime']}, OpenVINO {result.get('openvino')}, "),
             f"- ViT-S/14 with RANDOM weights (speed only), {result['size']} px, batch {result['batch']}, "
             f"{result['images']} PNG images through `Predictor.predict_batch`; {result['rounds']} interleaved "
             "rounds, median per path",
             "", "| path | scored by | img/s | x fp32 | load + first batch, s | max map diff / fp32 max |",
             "|---|---|---|---|---|---|"]
    for name in PATHS:
        lines.append(f"| {name} | {result['describe'][name]} | {result['img_per_s'][name]:.2f} | "
                     f"{result['x_fp32'][name]:.2f} | {result['load_seconds'][name]} | "
                     f"{result['max_map_diff'][name]:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=392)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True, help="output path without extension")
    args = parser.parse_args()
    prov = provenance("python3 -m bench.studies.predict_runtime " + " ".join(sys.argv[1:]))
    result = {**measure(args.images, args.rounds, args.size, args.batch), "provenance": prov}
    write_record(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
