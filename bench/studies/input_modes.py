"""Scoring time per test image of the three ways images reach the model: square, keep-aspect, tiled.

The quality study (``inpctl bench quality`` per mode, docs/quality.md) records its evaluation
times, but those runs shared the machine with other work. Here the three modes score the same test
images in one process, in interleaved rounds (square, keep-aspect, tiled, then again), so that a
change of the machine's load touches all three alike; the median round per mode is reported.
Speed does not depend on the weights, so each mode's model is its untrained initialisation (the
encoder is the offline pretrained one, as in the quality runs). Each round is a whole
:func:`inp_former.evaluate.evaluate`: decoding, preprocessing, scoring, metrics.

    python3 -m bench.studies.input_modes --data ../shared/data/kolektorsdd --tile 192 \\
        --out bench/results/input-modes-time-cpu-2026-12-06

Writes ``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

from inp_former.runtime import apply_env_defaults

apply_env_defaults()   # before torch loads libgomp, as the CLI's entry point does

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.studies.provenance import header_lines, provenance, write_record  # noqa: E402

MODES = ("square", "keep-aspect", "tiled")


def mode_configs(data: Path, tile: int) -> dict[str, Any]:
    """{mode: run config}: the quality runs' model design (``inpctl bench quality --encoder
    efficientnet_lite0``: the demo's CNN, 224 px, token stride 16) in each input mode."""
    from inp_former.config import DataConfig
    from inp_former.demo import demo_config
    from inp_former.settings import resolve_input_size
    from inp_former.train import resolve_categories

    base, _ = demo_config()
    base = base.updated(data={"dataset": "mvtec", "root": str(data)})
    keep = base.updated(model={"keep_aspect": True})
    keep, _ = resolve_input_size(keep, resolve_categories(keep))
    tiled = base.updated(model={"tile": tile})
    assert isinstance(base.data, DataConfig)
    return {"square": base, "keep-aspect": keep, "tiled": tiled}


def measure(data: Path, tile: int, rounds: int) -> dict[str, Any]:
    import torch

    from inp_former.evaluate import evaluate
    from inp_former.inference import InferenceConfig
    from inp_former.model import INPFormer
    from inp_former.train import resolve_categories

    configs = mode_configs(data, tile)
    models = {}
    for mode, cfg in configs.items():
        torch.manual_seed(0)
        models[mode] = INPFormer(cfg.model).eval()
        configs[mode] = dataclasses.replace(cfg, model=models[mode].cfg)   # completed (tile overlap, stages)
    categories = resolve_categories(configs["square"])
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    images = 0
    for round_index in range(rounds):
        for mode in MODES:
            started = time.perf_counter()
            result = evaluate(models[mode], configs[mode], categories, "cpu", InferenceConfig())
            seconds[mode].append(time.perf_counter() - started)
            images = len(result.rows)
            print(f"round {round_index + 1}/{rounds} {mode}: {seconds[mode][-1]:.1f} s for {images} images",
                  file=sys.stderr, flush=True)
    return {"images": images, "rounds": rounds, "tile": tile,
            "input_size": {mode: list(configs[mode].model.input_hw) for mode in MODES},
            "precision": str(InferenceConfig().precision_on("cpu")),
            "seconds": seconds,
            "ms_per_image": {mode: 1000 * statistics.median(seconds[mode]) / images for mode in MODES}}


def markdown(result: dict[str, Any]) -> str:
    prov = result["provenance"]
    lines = ["# Scoring time per test image: square, keep-aspect, tiled (CPU)", "",
             *header_lines(prov),
             f"- {result['images']} test images; {result['rounds']} interleaved rounds, median per mode; "
             f"torch in precision `{result['precision']}` (the default on this CPU; `evaluate`'s own scorer); untrained models (speed does not "
             "depend on the weights), EfficientNet-Lite0 offline weights, token stride 16",
             "", "| mode | model input | ms per image (median) | rounds, s |", "|---|---|---|---|"]
    for mode in MODES:
        size = result["input_size"][mode]
        what = f"tiles of {result['tile']} px at native resolution" if mode == "tiled" else f"{size[0]} x {size[1]}"
        lines.append(f"| {mode} | {what} | {result['ms_per_image'][mode]:.0f} | "
                     + ", ".join(f"{s:.1f}" for s in result["seconds"][mode]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="MVTec-layout dataset root")
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="output path without extension")
    args = parser.parse_args()
    command = "python3 -m bench.studies.input_modes " + " ".join(sys.argv[1:])
    prov = provenance(command)
    result = {**measure(args.data, args.tile, args.rounds), "provenance": prov}
    write_record(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
