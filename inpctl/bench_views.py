"""Terminal tables for the benchmark results (the numbers come from inp_former.benchmarks)."""
from __future__ import annotations

from typing import Any

from inpctl.console import console, rows_table


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_rows(title: str, result: dict[str, Any]) -> None:
    """Print ``result['rows']`` (a list of dicts) as one table, then any notes."""
    rows = result.get("rows", [])
    notes = sorted({row["note"] for row in rows if len(str(row.get("note") or "")) > 12})
    if rows:
        columns = [c for c in dict.fromkeys(k for row in rows for k in row) if not (c == "note" and notes)]
        console.print(rows_table(title, columns, ([_fmt(row.get(c)) for c in columns] for row in rows)))
    for note in notes:
        console.print(f"note: {note}")
    for key, value in result.items():
        if key != "rows" and not isinstance(value, (list, dict)):
            console.print(f"{key}: {value}")
        elif key != "rows" and isinstance(value, dict):
            console.print(f"{key}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()))


def print_attention(counts: dict[str, Any], timed: dict[str, Any]) -> None:
    """Paper Table 1 for the given sizes, then the measured rows."""
    table = rows_table("Table 1: one decoder layer, one image, fp32",
                       ["", "vanilla self-attention", "INP-guided attention"],
                       [[label, _count(counts, "vanilla", key), _count(counts, "inp", key)]
                        for label, key in (("A = Q K^T (mult+add)", "qk"), ("A V (mult+add)", "av"),
                                           ("memory Q / K / V / A (MB)", "memory"))])
    console.print(table)
    print_rows("Measured", timed)


def _count(counts: dict[str, Any], kind: str, key: str) -> str:
    value = counts[kind][key]
    if isinstance(value, (list, tuple)):
        return " / ".join(f"{v:.3g}" if v < 0.1 else f"{v:.2f}" for v in value)
    return f"{value:,}".replace(",", " ")
