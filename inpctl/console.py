"""Rich output helpers shared by the commands: tables, progress bars, one-line errors."""
from __future__ import annotations

from typing import Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

METRIC_TITLES = {"i_auroc": "I-AUROC", "i_ap": "I-AP", "i_f1max": "I-F1max", "p_auroc": "P-AUROC",
                 "p_ap": "P-AP", "p_f1max": "P-F1max", "aupro": "AUPRO"}


def progress_bar(*extra: str, disable: bool = False) -> Progress:
    """A progress bar with count, elapsed and remaining time, plus ``extra`` text fields."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *(TextColumn(f"{{task.fields[{name}]}}") for name in extra),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, disable=disable)


def percent(value: float) -> str:
    return "—" if value != value else f"{100 * value:.1f}"  # nan -> dash


def metrics_table(categories: dict[str, dict[str, float]], mean: dict[str, float], title: str) -> Table:
    table = Table(title=title, header_style="bold")
    table.add_column("category")
    for title_ in METRIC_TITLES.values():
        table.add_column(title_, justify="right")
    for name, values in categories.items():
        table.add_row(name, *(percent(values.get(k, float("nan"))) for k in METRIC_TITLES))
    table.add_section()
    table.add_row("[bold]mean", *(f"[bold]{percent(mean.get(k, float('nan')))}" for k in METRIC_TITLES))
    return table


def rows_table(title: str, columns: list[str], rows: Iterable[Iterable[object]]) -> Table:
    """A table whose first column is a label and the others numbers."""
    table = Table(title=title, header_style="bold")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    return table
