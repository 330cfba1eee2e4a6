"""What every command shares: the consoles, one-line errors, progress, tables, the device flag.

Commands (``inpctl/commands/*.py``) parse flags, build a config, call one library function and
render its result with these helpers. Nothing here computes anything a Python user would need.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class _Console(Console):
    """rich's Console with one line-breaking rule for every command. In a terminal rich wraps a long
    line at word boundaries (a path moves to the next line whole instead of the terminal cutting it
    mid-word); anywhere else (a log, a pipe, CI) a line is never broken, whatever the caller asked,
    since rich would break it at 80 columns mid-phrase. Tables wrap their cells instead (see
    :func:`rows_table`)."""

    def print(self, *objects: Any, soft_wrap: Optional[bool] = None, **kwargs: Any) -> None:
        super().print(*objects, soft_wrap=not self.is_terminal, **kwargs)


console = _Console()
err_console = _Console(stderr=True)

METRIC_TITLES = {"i_auroc": "I-AUROC", "i_ap": "I-AP", "i_f1max": "I-F1max", "p_auroc": "P-AUROC",
                 "p_ap": "P-AP", "p_f1max": "P-F1max", "aupro": "AUPRO"}


# --- errors ------------------------------------------------------------------------------------

# The exit codes, as docs/reliability.md ("Exit codes") states them for every command.
EXIT_FAILED = 1        # the job did not complete: a bug, a failed torchrun process, a failed check
EXIT_BAD_INPUT = 2     # a flag, file, folder or checkpoint is not what was expected (Typer's usage errors too)
EXIT_SIGINT = 130      # interrupted by Ctrl-C (128 + SIGINT); SIGTERM is 128 + 15 = 143


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """A one-line error and a non-zero exit, never a traceback. ``message`` is plain text: brackets
    in it (``pip install 'inpctl[openvino]'``) are printed, not read as rich markup."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)   # plain text


def one_line(exc: BaseException) -> str:
    """The first line of an error's message; for an error re-raised by a DataLoader worker (whose
    message is the worker's whole traceback), the original error's own message."""
    text = str(exc)
    if "Original Traceback" in text:
        marker = f"{exc.__class__.__name__}: "
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    lines = text.strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__


