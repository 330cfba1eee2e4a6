"""CPU thread settings under contention: training-step time of the demo's model per setting.

Each setting runs in a fresh subprocess, because OMP_WAIT_POLICY is read by libgomp when torch
loads it (too late to change from inside a process that has imported torch). Settings and load
conditions are interleaved and repeated; the 1-minute load average is recorded before every run,
since "idle" on a shared machine is only approximate.

    python3 -m bench.studies.threads_bench --repeats 3 --steps 3 --out bench/results/threads-cpu-2026-12-01

(from the repository root: the children run as ``python3 -m`` there too).

Model: the demo's CPU design (EfficientNet-Lite0 encoder, 224 px, token stride 16, batch 8) with
random weights (speed does not depend on the values), on random images: compute only, no loader.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]   # the repository
MODULE = "bench.studies.threads_bench"
# name: (torch intra-op threads, OMP_WAIT_POLICY or None for libgomp's default)
SETTINGS = {
    "threads=1": (1, None),          # one thread: no OpenMP team, so no wait policy matters
    "threads=2 default-wait": (2, None),
    "threads=2 PASSIVE": (2, "PASSIVE"),
    "threads=2 ACTIVE": (2, "ACTIVE"),
}
CONDITIONS = ("idle", "contended")


def child(threads: int, steps: int, warmup: int, batch: int, size: int) -> None:
    """Time ``steps`` training steps after ``warmup``; prints one JSON line."""
    import torch

    torch.set_num_threads(threads)
    from inp_former.config import ModelConfig
    from inp_former.losses import coherence_loss, soft_mining_loss
    from inp_former.model import INPFormer
    from inp_former.optim import StableAdamW

    torch.manual_seed(0)
    model = INPFormer(ModelConfig(encoder="efficientnet_lite0", encoder_weights="random", resize=size, crop=size,
                                  token_stride=16)).train()
    params = model.trainable_parameters()
    optimizer = StableAdamW(params, lr=1e-3, eps=1e-10, weight_decay=1e-4, amsgrad=True)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = model(images)
        loss = soft_mining_loss(out.encoder_groups, out.decoder_groups, 3.0) + 0.2 * coherence_loss(out.prototype_distance)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    print(json.dumps({"step_s": times, "torch_threads": torch.get_num_threads(),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}))


def busy_loop(seconds: float) -> subprocess.Popen:
    """One competing CPU-bound process (not pinned: the scheduler places it), ending by itself."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def run_setting(name: str, condition: str, args: argparse.Namespace) -> dict:
    threads, policy = SETTINGS[name]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    load_before = os.getloadavg()[0]
    competitor = busy_loop(args.timeout) if condition == "contended" else None
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", MODULE, "--child", "--threads", str(threads), "--steps",
                               str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
                               "--size", str(args.size)],
                              env=env, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{name}: child failed:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:  # a collapse: record it instead of losing the whole benchmark
        return {"setting": name, "condition": condition, "threads": threads, "omp_wait_policy": policy,
                "load1_before": round(load_before, 2), "median_step_s": None, "timed_out": True,
                "step_s": [], "wall_s": round(time.perf_counter() - started, 2)}
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    steps = result["step_s"]
    return {"setting": name, "condition": condition, "threads": threads, "omp_wait_policy": policy,
            "load1_before": round(load_before, 2), "median_step_s": statistics.median(steps),
            "step_s": [round(s, 3) for s in steps], "wall_s": round(wall, 2)}


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for condition in CONDITIONS:
        for name in SETTINGS:
            medians = [r["median_step_s"] for r in runs if r["setting"] == name and r["condition"] == condition
                       and r["median_step_s"] is not None]
            loads = [r["load1_before"] for r in runs if r["setting"] == name and r["condition"] == condition]
            if medians:
                rows.append({"condition": condition, "setting": name, "runs": len(medians),
                             "median_step_s": round(statistics.median(medians), 3),
                             "min_step_s": round(min(medians), 3), "max_step_s": round(max(medians), 3),
                             "median_load1_before": round(statistics.median(loads), 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="Rounds; each runs every setting in both conditions.")
    parser.add_argument("--steps", type=int, default=3, help="Timed training steps per run (median kept).")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--timeout", type=float, default=300.0, help="Seconds per run (and the competitor's life).")
    parser.add_argument("--out", type=Path, default=None, help="Write OUT.json and OUT.md.")
    args = parser.parse_args()
    if args.child:
        child(args.threads, args.steps, args.warmup, args.batch, args.size)
        return

    import torch

    rng = random.Random(0)
    runs: list[dict] = []
    for round_index in range(args.repeats):
        plan = [(name, condition) for name in SETTINGS for condition in CONDITIONS]
        rng.shuffle(plan)  # interleaved, in a different order each round
        for name, condition in plan:
            row = run_setting(name, condition, args)
            row["round"] = round_index
            runs.append(row)
            print(f"round {round_index} {condition:9s} {name:24s} median step {row['median_step_s']} s "
                  f"(load1 before {row['load1_before']})", flush=True)
    summary = summarise(runs)
    payload = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": {"cpus": os.cpu_count(), "processor": _cpu_name(), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "command": " ".join(["python3 -m", MODULE, *sys.argv[1:]]),
        "workload": {"encoder": "efficientnet_lite0 (random weights)", "size": args.size, "token_stride": 16,
                     "batch": args.batch, "timed_steps": args.steps, "warmup_steps": args.warmup},
        "summary": summary, "runs": runs,
    }
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
