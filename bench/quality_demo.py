"""Detection quality on the demo data: INP-Former untrained vs trained vs a nearest-neighbour baseline.

    python bench/quality_demo.py [--device cpu] [--json PATH] [--md PATH] [--iters N] [--seed S]

Uses the demo's own run config (``inp_former.demo.demo_config``: DINOv2 ViT-S if cached, else
EfficientNet-Lite0 with the offline package weights) on the demo data
(``inp_former.data.demo.ensure_demo_dataset``). The three rows share the frozen encoder, the data,
the preprocessing and the map scoring (upsampling, Gaussian blur, top-1% image score); see
``inp_former.benchmarks.quality``. Prints a rich table and writes JSON (all metrics, per category,
provenance) and, with --md, a Markdown summary.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from inp_former.benchmarks.quality import format_table, run_quality  # noqa: E402
from inp_former.demo import demo_config  # noqa: E402
from inpctl.helpers import METRIC_TITLES, console, metrics_table, rows_table  # noqa: E402

ALL_KEYS = tuple(METRIC_TITLES)


def provenance(command: str, device: str) -> dict:
    import timm

    return {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command, "device": device,
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores" + (
                f"; GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""),
            "python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "torch_threads": torch.get_num_threads()}


def markdown(result: dict) -> str:
    meta, prov = result["meta"], result["provenance"]
    rows = result["rows"]
    lines = [
        "# Detection quality on the demo data (CPU)",
        "",
        f"- Date: {prov['date_utc']}; machine: {prov['machine']} (shared with other jobs); device `{prov['device']}`",
        f"- Software: Python {prov['python']}, torch {prov['torch']}, timm {prov['timm']}",
        f"- Command: `{prov['command']}`",
        f"- Encoder: `{meta['encoder']}` ({meta['encoder_source']}); {meta['encoder_design']}",
        f"- Data: demo textures {', '.join(meta['categories'])} ({meta['data_root']}); "
        f"images {meta['resize']} px, crop {meta['crop']}",
        f"- Training: {meta['iterations']} iterations, batch {meta['batch_size']}, {meta['train_seconds']} s; "
        f"final loss {meta['final_loss']:.4f}" + (
            f"; loss {result['loss']['first']:.3f} at the start, {result['loss']['at_50']:.3f} halfway; "
            f"still falling over the last 20%: {'yes' if result['loss']['still_falling'] else 'no'}"
            if result.get("loss") else ""),
        f"- Nearest-neighbour bank: {meta['bank_tokens']} tokens (all training tokens up to 32768)",
        "",
        "Mean over categories, %:",
        "",
        format_table(result, ALL_KEYS),
        "",
        "Per category, %:",
        "",
        "| method | category | " + " | ".join(METRIC_TITLES.values()) + " |",
        "|" + "---|" * (len(ALL_KEYS) + 2),
    ]
    for name, per_category in result["categories"].items():
        for category, metrics in per_category.items():
            lines.append(f"| {name} | {category} | " + " | ".join(f"{100 * metrics[k]:.1f}" for k in ALL_KEYS) + " |")
    gain = {k: 100 * (rows["trained"][k] - rows["untrained"][k]) for k in ALL_KEYS}
    versus = {k: 100 * (rows["trained"][k] - rows["nearest-neighbour"][k]) for k in ALL_KEYS}
    lines += ["", "Trained minus untrained (points): " + ", ".join(f"{METRIC_TITLES[k]} {v:+.1f}" for k, v in gain.items()),
              "", "Trained minus nearest-neighbour (points): "
              + ", ".join(f"{METRIC_TITLES[k]} {v:+.1f}" for k, v in versus.items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--iters", type=int, default=None, help="override the demo's iteration count")
    parser.add_argument("--json", type=Path, default=Path("quality_demo.json"))
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *(argv or sys.argv[1:])])

    cfg, notice = demo_config(seed=args.seed)
    if args.iters is not None:   # configs may be frozen: a modified copy, never an edit
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, iters=args.iters, warmup_iters=min(cfg.train.warmup_iters, args.iters // 10)))
    console.print(notice)
    result = run_quality(cfg, args.device)
    result["provenance"] = provenance(command, args.device)

    for name, per_category in result["categories"].items():
        console.print(metrics_table(per_category, result["rows"][name], title=f"{name}, %"))
    console.print(rows_table(f"Mean over categories, % ({cfg.model.encoder})", ["method", *METRIC_TITLES.values()],
                             ([name, *(f"{100 * m[k]:.1f}" for k in ALL_KEYS)] for name, m in result["rows"].items())))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    console.print(f"Wrote {args.json}")
    if args.md is not None:
        args.md.write_text(markdown(result))
        console.print(f"Wrote {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
