"""Run one recipe of the CNN-encoder quality study on one dataset; append a JSON row.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python3 -m bench.studies.quality.run_recipe RECIPE DATASET \
        [--out bench/results/quality-cnn-runs.jsonl] [--set train.iters=300 ...] [--methods ...]

from the repository root. DATASET: ``kolektor`` (KolektorSDD, MVTec layout) or ``demo``. RECIPE: a
name in ``bench/studies/quality/recipes.py``. ``--set section.field=value`` overrides any
ModelConfig/TrainConfig field (value parsed as JSON), ``--set token_norm="layernorm"`` a runtime
option. One thread.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
import torch  # noqa: E402

import inp_former.benchmarks.quality as quality  # noqa: E402
from inp_former.model import INPFormer  # noqa: E402

from .recipes import NoisyBottleneck, build_wrapped_encoder, parse_sets, recipe_config  # noqa: E402

ROOT = Path(os.environ.get("INPCTL_ROOT") or Path(__file__).resolve().parents[3])   # the repository


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("dataset", choices=["kolektor", "demo"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/quality-cnn-runs.jsonl")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--methods", nargs="+", default=list(quality.METHODS))
    parser.add_argument("--tag", default=None, help="row name (default: recipe + overrides)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="keep the training run (config, checkpoint) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    overrides = parse_sets(args.sets)
    cfg, runtime = recipe_config(args.recipe, args.dataset, overrides, seed=args.seed)
    encoder, cfg = build_wrapped_encoder(cfg, runtime)
    dropout = runtime.get("bottleneck_dropout")
    original = quality.INPFormer
    if dropout:
        class Noisy(INPFormer):
            def __init__(self, mc, encoder=None):
                super().__init__(mc, encoder)
                self.bottleneck = NoisyBottleneck(self.bottleneck, dropout)
        quality.INPFormer = Noisy   # runtime only: the library is unchanged
    methods = runtime.get("methods", args.methods)
    started = time.perf_counter()
    try:
        def progress(step) -> None:
            if step.iteration % 25 == 0 or step.iteration == step.total:
                print(f"  {args.recipe} {args.dataset} iter {step.iteration}/{step.total} loss {step.loss:.4f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)

        result = quality.run_quality(cfg, "cpu", methods=methods, encoder=encoder, on_step=progress,
                                     run_dir=args.keep)
    finally:
        quality.INPFormer = original
    name = args.tag or args.recipe + "".join(f" {s}" for s in args.sets)
    row = {"name": name, "recipe": args.recipe, "dataset": args.dataset, "overrides": overrides,
           "runtime": runtime, "seed": args.seed, "wall_seconds": round(time.perf_counter() - started, 1),
           "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), 1 thread",
           "torch": torch.__version__,
           "command": "python3 -m bench.studies.quality.run_recipe " + " ".join(argv or sys.argv[1:]),
           **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    rows = result["rows"]
    summary = " | ".join(f"{m}: I {100 * r['i_auroc']:.1f} P {100 * r['p_auroc']:.1f} PRO {100 * r['aupro']:.1f}"
                         for m, r in rows.items())
    loss = result.get("loss", {})
    print(f"{name} [{args.dataset}] {summary} | train {result['meta'].get('train_seconds')} s, "
          f"loss {loss.get('first', float('nan')):.4f}->{loss.get('last', float('nan')):.4f} "
          f"falling={loss.get('still_falling')} tail={loss.get('tail_change', float('nan')):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