def _write_traceback() -> Path:
    import traceback

    fd, path = tempfile.mkstemp(prefix="inpctl-error-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        traceback.print_exc(file=f)
    return Path(path)


# The library's argument names that the command line spells otherwise (others: --name-with-dashes).
FLAGS = {"checkpoint": "--ckpt", "map_mode": "--map", "sources": "--source", "run_dir": "--out",
         "mining_gamma": "--gamma", "encoder_stages": "--encoder-stages"}
# FLAGS with the running command's own spellings (run's ``flags``): errors and notices alike use them
_command_flags: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("command_flags", default=FLAGS)


def as_flags(text: str, names: Iterable[str] = (), flags: Optional[dict[str, str]] = None) -> str:
    """Library text that names arguments (``names``; a :class:`~inp_former.workflow.Notice` knows its
    own) with those names spelled as the user types them: the running command's flags, or
    :data:`FLAGS` with ``flags``."""
    from inp_former.errors import render_names

    mapping = _command_flags.get() if flags is None else {**FLAGS, **flags}
    return render_names(str(text), (*getattr(text, "names", ()), *names), mapping)


def run(job: Callable[[], Any], flags: Optional[dict[str, str]] = None,
        on_interrupt: Optional[Callable[[Any], None]] = None) -> Any:
    """Run a command body, turning the library's expected errors into one-line messages.

    ``flags`` adds to :data:`FLAGS`, which maps the library's argument names (an error's ``arg``, a
    notice's names) to the flags the user typed: the library speaks of arguments, the command line
    of its flags; what the job reports (:class:`RichReporter`) is rendered with them too.
    ``on_interrupt`` handles a :class:`~inp_former.errors.TrainingInterrupted`.
    """
    import torch

    from inp_former.errors import DistributedError, InpFormerError, TrainingInterrupted

    mapping = {**FLAGS, **(flags or {})}
    token = _command_flags.set(mapping)
    try:
        return job()
    except TrainingInterrupted as exc:
        if on_interrupt is None:
            raise
        on_interrupt(exc)
    except DistributedError as exc:  # a process of a torchrun job failed: one line for the whole job
        if exc.reported_elsewhere:   # rank 0 prints it
            raise typer.Exit(EXIT_FAILED)
        fail(exc.render(mapping), code=EXIT_FAILED)
    except InpFormerError as exc:
        fail(_rank_prefix() + exc.render(mapping))
    except (ValueError, OSError) as exc:
        fail(_rank_prefix() + one_line(exc))
    except KeyboardInterrupt:
        fail("interrupted", code=EXIT_SIGINT)
    except torch.cuda.OutOfMemoryError:
        fail(_rank_prefix() + "the GPU ran out of memory: lower --batch-size (or --eval-batch-size)")
    except typer.Exit:
        raise
    except Exception as exc:  # a bug, not bad input: one line here, the traceback in a file to report
        log = _write_traceback()
        fail(f"{_rank_prefix()}internal error ({exc.__class__.__name__}: {one_line(exc)}); please report it with "
             f"the traceback in {log}", code=EXIT_FAILED)
    finally:
        _command_flags.reset(token)


def _rank_prefix() -> str:
    """``rank N: `` under torchrun, where an error line names the process it comes from."""
    from inp_former import distributed

    return f"rank {distributed.rank()}: " if distributed.launched() else ""


# --- flags -------------------------------------------------------------------------------------

def pick_device(device: str):
    """The ``--device`` flag as a torch.device (auto: CUDA when there is one)."""
    from inp_former.config import resolve_device
    from inp_former.errors import ConfigError

    try:
        return resolve_device(device)
    except ConfigError as exc:
        fail(exc.render())


def choices(enum_name: str) -> str:
    """The metavar of a choice flag, from its enum in :mod:`inp_former.config`: ``[fp32|bf16]``."""
    import inp_former.config as config

    return "[" + "|".join(m.value for m in getattr(config, enum_name)) + "]"


PRECISION_HELP = ("auto: bf16 where the GPU or CPU (AMX-BF16, AVX-512-BF16) runs it natively, else fp32; "
                  "fp32: the reference path [default: auto].")
# inp_former.inference.Runtime's values (tests/test_openvino_runtime.py checks they agree): written out so
# that building the help does not import torch
RUNTIME_CHOICES = "[auto|torch|openvino]"
RUNTIME_HELP = ("auto: OpenVINO on a CPU with native bf16 (AMX-BF16, AVX-512-BF16) where it is installed "
                "(pip install 'inpctl[openvino]') and the model exports, else torch; fp32 always runs in torch "
                "[default: auto].")


def default(section: str, name: str) -> str:
    """`` [default: X]`` for a help text, read from the config dataclass (the one place defaults live)."""
    import dataclasses

    import inp_former.config as config
    from inp_former.evaluate import EvalConfig
    from inp_former.inference import InferenceConfig

    kind = {"model": config.ModelConfig, "train": config.TrainConfig, "data": config.DataConfig,
            "eval": EvalConfig, "inference": InferenceConfig}[section]
    value = next(f.default for f in dataclasses.fields(kind) if f.name == name)
    return f" [default: {value}]"


def parse_categories(text: Optional[str]) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


def parse_stages(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """``--encoder-stages 3,4`` -> (3, 4); None when not given."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        fail(f"--encoder-stages {text}: expected comma-separated feature levels, e.g. 3,4")


def write_json(path: Optional[Path], payload: dict) -> None:
    """``--json PATH``: the machine-readable form of what was printed."""
    if path is not None:
        from inp_former.io import atomic_write_text

        atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
        console.print(f"Wrote {path}", highlight=False)


# --- progress ----------------------------------------------------------------------------------

class PlainProgress:
    """The progress of a long job as plain lines, for logs, ``nohup`` and CI, where a live bar prints
    nothing: the first line after ``first`` seconds (a log shows soon that the job runs, and its ETA),
    then one every ``every`` seconds while unfinished, and the closing line. Same calls as the rich bar.

    The rate (per second, unitless: the caller's fields say a rate in its unit instead) is shown only
    when it was measured: after an update that advanced past the first one (a resumed job starts
    part-way); ``rate=False`` never shows it (items of very different cost: the ETA is still given).
    """

    def __init__(self, every: float, fields: tuple[str, ...], stream=None, first: float = 5.0,
                 rate: bool = True) -> None:
        self.every, self.fields, self.stream = every, fields, stream or sys.stderr
        self.first, self.rate = min(first, every), rate
        self.tasks: list[dict[str, Any]] = []

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self.tasks:
            self._line(task, final=True)

    def add_task(self, description: str, total: Optional[float] = None, **fields: Any) -> int:
        now = time.monotonic()
        self.tasks.append({"description": description, "total": total, "completed": 0, "fields": fields,
                           "start": now, "last": now, "lines": 0})
        return len(self.tasks) - 1

    def update(self, task_id: int, *, advance: float = 0, completed: Optional[float] = None,
               total: Optional[float] = None, **fields: Any) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task["total"] = total
        task["completed"] = completed if completed is not None else task["completed"] + advance
        if "base" not in task:  # the rate counts from the first update (a resumed run starts part-way)
            task["base"], task["rate_start"] = task["completed"], time.monotonic()
        task["fields"].update(fields)
        finished = task["total"] is not None and task["completed"] >= task["total"]
        if not finished and time.monotonic() - task["last"] >= (self.every if task["lines"] else self.first):
            self._line(task)   # a finished task's only line is the closing one: never twice

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _line(self, task: dict[str, Any], final: bool = False) -> None:
        now = time.monotonic()
        task["last"], task["lines"] = now, task["lines"] + 1
        done, total = task["completed"], task["total"]
        counted, seconds = done - task.get("base", done), now - task.get("rate_start", now)
        rate = counted / seconds if counted > 0 and seconds > 0 else None
        parts = [f"{task['description']}: {done:g}" + (f"/{total:g}" if total else "")]
        parts += [str(task["fields"][name]) for name in self.fields if task["fields"].get(name)]
        if self.rate and rate and not any("/s" in part for part in parts):  # a field may say it in its unit
            parts.append(f"{rate:.0f}/s" if rate >= 100 else f"{rate:.3g}/s")   # 3 digits, no exponent
        parts.append(f"elapsed {_clock(now - task['start'])}")
        if total and rate and not final:
            parts.append(f"eta {_clock((total - done) / rate)}")
        print("  ".join(parts), file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


PLAIN_PROGRESS_SECONDS = float(os.environ.get("INPCTL_PROGRESS_SECONDS", "30"))


def progress_bar(*extra: str, disable: bool = False, rate: bool = True, first: float = 5.0):
    """A rich progress bar (count, elapsed, ETA, ``extra`` fields) on a terminal; elsewhere plain
    lines (:class:`PlainProgress`: the first ``first`` seconds after the start, then every
    ``INPCTL_PROGRESS_SECONDS`` (30) seconds); nothing when ``disable``. ``rate=False``: the plain
    lines give no items-per-second rate (items of very different cost)."""
    if not disable and not console.is_terminal:
        return PlainProgress(PLAIN_PROGRESS_SECONDS, extra, rate=rate, first=first)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                    *(TextColumn(f"{{task.fields[{name}]}}") for name in extra),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, disable=disable)


class RichReporter:
    """The workflow's :class:`~inp_former.workflow.Reporter` for a person at a terminal (or a log):
    notices printed, progress as rich bars (plain lines when not a terminal)."""

    def __init__(self, rank_zero_only: bool = False) -> None:
        from inp_former import distributed

        quiet = rank_zero_only and not distributed.is_writer()
        self.quiet = quiet

    def message(self, text: str) -> None:
        if self.quiet:
            return
        text = as_flags(text)   # a notice naming arguments: as the running command's flags
        if text.startswith("warning: "):
            warn(text.removeprefix("warning: "))
        else:
            console.print(text, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def training(self, label: str):
        with progress_bar("stats", disable=self.quiet) as progress:
            task = progress.add_task(label, total=None, stats="")
            first: list = []   # (time, iteration) of the first step seen: img/s from there (a resume starts late)

            def on_step(step) -> None:
                now = time.monotonic()
                first[:] = first or [(now, step.iteration)]
                (t0, i0), speed = first[0], ""
                if now > t0 and step.images:
                    speed = f"  {(step.iteration - i0) * step.images / (now - t0):.1f} img/s"
                progress.update(task, completed=step.iteration, total=step.total,
                                stats=f"loss {step.loss:.4f}  lr {step.lr:.2e}{speed}")

            yield on_step

    # Under torchrun the library reports the images of all processes: rank 0 shows the job's count and speed.
    @contextlib.contextmanager
    def evaluating(self, label: str):
        with progress_bar("category", "speed", disable=self.quiet) as progress:
            task = progress.add_task(label, total=None, category="", speed="")
            seen: set[str] = set()
            total, done, first = [0], [0], []

            def on_batch(category: str, count: int, size: int) -> None:
                if category not in seen:
                    seen.add(category)
                    total[0] += size
                    progress.update(task, total=total[0])
                done[0] += count
                progress.update(task, advance=count, category=category, speed=_speed(first, done[0]))

            yield on_batch

    @contextlib.contextmanager
    def counting(self, label: str, total: int):
        with progress_bar("name", "speed", disable=self.quiet) as progress:
            task = progress.add_task(label, total=total, name="", speed="")
            first: list = []
            yield lambda done, _total, name: progress.update(task, completed=done, name=name,
                                                             speed=_speed(first, done))


def _speed(first: list, done: int) -> str:
    """Images per second since the first call (which fills ``first``; a resumed job starts part-way)."""
    now = time.monotonic()
    first[:] = first or [(now, done)]
    t0, done0 = first[0]
    return f"{(done - done0) / (now - t0):.1f} img/s" if now > t0 and done > done0 else ""


def print_evaluation(evaluation: Any, title: str) -> None:
    """An evaluation as a person reads it: the table, notes, thresholds and the files written."""
    result = evaluation.result
    console.print(metrics_table(result.categories, result.mean, title=title))
    if evaluation.random_encoder:
        console.print("[yellow]Note: the encoder has random weights, so these numbers do not measure INP-Former.")
    mismatch = result.meta.get("encoder_mismatch")
    if mismatch:
        warn(f"evaluated with another encoder than the one it was trained with ({mismatch['loaded']} instead of "
             f"{mismatch['trained_with']}): metrics.json says so (meta.encoder_mismatch)")
    _print_pixel_error_bounds(result.meta.get("pixel_metrics") or {})
    calibration = evaluation.calibration

    def fmt(value: Optional[float], f1: Optional[float]) -> str:
        return "—" if value is None else f"{value:.6g} (F1 {100 * f1:.1f}%)" if f1 is not None else f"{value:.6g}"

    if calibration.image_threshold is not None or calibration.pixel_threshold is not None:
        console.print(f"F1-max thresholds ({calibration.map_mode} maps): image "
                      f"{fmt(calibration.image_threshold, calibration.image_f1)}, pixel "
                      f"{fmt(calibration.pixel_threshold, calibration.pixel_f1)}", highlight=False)
    if evaluation.out_dir is not None:
        out = evaluation.out_dir
        console.print(f"Wrote {out / 'metrics.json'}, {out / 'scores.csv'} and {out / 'thresholds.json'}",
                      highlight=False, soft_wrap=True)
    if evaluation.report is not None:
        console.print(f"Wrote {evaluation.report}", highlight=False)
    if result.meta.get("imported_from"):
        console.print(f"The {result.meta['imported_from']} is never modified: its thresholds are in thresholds.json",
                      highlight=False, soft_wrap=True)
    if evaluation.stored_in is not None:
        console.print(f"Stored the thresholds in {evaluation.stored_in} (used by inpctl predict): "
                      + "; ".join(evaluation.stored_changes), highlight=False, soft_wrap=True)


def _print_pixel_error_bounds(info: dict) -> None:
    """One line saying which pixel metrics were binned and how far they can be from the exact ones."""
    binned = info.get("binned_categories") or {}
    if not binned:
        return
    names = {"p_auroc": "P-AUROC", "p_ap": "P-AP", "p_f1max": "P-F1max", "aupro": "AUPRO"}
    worst = info.get("max_error_bounds", {})
    bounds = ", ".join(f"{names[k]} ±{100 * v:.2g}" for k, v in worst.items() if k in names)
    console.print(f"Pixel metrics of {len(binned)} categor{'y' if len(binned) == 1 else 'ies'} "
                  f"({', '.join(binned)}) are binned ({info.get('bins')} bins, more than "
                  f"{info.get('exact_pixel_limit')} pixels): at most {bounds} points from the exact values "
                  f"(also in metrics.json meta.pixel_metrics)", highlight=False, soft_wrap=True)


# --- tables ------------------------------------------------------------------------------------

def percent(value: float) -> str:
    return "—" if value != value else f"{100 * value:.1f}"  # nan -> dash


def metrics_table(categories: dict[str, dict[str, float]], mean: dict[str, float], title: str) -> Table:
    return rows_table(title, ["category", *METRIC_TITLES.values()],
                      [[name, *(percent(values.get(k, float("nan"))) for k in METRIC_TITLES)]
                       for name, values in categories.items()],
                      footer=["[bold]mean", *(f"[bold]{percent(mean.get(k, float('nan')))}" for k in METRIC_TITLES)])


def _is_number(text: str) -> bool:
    try:
        float(text.replace(" ", ""))
        return True
    except ValueError:
        return text in ("", "—")


def rows_table(title: str, columns: list[str], rows: Iterable[Iterable[object]],
               footer: Optional[list[str]] = None) -> Table:
    """A table whose first column is a label; columns of numbers are right-aligned, others left.

    No cell is ever cut short: a cell too wide for the terminal wraps, the widest column first (a
    long name continues on the next line, never "industrial_si…"). ``footer``: a last row below a
    rule (a mean)."""
    cells = [[escape(str(v)) for v in row] for row in rows]   # a name is text, never rich markup
    table = Table(title=title, header_style="bold")
    for index, column in enumerate(columns):
        numeric = index > 0 and all(_is_number(row[index]) for row in cells if index < len(row))
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in cells:
        table.add_row(*row)
    if footer is not None:
        table.add_section()
        table.add_row(*footer)
    return table
