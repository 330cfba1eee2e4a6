"""Training in bf16 autocast on a CPU against fp32: detection quality and training time.

For each dataset and seed, the same run config is trained twice, once per precision (the order
alternates between seeds, so that a change of the machine's load does not always favour one), and
evaluated the way ``inpctl bench quality`` evaluates it (:func:`inp_former.benchmarks.quality.run_quality`,
its ``trained`` row only: the untrained and nearest-neighbour rows do not depend on the training
precision). Evaluation scores in fp32 for every run, so the rows differ only in how they were trained.

    python3 -m bench.studies.train_precision --kolektor ../shared/data/kolektorsdd --kolektor-iters 120 \\
        --out bench/results/train-precision-cpu-2026-12-06

Datasets: the demo (its config as ``inpctl train --demo`` runs it, default iterations) and
KolektorSDD (MVTec layout; the demo's model design: EfficientNet-Lite0 with offline ImageNet
weights, 224 px, token stride 16, batch 8; ``--kolektor-iters`` iterations for both precisions).
Writes ``<out>.json`` after every run (a stopped study keeps what it measured) and ``<out>.md``.
"""
from __future__ import annotations

from inp_former.runtime import apply_env_defaults

apply_env_defaults()   # before torch loads libgomp, as the CLI's entry point does

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.studies.provenance import header_lines, provenance  # noqa: E402

PRECISIONS = ("fp32", "bf16")
POINT = 1.0   # the bar: image AUROC within 1 point of fp32


def configs(kolektor: Path | None, kolektor_iters: int) -> dict[str, Any]:
    """{dataset name: run config} for the datasets measured."""
    from inp_former.config import DataConfig
    from inp_former.demo import demo_config

    base, _ = demo_config()
    out = {"demo": base}
    if kolektor is not None:
        out["kolektorsdd"] = dataclasses.replace(
            base, data=DataConfig(dataset="mvtec", root=str(kolektor)),
            train=dataclasses.replace(base.train, iters=kolektor_iters))
    return out


def run_one(cfg: Any, precision: str, seed: int) -> dict[str, Any]:
    """Train and evaluate one run; its image/pixel AUROC and training time."""
    from inp_former.benchmarks.quality import run_quality

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision, seed=seed))
    load_before = os.getloadavg()[0]
    result = run_quality(cfg, "cpu", methods=("trained",))
    meta, trained = result["meta"], result["rows"]["trained"]
    return {"precision": precision, "seed": seed, "i_auroc": 100 * trained["i_auroc"],
            "p_auroc": 100 * trained["p_auroc"], "train_seconds": meta["train_seconds"],
            "s_per_step": meta["train_seconds"] / meta["iterations"], "iterations": meta["iterations"],
            "final_loss": meta["final_loss"], "skipped_steps": meta["skipped_steps"],
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "encoder": meta["encoder_design"], "categories": meta["categories"]}


