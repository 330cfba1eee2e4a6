"""``inpctl bench ...``: each subcommand runs one benchmark of ``inp_former.benchmarks`` and prints it.

Tables fit an 80-column terminal (short headers, units in them); explanations go below the table,
only for the columns shown, and ``--json`` writes everything. Each benchmark shows its progress (a
bar, or plain lines in a log) from its start.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from inpctl.helpers import (RichReporter, choices, console, fail, pick_device, progress_bar, rows_table, run,
                            write_json)

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
    """``result['rows']`` (a list of dicts) as one table, long notes below it, what each column shown
    means, then the scalars that have a value. A column empty in every row is not shown."""
    rows = result.get("rows", [])
    notes = sorted({str(row["note"]) for row in rows if len(str(row.get("note") or "")) > 12})
    columns = [c for c in dict.fromkeys(k for row in rows for k in row)
               if not (c == "note" and notes) and any(row.get(c) is not None for row in rows)]
    if rows:
        console.print(rows_table(title, columns, ([_fmt(row.get(c)) for c in columns] for row in rows)))
    for note in notes:
        console.print(f"note: {note}", highlight=False, markup=False)   # keeps "inpctl[openvino]" as written
    for name, text in (result.get("columns") or {}).items():
        if any(part in columns for part in name.split(" / ")):   # a legend only for what is shown
            console.print(f"{name}: {text}", highlight=False)
    for key, value in result.items():
        if key in ("rows", "columns", "detail") or value is None:   # explained above; details in --json
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items() if v is not None)
        elif isinstance(value, list):
            continue
        console.print(f"{key}: {value}", highlight=False)


@contextlib.contextmanager
def rows_progress(label: str) -> Iterator[Callable[[int, int, str], None]]:
    """A benchmark's ``progress(done, total, name)`` callback drawn as a bar, or as plain lines in a log
    (the first at once: the rows take seconds each; no rate: rows differ in cost)."""
    with progress_bar("name", rate=False, first=0.0) as bar:
        task = bar.add_task(label, total=None, name="")
        yield lambda done, total, name: bar.update(task, completed=done, total=total, name=name)


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
    resolved = pick_device(device)
    with rows_progress("bench attention") as progress:
        timed = run(lambda: run_attention_bench(n, m, c, heads, batch, _dtype(dtype), resolved, repeats=repeats,
                                                progress=progress))
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

    resolved = pick_device(device)
    with rows_progress("bench scoring") as progress:
        result = run(lambda: run_scoring_bench(batch, grid, channels, image_size, out_size, _dtype(dtype), resolved,
                                               repeats=repeats, progress=progress))
    print_rows("Scoring: maps + image scores", result)
    write_json(json_path, result)


def _by_device(field: Callable[[Any], object]) -> str:
    """`` [default: X on CUDA, Y on CPU].`` from the one place the sizes live."""
    from inp_former.benchmarks.sizes import CPU_SIZES, GPU_SIZES

    return f" [default: {field(GPU_SIZES)} on CUDA, {field(CPU_SIZES)} on CPU]."


@bench_app.command("model")
def bench_model(
    encoder: Optional[str] = typer.Option(None, help="Encoder (random weights: speed does not depend on them)"
                                          + _by_device(lambda s: s.encoder)),
    batch: Optional[list[int]] = typer.Option(None, min=1, help="Inference batch sizes (repeat the flag)"
                                              + _by_device(lambda s: " ".join(map(str, s.batches)))),
    train_batch: Optional[int] = typer.Option(None, min=1, help="Training batch size"
                                              + _by_device(lambda s: s.train_batch)),
    crop: Optional[int] = typer.Option(None, min=14, help="Image size" + _by_device(lambda s: s.crop)),
    repeats: int = typer.Option(10, min=1, help="Timed repetitions (median reported)."),
    compile_model: bool = typer.Option(False, "--compile", help="Also time torch.compile (on a CPU: of the default "
                                       "path; says how long compiling took)."),
    device: str = DEVICE,
    json_path: Optional[Path] = JSON,
) -> None:
    """End to end: inference images/s and training step time, reference fp32 vs the faster paths
    (on a CPU: the default auto path, bf16, ONNX fp32 and int8 in ONNX Runtime and in OpenVINO), in one run on
    the same images."""
    from inp_former.benchmarks.model import run_model_bench
    from inp_former.benchmarks.sizes import CPU_SIZES, GPU_SIZES, resolve_sizes

    resolved = pick_device(device)
    sizes, cpu_sized = resolve_sizes(resolved, encoder, batch, train_batch, crop)
    if cpu_sized:
        console.print(f"On {resolved.type}: CPU-sized defaults for the flags not given ({CPU_SIZES.describe()}; on a "
                      f"GPU: {GPU_SIZES.describe()}); --encoder, --crop, --batch, --train-batch choose", highlight=False)
    with rows_progress("bench model") as progress:
        result = run(lambda: run_model_bench(sizes.encoder, sizes.batches, sizes.train_batch, sizes.crop, resolved,
                                             repeats=repeats, compile_model=compile_model, progress=progress))
    print_rows(f"Model ({sizes.encoder}, {sizes.crop} px)", {k: v for k, v in result.items() if k != "cpu"})
    if "cpu" in result:
        cpu = result["cpu"]
        console.print(f"cpu: {cpu['model']}; {cpu['cores']} cores, {cpu['threads']} torch threads, load "
                      f"{cpu['load_average']}; native bf16: {cpu['capabilities']['native_bf16'] or 'none'}; flags: "
                      f"{' '.join(cpu['flags']) or 'none'}; onnxruntime {cpu['onnxruntime'] or 'not installed'}; "
                      f"openvino {cpu.get('openvino') or 'not installed'}",
                      highlight=False, soft_wrap=True)
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
    keep_aspect: bool = typer.Option(False, "--keep-aspect", help="Keep the aspect ratio (as inpctl train)."),
    tile: Optional[int] = typer.Option(None, min=1, metavar="SIZE", help="Tiles at native resolution (as inpctl "
                                       "train), for every row."),
    tile_overlap: Optional[int] = typer.Option(None, min=0, metavar="PX", help="With --tile: overlap (as inpctl "
                                               "train)."),
    token_stride: Optional[int] = typer.Option(None, min=1, help="CNN encoders: pixels per token."),
    encoder_padding: Optional[int] = typer.Option(None, min=0, help="CNN encoders: mirror padding in pixels "
                                                  "[default: 32, rounded up to a multiple of the token stride]."),
    encoder_stages: Optional[str] = typer.Option(None, help="CNN encoders: feature levels as tokens, e.g. 3,4 "
                                                 "[default: strides 4-32]."),
    iters: Optional[int] = typer.Option(None, min=1, help="Training iterations [default: the demo's]."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Training batch size."),
    seed: Optional[int] = typer.Option(None, help="Seed of the initialisation and training."),
    precision: Optional[str] = typer.Option(None, metavar=choices("Precision"), help="Training precision "
                                            "(bf16: autocast) [default: the demo's]."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated rows to run, of untrained, "
                                          "trained, nearest-neighbour [default: all three]."),
    device: str = DEVICE,
    json_path: Optional[Path] = JSON,
    md_path: Optional[Path] = typer.Option(None, "--md", help="Also write a Markdown record: provenance, the "
                                           "mean and per-category tables, the row differences."),
) -> None:
    """INP-Former untrained vs trained vs a nearest-neighbour patch baseline, same encoder and data."""
    from inp_former.benchmarks.quality import METHODS, markdown_report, provenance, run_quality
    from inp_former.demo import demo_config
    from inp_former.io import atomic_write_text
    from inpctl.commands.train import config_from_flags
    from inpctl.helpers import METRIC_TITLES, percent

    rows = tuple(m.strip() for m in methods.split(",") if m.strip()) if methods is not None else METHODS
    if not rows or any(m not in METHODS for m in rows):
        fail(f"--methods {methods}: expected a comma-separated list of {', '.join(METHODS)}")

    def build():
        base, notice = demo_config()
        console.print(notice, highlight=False)
        if data is not None and not data.is_dir():
            fail(f"--data {data}: no such directory")
        return config_from_flags(
            base, data=data, dataset=dataset if data is not None else None, categories=categories, encoder=encoder,
            encoder_stages=encoder_stages,
            model=dict(encoder_weights=encoder_weights, resize=resize, crop=crop, keep_aspect=keep_aspect or None,
                       token_stride=token_stride, encoder_padding=encoder_padding, tile=tile,
                       tile_overlap=tile_overlap),
            train=dict(iters=iters, batch_size=batch_size, seed=seed, precision=precision))

    cfg = run(build)
    resolved = pick_device(device)
    result = run(lambda: run_quality(cfg, resolved, reporter=RichReporter(), methods=rows))
    result["provenance"] = provenance(_command_line(ctx, "inpctl bench quality"), resolved)
    console.print(rows_table(f"Mean over categories, % ({cfg.model.encoder})", ["method", *METRIC_TITLES.values()],
                             ([name, *(percent(m[k]) for k in METRIC_TITLES)] for name, m in result["rows"].items())))
    meta, loss = result["meta"], result.get("loss")
    console.print(f"Encoder: {meta['encoder_design']} ({meta['encoder_source']})", highlight=False, soft_wrap=True)
    if loss:
        falling = "yes" if loss["still_falling"] else "no"
        trend = f"{100 * loss['tail_change']:+.1f}%" + (f", t {loss['tail_t']:.1f}" if loss["tail_t"] is not None else "")
        console.print(f"Training: {meta['iterations']} iterations in {meta['train_seconds']:.0f} s; loss "
                      f"{loss['first']:.3f} -> {loss['at_25']:.3f} (25%) -> {loss['at_50']:.3f} (50%) -> "
                      f"{loss['at_75']:.3f} (75%) -> {loss['last']:.3f}; still falling over the last 20%: {falling} "
                      f"({trend})", highlight=False)
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

    with rows_progress("bench compile") as progress:
        report = run(lambda: compile_report(archs=tuple(arch), progress=progress))
    columns, rows = format_rows(report)
    console.print(rows_table("Compiled kernels (Triton -> PTX -> cubin)", columns, rows))
    for name, note in COLUMN_NOTES.items():
        console.print(f"{name}: {note}", highlight=False, soft_wrap=True)
    for problem in problems(report):
        console.print(f"[yellow]problem:[/] {problem}", highlight=False, soft_wrap=True)
    write_json(json_path, report)
