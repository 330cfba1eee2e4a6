"""Collect the study's JSON rows (run_recipe.py output) into bench/results/quality-cnn-recipe.{json,md};
``loss_curves_svg`` draws their loss curves.

    python3 -m bench.studies.quality.report RUNS.jsonl [--md bench/results/quality-cnn-recipe.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from inp_former.benchmarks.quality import loss_summary

ROOT = Path(__file__).resolve().parents[3]   # the repository
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
        t = "" if loss.get("tail_t") is None else f", t {loss['tail_t']:.1f}"   # none for a tail under 3 losses
        tail = f"{'yes' if loss['still_falling'] else 'no'} ({100 * loss['tail_change']:+.1f}%{t})" if loss else "—"
        lines.append(f"| {r['dataset']} | {r['name']} | {cells[0]} | {cells[1]} | {cells[2]} | "
                     f"{r['meta'].get('train_seconds', '—')} | {curve} | {tail} |")
    return lines


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def loss_curves_svg(curves: dict[str, list[float]], smooth: int = 10, width: int = 640, height: int = 320) -> str:
    """Training losses (a running mean over ``smooth`` steps) as one SVG line chart, iterations on x."""
    left, right, top, bottom = 50, 10, 10, 80
    longest = max(len(v) for v in curves.values())
    smoothed = {name: [sum(v[max(0, i - smooth + 1):i + 1]) / len(v[max(0, i - smooth + 1):i + 1])
                       for i in range(len(v))] for name, v in curves.items()}
    peak = max(max(v) for v in smoothed.values())

    def x(i: int) -> float:
        return left + (width - left - right) * i / max(1, longest - 1)

    def y(value: float) -> float:
        return top + (height - top - bottom) * (1 - value / peak)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>']
    for tick in (0.0, peak / 4, peak / 2, 3 * peak / 4, peak):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
    for tick in range(0, longest + 1, 100):
        parts.append(f'<text x="{x(min(tick, longest - 1)):.1f}" y="{height - bottom + 14}" '
                     f'text-anchor="middle">{tick}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - bottom + 28}" text-anchor="middle">'
                 f'iteration (loss: running mean over {smooth} steps)</text>')
    for index, (name, values) in enumerate(smoothed.items()):
        colour = COLOURS[index % len(COLOURS)]
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        row, column = divmod(index, 2)
        parts.append(f'<text x="{left + column * 300}" y="{height - bottom + 44 + row * 13}" '
                     f'fill="{colour}">{name}</text>')
    return "\n".join(parts) + "\n</svg>\n"


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
