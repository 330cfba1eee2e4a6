"""``inpctl bench ...``: each subcommand runs one benchmark of ``inp_former.benchmarks`` and prints it.

Tables fit an 80-column terminal (short headers, units in them); explanations go below the table
and ``--json`` writes everything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from inpctl.helpers import RichReporter, choices, console, fail, pick_device, rows_table, run, write_json

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: paper Table 1, kernels, the model, quality, "
                                                   "compile-time evidence.")

# the options every benchmark shares (Typer takes the same OptionInfo as default in several commands)
DEVICE = typer.Option("auto", help="auto, cpu, cuda or cuda:N.")
JSON = typer.Option(None, "--json", help="Also write the results to this JSON file.")
REPEATS = typer.Option(20, min=1, help="Timed repetitions (median reported).")
DTYPE = typer.Option("fp32", metavar=choices("Dtype"), help="Dtype of the timed rows.")


def _dtype(name: str):
    import torch

    from inp_former.config import Dtype, choice

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[str(choice(Dtype, name, "dtype"))]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_rows(title: str, result: dict[str, Any]) -> None:
    """``result['rows']`` (a list of dicts) as one table, long notes below it, then the scalars."""
    rows = result.get("rows", [])
    notes = sorted({str(row["note"]) for row in rows if len(str(row.get("note") or "")) > 12})
    if rows:
        columns = [c for c in dict.fromkeys(k for row in rows for k in row) if not (c == "note" and notes)]
        console.print(rows_table(title, columns, ([_fmt(row.get(c)) for c in columns] for row in rows)))
    for note in notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    for name, text in (result.get("columns") or {}).items():
        console.print(f"{name}: {text}", highlight=False, soft_wrap=True)
    for key, value in result.items():
        if key in ("rows", "columns", "detail"):   # the explanations above; the details in --json
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
        elif isinstance(value, list):
            continue
        console.print(f"{key}: {value}", highlight=False, soft_wrap=True)


@bench_app.command("attention")
def bench_attention(
    n: int = typer.Option(784, min=1, help="Tokens per image (N)."),
    m: int = typer.Option(6, min=1, max=32, help="INPs (M)."),
    c: int = typer.Option(768, min=1, help="Channels (C)."),
    heads: int = typer.Option(12, min=1, help="Heads (H); C must be divisible by H."),
    batch: int = typer.Option(16, min=1, help="Batch size for the timed rows."),
    dtype: str = DTYPE,
    repeats: int = REPEATS,
    device: str = DEVICE,
    json_path: Optional[Path] = JSON,
) -> None:
    """Paper Table 1 (operation counts, memory) and measured times of each attention."""
    from inp_former.benchmarks.attention import run_attention_bench, table1_counts

    if c % heads:
        fail(f"--c {c} is not divisible by --heads {heads}")
    counts = table1_counts(n, m, c)
    timed = run(lambda: run_attention_bench(n, m, c, heads, batch, _dtype(dtype), pick_device(device),
                                            repeats=repeats))
    console.print(rows_table("Table 1: one decoder layer, one image, fp32", ["", "self-attention", "INP-guided"],
                             [[label, _count(counts, "vanilla", key), _count(counts, "inp", key)]
                              for label, key in (("A = QK^T (mult+add)", "qk"), ("A V (mult+add)", "av"),
                                                 ("Q/K/V/A (MB)", "memory"))]))
    print_rows("Measured", timed)
    write_json(json_path, {"table1": counts, "timed": timed})


def _count(counts: dict[str, Any], kind: str, key: str) -> str:
    value = counts[kind][key]
    if isinstance(value, (list, tuple)):
        return " / ".join(f"{v:.3g}" if v < 0.1 else f"{v:.2f}" for v in value)
    return f"{value:,}".replace(",", " ")


@bench_app.command("scoring")
def bench_scoring(
    batch: int = typer.Option(16, min=1, help="Images per batch."),
    grid: int = typer.Option(28, min=1, help="Tokens per side."),
    channels: int = typer.Option(768, min=1, help="Feature channels."),
    image_size: int = typer.Option(392, min=1, help="Crop size the maps are upsampled to."),
    out_size: int = typer.Option(256, min=1, help="Anomaly-map size."),
    dtype: str = DTYPE,
    repeats: int = REPEATS,
    device: str = DEVICE,
    json_path: Optional[Path] = JSON,
) -> None:
    """Fused regional-cosine scoring against the reference path."""
    from inp_former.benchmarks.scoring import run_scoring_bench

    result = run(lambda: run_scoring_bench(batch, grid, channels, image_size, out_size, _dtype(dtype),
                                           pick_device(device), repeats=repeats))
    print_rows("Scoring: maps + image scores", result)
    write_json(json_path, result)


@bench_app.command("model")
def bench_model(
    encoder: str = typer.Option("base", help="Encoder (random weights: speed does not depend on them)."),
    batch: list[int] = typer.Option([1, 16, 64], help="Inference batch sizes (repeat the flag)."),
    train_batch: int = typer.Option(16, min=1, help="Training batch size."),
    crop: int = typer.Option(392, min=14, help="Image size."),
    repeats: int = typer.Option(10, min=1, help="Timed repetitions (median reported)."),
    compile_model: bool = typer.Option(False, "--compile", help="Also time torch.compile of the fast path."),
    device: str = DEVICE,
    json_path: Optional[Path] = JSON,
) -> None:
    """End to end: inference images/s and training step time, reference fp32 vs the fast path."""
    from inp_former.benchmarks.model import run_model_bench

    result = run(lambda: run_model_bench(encoder, batch, train_batch, crop, pick_device(device), repeats=repeats,
                                         compile_model=compile_model))
    print_rows(f"Model ({encoder}, {crop} px)", result)
    write_json(json_path, result)


@bench_app.command("quality")
def bench_quality(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root [default: the demo data]."),
    dataset: str = typer.Option("mvtec", help="Layout of --data."),
    categories: Optional[str] = typer.Option(None, help="Comma-separated categories [default: all]."),
    encoder: Optional[str] = typer.Option(None, help="Encoder [default: the demo's]."),
    encoder_weights: Optional[str] = typer.Option(None, help="pretrained, a weight file, or random."),
    resize: Optional[int] = typer.Option(None, min=14, help="Resize."),
    crop: Optional[int] = typer.Option(None, min=14, help="Centre crop."),
    token_stride: Optional[int] = typer.Option(None, min=1, help="CNN encoders: pixels per token."),
    encoder_padding: Optional[int] = typer.Option(None, min=0, help="CNN encoders: mirror padding in pixels "
                                                  "[default: 32, rounded up to a multiple of the token stride]."),
    encoder_stages: Optional[str] = typer.Option(None, help="CNN encoders: feature levels as tokens, e.g. 3,4 "
                                                 "[default: strides 4-32]."),
    iters: Optional[int] = typer.Option(None, min=1, help="Training iterations [default: the demo's]."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Training batch size."),
    seed: Optional[int] = typer.Option(None, help="Seed of the initialisation and training."),
    device: str = DEVICE,
    json_path: Optional[Path] = JSON,
    md_path: Optional[Path] = typer.Option(None, "--md", help="Also write a Markdown record: provenance, the "
                                           "mean and per-category tables, the row differences."),
) -> None:
    """INP-Former untrained vs trained vs a nearest-neighbour patch baseline, same encoder and data."""
    from inp_former.benchmarks.quality import markdown_report, provenance, run_quality
    from inp_former.demo import demo_config
    from inp_former.io import atomic_write_text
    from inpctl.commands.train import config_from_flags
    from inpctl.helpers import METRIC_TITLES, percent

    def build():
        base, notice = demo_config()
        console.print(notice, highlight=False)
        if data is not None and not data.is_dir():
            fail(f"--data {data}: no such directory")
        return config_from_flags(
            base, data=data, dataset=dataset if data is not None else None, categories=categories, encoder=encoder,
            encoder_stages=encoder_stages,
            model=dict(encoder_weights=encoder_weights, resize=resize, crop=crop, token_stride=token_stride,
                       encoder_padding=encoder_padding),
            train=dict(iters=iters, batch_size=batch_size, seed=seed))

    cfg = run(build)
    resolved = pick_device(device)
    result = run(lambda: run_quality(cfg, resolved, reporter=RichReporter()))
    result["provenance"] = provenance(_command_line(ctx, "inpctl bench quality"), resolved)
    console.print(rows_table(f"Mean over categories, % ({cfg.model.encoder})", ["method", *METRIC_TITLES.values()],
                             ([name, *(percent(m[k]) for k in METRIC_TITLES)] for name, m in result["rows"].items())))
    meta, loss = result["meta"], result.get("loss")
    console.print(f"Encoder: {meta['encoder_design']} ({meta['encoder_source']})", highlight=False, soft_wrap=True)
    if loss:
        falling = "yes" if loss["still_falling"] else "no"
        console.print(f"Training: {meta['iterations']} iterations in {meta['train_seconds']:.0f} s; loss "
                      f"{loss['first']:.3f} -> {loss['at_25']:.3f} (25%) -> {loss['at_50']:.3f} (50%) -> "
                      f"{loss['at_75']:.3f} (75%) -> {loss['last']:.3f}; still falling over the last 20%: {falling} "
                      f"({100 * loss['tail_change']:+.1f}%, t {loss['tail_t']:.1f})", highlight=False, soft_wrap=True)
    write_json(json_path, result)
    if md_path is not None:
        atomic_write_text(md_path, markdown_report(result))
        console.print(f"Wrote {md_path}", highlight=False)


def _command_line(ctx: typer.Context, name: str) -> str:
    """The command as given: ``name`` and the options typed on the command line (for provenance)."""
    import shlex

    words = name.split()
    for param in ctx.command.params:   # (Typer may bring its own click: the source is compared by name)
        if getattr(ctx.get_parameter_source(param.name), "name", None) != "COMMANDLINE" or not param.opts:
            continue
        value, flag = ctx.params[param.name], param.opts[0]
        if getattr(param, "is_flag", False):
            words += [flag if value else (param.secondary_opts or [flag])[0]]
        else:
            words += [word for item in (value if isinstance(value, (list, tuple)) else [value])
                      for word in (flag, str(item))]
    return shlex.join(words)


@bench_app.command("compile")
def bench_compile(
    arch: list[int] = typer.Option([80, 90], "--arch", help="GPU architectures (sm_XX), repeat the flag."),
    json_path: Optional[Path] = JSON,
) -> None:
    """Compile every autotune config of every kernel for a GPU (no GPU needed): registers, spills,
    shared memory, tensor-core instructions, vector loads, occupancy."""
    from inp_former.benchmarks.compile import COLUMN_NOTES, compile_report, format_rows, problems

    report = run(lambda: compile_report(archs=tuple(arch)))
    columns, rows = format_rows(report)
    console.print(rows_table("Compiled kernels (Triton -> PTX -> cubin)", columns, rows))
    for name, note in COLUMN_NOTES.items():
        console.print(f"{name}: {note}", highlight=False, soft_wrap=True)
    for problem in problems(report):
        console.print(f"[yellow]problem:[/] {problem}", highlight=False, soft_wrap=True)
    write_json(json_path, report)
