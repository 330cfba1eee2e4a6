"""Extending a finished run: what restarting the optimiser costs, with and without a warm-up.

A finished run keeps its weights (``checkpoint.pt``) but not its optimiser state, so
``inpctl train --resume RUN_DIR --iters N`` restarts StableAdamW's moments. This study trains the
demo's config (smaller images, so it runs on a CPU) for ``--iters`` iterations, keeping the exact
training state of that point, then extends it by ``--extra`` iterations three ways:

- ``exact``: from the training state (the optimiser's moments kept), as an interrupted run extends;
- ``restart, no warm-up``: from the finished checkpoint, a new optimiser at the final rate at once;
- ``restart, warm-up``: the same with the warm-up :func:`inp_former.train.restart_warmup` gives.

and compares the training loss after the restart (from each run's ``train_log.csv``) and the test
metrics at the end. Run from the repository root:

    python3 -m bench.studies.extend_run --iters 100 --extra 50 --out bench/results

Writes ``extend-run-cpu-<date>.json`` and ``.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from inp_former import train as train_module
from inp_former.demo import demo_config
from inp_former.train import TRAIN_LOG, TRAINING_STATE, read_train_log
from inp_former.workflow import Reporter, evaluate_checkpoint, resume_run, train_run


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return sorted({flag for flag in ("amx_bf16", "avx512_bf16") if flag in text.split()})


class KeepState(Reporter):
    """Copies ``last.pt`` aside at the step after it is written (the run deletes it at its end)."""

    def __init__(self, run_dir: Path, at: int, to: Path) -> None:
        self.run_dir, self.at, self.to = run_dir, at, to

    @contextlib.contextmanager
    def training(self, label: str) -> Iterator[Callable[[Any], None]]:
        def on_step(step: Any) -> None:
            if step.iteration == self.at:
                shutil.copy2(self.run_dir / TRAINING_STATE, self.to)
        yield on_step


def summary(run_dir: Path, start: int) -> dict[str, Any]:
    rows = [r for r in read_train_log(run_dir / TRAIN_LOG) if r["iteration"] > start]
    loss = np.array([r["loss"] for r in rows])
    return {"loss_first_10": float(loss[:10].mean()), "loss_first_25": float(loss[:25].mean()),
            "loss_last_25": float(loss[-25:].mean()), "lr_first_6": [r["lr"] for r in rows[:6]]}


def test_metrics(run_dir: Path) -> dict[str, float]:
    """The mean test metrics (%) of the run's checkpoint, evaluated into the run directory."""
    mean = evaluate_checkpoint(run_dir, device="cpu").result.mean
    return {k: round(100 * mean[k], 2) for k in ("i_auroc", "p_auroc", "aupro")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100, help="the finished run's iterations")
    parser.add_argument("--extra", type=int, default=50, help="iterations the extension adds")
    parser.add_argument("--size", type=int, default=112, help="image side (the demo's: 224)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "inpctl-extend-run",
                        help="where the runs are trained (emptied first, kept after)")
    args = parser.parse_args()

    base, notice = demo_config()
    base = base.updated(model={"resize": args.size, "crop": args.size},
                        train={"iters": args.iters + 1, "checkpoint_every": args.iters})
    runs: dict[str, Any] = {}
    started = time.perf_counter()
    root = args.work
    shutil.rmtree(root, ignore_errors=True)
    # planned for iters + 1, so that the exact training state of iteration `iters` is written
    train_run(base, root / "base", "cpu", evaluation=None,
              reporter=KeepState(root / "base", args.iters + 1, root / "state.pt"))
    (root / "exact").mkdir()
    shutil.copy2(root / "state.pt", root / "exact" / TRAINING_STATE)
    shutil.copy2(root / "base" / "config.json", root / "exact" / "config.json")
    resume_run(root / "exact", "cpu", evaluation=None, iters=args.iters + args.extra)
    dirs = {"exact (optimiser state kept)": (root / "exact", args.iters)}
    rule = train_module.restart_warmup
    for name, warmup in (("restart, no warm-up", lambda cfg, extra: 0), ("restart, warm-up", rule)):
        shutil.copytree(root / "base", root / name)
        train_module.restart_warmup = warmup
        try:
            resume_run(root / name, "cpu", evaluation=None, iters=args.iters + 1 + args.extra)
        finally:
            train_module.restart_warmup = rule
        dirs[f"{name} ({warmup(base, args.extra)} iterations)"] = (root / name, args.iters + 1)
    for name, (run_dir, start) in dirs.items():   # evaluated last: a failure here keeps the trained runs
        runs[name] = {**summary(run_dir, start), **test_metrics(run_dir)}
    before = test_metrics(root / "base")
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    command = (f"python3 -m bench.studies.extend_run --iters {args.iters} --extra {args.extra} --size {args.size} "
               f"--out {args.out}")
    record = {"date": _dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "cpu_flags": cpu_flags(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "commit": commit, "command": command, "encoder_notice": notice.splitlines()[0],
              "finished_run": before,
              "seconds": round(time.perf_counter() - started), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"extend-run-cpu-{record['date']}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Extending a finished run: optimiser restart ({record['date']}, CPU, commit {commit})", "",
             f"Command: `{command}`; torch {record['torch']}; CPU flags {record['cpu_flags'] or 'none'}; "
             f"{record['threads']} threads; {record['seconds']} s.",
             f"Encoder: {record['encoder_notice']} Images {args.size} px; the demo's other settings.", "",
             f"The finished run ({args.iters + 1} iterations): I-AUROC {record['finished_run']['i_auroc']}, "
             f"P-AUROC {record['finished_run']['p_auroc']}, AUPRO {record['finished_run']['aupro']} (%).", "",
             f"| extension by {args.extra} | loss, first 10 | first 25 | last 25 | lr, first 6 | I-AUROC | "
             "P-AUROC | AUPRO |", "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lrs = ", ".join(f"{v:.2g}" for v in r["lr_first_6"])
        lines.append(f"| {name} | {r['loss_first_10']:.4f} | {r['loss_first_25']:.4f} | {r['loss_last_25']:.4f} | "
                     f"{lrs} | {r['i_auroc']} | {r['p_auroc']} | {r['aupro']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
