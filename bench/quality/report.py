"""Collect the study's JSON rows (run_recipe.py output) into bench/results/quality-cnn-recipe.{json,md}.

    python bench/quality/report.py RUNS.jsonl [--md bench/results/quality-cnn-recipe.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from inp_former.benchmarks.quality import loss_summary  # noqa: E402
KEYS = ("i_auroc", "p_auroc", "aupro")


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def table(rows: list[dict]) -> list[str]:
    lines = ["| dataset | run | untrained I / P / PRO | trained I / P / PRO | NN I / P / PRO | train s | "
             "loss first / 25% / 50% / 75% / last | still falling (last 20%) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for method in ("untrained", "trained", "nearest-neighbour"):
            m = r["rows"].get(method)
            cells.append(" / ".join(pct(m[k]) for k in KEYS) if m else "—")
        loss = r.get("loss") or {}
        curve = (" / ".join(f"{loss[k]:.3f}" for k in ("first", "at_25", "at_50", "at_75", "last"))
                 if loss else "—")
        tail = (f"{'yes' if loss['still_falling'] else 'no'} ({100 * loss['tail_change']:+.1f}%, t {loss['tail_t']:.1f})"
                if loss else "—")
        lines.append(f"| {r['dataset']} | {r['name']} | {cells[0]} | {cells[1]} | {cells[2]} | "
                     f"{r['meta'].get('train_seconds', '—')} | {curve} | {tail} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/quality-cnn-recipe.json")
    parser.add_argument("--md", type=Path, default=None)
    parser.add_argument("--header", type=Path, default=None, help="Markdown put before the table")
    parser.add_argument("--footer", type=Path, default=None, help="Markdown put after the table")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.runs.read_text().splitlines() if line.strip()]
    for row in rows:   # one definition of the summary for every row (rows may predate a refinement)
        if row.get("losses"):
            row["loss"] = loss_summary(row["losses"])
    args.json.write_text(json.dumps({"runs": rows}, indent=1) + "\n")
    print("\n".join(table(rows)))
    if args.md:
        header = args.header.read_text() if args.header else ""
        args.md.write_text(header + "\n".join(table(rows)) + "\n" + (args.footer.read_text() if args.footer else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
