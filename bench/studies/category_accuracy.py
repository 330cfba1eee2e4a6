"""How often the image rule picks an image's category (issue: right labels for multi-category models).

Two cases, each with the demo's encoder (the frozen encoder is all the rule uses, so no training):
the demo's three textures, and KolektorSDD plus the demo as two products (a super-multi-class
config: ``demo/brick`` ... and ``kolektor/kolektor``). Run from the repository root:

    python3 -m bench.studies.category_accuracy --kolektor ../shared/data/kolektorsdd --out bench/results

Writes ``category-accuracy-cpu-<date>.json`` and ``.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from inp_former.benchmarks.categories import category_accuracy
from inp_former.config import DataConfig, Setting
from inp_former.demo import demo_config
from inp_former.settings import Source, with_sources


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return sorted({flag for flag in ("amx_bf16", "avx512_bf16") if flag in text.split()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kolektor", type=Path, required=True, help="KolektorSDD in the MVTec layout")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    demo, notice = demo_config()
    both = dataclasses.replace(demo, data=with_sources(DataConfig(setting=Setting.SUPER_MULTI_CLASS),
                                                       [Source("demo", "mvtec", demo.data.root),
                                                        Source("kolektor", "mvtec", str(args.kolektor))]))
    cases = {}
    for name, cfg in (("demo (3 categories)", demo), ("KolektorSDD + demo (two products, 4 categories)", both)):
        start = time.perf_counter()
        cases[name] = {**category_accuracy(cfg), "seconds": round(time.perf_counter() - start, 1)}
        print(f"{name}: accuracy {cases[name]['accuracy']:.4f} on {cases[name]['images']} test images")
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    record = {"date": _dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "cpu_flags": cpu_flags(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "commit": commit, "command": "python3 -m bench.studies.category_accuracy --kolektor "
              f"{args.kolektor} --out {args.out}", "encoder_notice": notice.splitlines()[0], "cases": cases}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"category-accuracy-cpu-{record['date']}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Category from the image: accuracy ({record['date']}, CPU, commit {commit})", "",
             f"Command: `{record['command']}`; torch {record['torch']}; CPU flags {record['cpu_flags'] or 'none'}.",
             f"Encoder: {record['encoder_notice']} Frozen, so no training is involved.", "",
             "| case | test images | accuracy | per category |", "|---|---|---|---|"]
    for name, case in cases.items():
        per = ", ".join(f"{c} {v:.1%}" for c, v in case["per_category"].items())
        lines.append(f"| {name} | {case['images']} | {case['accuracy']:.1%} | {per} |")
    lines += ["", "Confusion (true -> chosen: count):", ""]
    for name, case in cases.items():
        for true, counts in case["confusion"].items():
            lines.append(f"- {name}: {true} -> " + ", ".join(f"{c}: {n}" for c, n in counts.items()))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