def step_times(cfg: Any, rounds: int, steps: int) -> dict[str, Any]:
    """Training-step time of ``cfg``'s model design, fp32 against bf16 side by side: in each round
    ``steps`` steps of each precision, the order alternating; random images of the run's batch and
    size (compute only, no loader). Medians of the per-round medians, and of the per-round ratios."""
    import time

    import torch

    from inp_former.benchmarks.model import _train_step
    from inp_former.model import INPFormer
    from inp_former.optim import StableAdamW

    torch.manual_seed(0)
    model = INPFormer(cfg.model).train()
    optimizer = StableAdamW(model.trainable_parameters(), lr=1e-4, eps=1e-10, weight_decay=1e-4, amsgrad=True)
    images = torch.randn(cfg.train.batch_size, 3, cfg.model.crop, cfg.model.crop)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    loads = []
    for precision in PRECISIONS:   # warm-up
        _train_step(model, optimizer, images, precision)
    for r in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        for precision in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
            samples = []
            for _ in range(steps):
                started = time.perf_counter()
                _train_step(model, optimizer, images, precision)
                samples.append(time.perf_counter() - started)
            times[precision].append(statistics.median(samples))
        print(f"    step round {r + 1}: " + ", ".join(f"{p} {times[p][-1]:.2f} s" for p in PRECISIONS), flush=True)
    ratios = [f / b for f, b in zip(times["fp32"], times["bf16"])]
    return {"s_per_step": {p: statistics.median(t) for p, t in times.items()}, "rounds": times,
            "bf16_speedup": statistics.median(ratios), "speedup_min_max": [min(ratios), max(ratios)],
            "load_1min": loads, "batch": cfg.train.batch_size, "crop": cfg.model.crop,
            "encoder": cfg.model.encoder}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset and seed: bf16 minus fp32 in image/pixel AUROC points and the time ratio; and
    whether image AUROC held within :data:`POINT` everywhere."""
    pairs = {}
    for run in runs:
        pairs.setdefault((run["dataset"], run["seed"]), {})[run["precision"]] = run
    rows = []
    for (dataset, seed), both in sorted(pairs.items()):
        if set(both) != set(PRECISIONS):
            continue
        fp32, bf16 = both["fp32"], both["bf16"]
        rows.append({"dataset": dataset, "seed": seed, "d_i_auroc": bf16["i_auroc"] - fp32["i_auroc"],
                     "d_p_auroc": bf16["p_auroc"] - fp32["p_auroc"],
                     "time_ratio": fp32["train_seconds"] / bf16["train_seconds"]})
    complete = bool(rows) and len(rows) == len(pairs)
    # holds: bf16 never loses more than a point; within_band: the difference is within a point either way
    holds = complete and all(r["d_i_auroc"] >= -POINT for r in rows)
    band = complete and all(abs(r["d_i_auroc"]) <= POINT for r in rows)
    return {"pairs": rows, "quality_holds": holds, "within_band": band,
            "median_speedup": statistics.median(r["time_ratio"] for r in rows) if rows else None}


def markdown(record: dict[str, Any]) -> str:
    prov, summary = record["provenance"], record["summary"]
    lines = ["# Training precision on a CPU: bf16 autocast vs fp32", "",
             *header_lines(prov, load=False),
             "- Each run: `run_quality(..., methods=('trained',))`, what `inpctl bench quality --precision P` "
             "trains and evaluates (its trained row); evaluation in fp32 for every run",
             f"- Encoder: {record['runs'][0]['encoder'] if record['runs'] else '?'}", "",
             "| dataset | seed | precision | I-AUROC | P-AUROC | train s | s/step | iters | load 1 min |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in record["runs"]:
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['precision']} | {r['i_auroc']:.2f} | {r['p_auroc']:.2f} | "
                     f"{r['train_seconds']:.0f} | {r['s_per_step']:.2f} | {r['iterations']} | "
                     f"{r['load_before']:.1f} -> {r['load_after']:.1f} |")
    lines += ["", "bf16 minus fp32 (points), and fp32 time / bf16 time:", "",
              "| dataset | seed | I-AUROC | P-AUROC | speed-up |", "|---|---|---:|---:|---:|"]
    for p in summary["pairs"]:
        lines.append(f"| {p['dataset']} | {p['seed']} | {p['d_i_auroc']:+.2f} | {p['d_p_auroc']:+.2f} | "
                     f"{p['time_ratio']:.2f}x |")
    for name, steps in (record.get("step_times") or {}).items():
        low, high = steps["speedup_min_max"]
        lines += ["", f"Training step side by side ({name}: {steps['encoder']}, batch {steps['batch']}, "
                  f"{steps['crop']} px, random images, {len(steps['load_1min'])} rounds alternating, load "
                  f"{', '.join(map(str, steps['load_1min']))}): fp32 {steps['s_per_step']['fp32']:.2f} s, "
                  f"bf16 {steps['s_per_step']['bf16']:.2f} s per step; bf16 {steps['bf16_speedup']:.2f}x "
                  f"[{low:.2f}-{high:.2f}]"]
    lines += ["", f"bf16 image AUROC never more than {POINT:g} point below fp32 (every dataset and seed): "
              f"**{'yes' if summary['quality_holds'] else 'no'}**; within {POINT:g} point either way: "
              f"{'yes' if summary.get('within_band') else 'no'}"
              + (f"; median training speed-up {summary['median_speedup']:.2f}x" if summary["median_speedup"] else ""),
              "", "Timings on a 2-core VM shared with other jobs (load average per run above): CPU numbers, noisy."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kolektor", type=Path, default=None, help="KolektorSDD root (MVTec layout)")
    parser.add_argument("--kolektor-iters", type=int, default=120)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--datasets", nargs="+", default=None, help="subset of: demo kolektorsdd")
    parser.add_argument("--out", type=Path, required=True, help="path without suffix: writes .json and .md")
    parser.add_argument("--step-rounds", type=int, default=0,
                        help="only time training steps side by side (this many rounds), adding them to --out's "
                             "JSON; no quality runs")
    args = parser.parse_args()

    from inp_former.io import atomic_write_text
    from inp_former.runtime import configure_cpu_threads

    threads = configure_cpu_threads()
    cfgs = configs(args.kolektor, args.kolektor_iters)
    if args.step_rounds:
        record = json.loads(args.out.with_suffix(".json").read_text())
        record["step_times"] = {"demo": step_times(cfgs["demo"], args.step_rounds, steps=3)}
        record["summary"] = summarise(record["runs"])
        record["step_times_command"] = ("python3 -m bench.studies.train_precision --step-rounds "
                                        f"{args.step_rounds} --out {args.out}")
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
        atomic_write_text(args.out.with_suffix(".md"), markdown(record))
        print(markdown(record))
        return
    names = args.datasets or list(cfgs)
    record: dict[str, Any] = {
        "provenance": {**provenance("python3 -m bench.studies.train_precision " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if v is not None)), "threads": threads.threads},
        "runs": [], "summary": {}}
    for dataset in names:
        for index, seed in enumerate(args.seeds):
            order = PRECISIONS if index % 2 == 0 else PRECISIONS[::-1]
            for precision in order:
                started = dt.datetime.now().strftime("%H:%M:%S")
                print(f"[{started}] {dataset} seed {seed} {precision} ...", flush=True)
                run = {"dataset": dataset, **run_one(cfgs[dataset], precision, seed)}
                print(f"    I-AUROC {run['i_auroc']:.2f} P-AUROC {run['p_auroc']:.2f} "
                      f"train {run['train_seconds']:.0f} s (load {run['load_before']} -> {run['load_after']})",
                      flush=True)
                record["runs"].append(run)
                record["summary"] = summarise(record["runs"])
                atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
                atomic_write_text(args.out.with_suffix(".md"), markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
