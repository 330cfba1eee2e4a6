"""What a newcomer reads (issue 25, items 1 and 2), at COLUMNS=80 and in a log (Typer's CliRunner is
not a terminal): whole names in every table, log lines never broken by rich, the last progress line
once, rates only where measured, the run directory when training starts, benchmarks sized for the
machine with progress from their start, legends and fields only for what is shown, no meaningless
trend statistic. Encoders have random weights here: only the output is checked, not a metric.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import inpctl.helpers as helpers
from inpctl.cli import app
from tests.datagen import make_mvtec_tree
from tests.helpers import first_lines

runner = CliRunner()
WIDTH = {"terminal_width": 80, "env": {"COLUMNS": "80"}}
# three names alike in their first 14 characters: "industrial_si…" three times was the bug
LONG = ("industrial_sink_basin_alpha", "industrial_sink_basin_beta", "industrial_sink_basin_gamma")
BORDERS = "┏┃┡│└├┗┠┨"


def first_column(text: str) -> str:
    """The first column of the boxed tables in ``text``, its cell lines joined: a folded name is whole again."""
    cells = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    return "".join(cells)


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1] in BORDERS]


# --- tables and lines (item 1) -----------------------------------------------------------------

@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "log"])
def test_tables_fold_long_names_instead_of_cutting_them(terminal):
    stream = io.StringIO()
    out = helpers._Console(file=stream, width=80, force_terminal=terminal)
    out.print(helpers.metrics_table({name: {"i_auroc": 0.5} for name in LONG}, {"i_auroc": 0.5}, "metrics"))
    out.print(helpers.rows_table("Decisions", ["category", "chosen by", "threshold", "images"],
                                 [[name, "path", "0.5", 3] for name in LONG]))
    text = stream.getvalue()
    assert "…" not in text
    assert max(len(line) for line in table_lines(re.sub(r"\x1b\[[0-9;]*m", "", text))) <= 80
    joined = first_column(re.sub(r"\x1b\[[0-9;]*m", "", text))
    assert all(joined.count(name) == 2 for name in LONG), joined   # in both tables, whole


def test_a_log_line_is_never_broken_and_a_terminal_breaks_between_words():
    line = ("F1-max thresholds (decoder maps): image 0.417903 (F1 81.4%), pixel 0.578033 (F1 47.0%); "
            "continue with: inpctl train --resume runs/demo-efficientnet_lite0/last.pt")
    log, terminal = io.StringIO(), io.StringIO()
    helpers._Console(file=log, width=80).print(line, soft_wrap=False)   # whatever the caller asks
    assert log.getvalue() == line + "\n"
    helpers._Console(file=terminal, width=80, force_terminal=True, color_system=None).print(line, soft_wrap=True)
    shown = terminal.getvalue().splitlines()
    assert len(shown) > 1 and max(len(row) for row in shown) <= 80
    assert " ".join(row.strip() for row in shown) == line   # broken only where a space was


def test_a_rate_is_shown_only_when_measured(capsys):
    stream = io.StringIO()
    with helpers.PlainProgress(0.0, (), stream=stream) as progress:   # a 2-image predict: one update
        task = progress.add_task("predict", total=2)
        progress.update(task, completed=2)
    assert stream.getvalue().count("\n") == 1 and "/s" not in stream.getvalue()   # no "0.00/s"
    with helpers.RichReporter().counting("predict", 3) as on_item:
        on_item(3, 3, "c.png")
    assert "/s" not in capsys.readouterr().err


def test_a_finished_task_prints_its_last_line_once():
    stream = io.StringIO()
    with helpers.PlainProgress(0.0, ("stats",), stream=stream) as progress:   # every update is due
        task = progress.add_task("train", total=3)
        for i in range(1, 4):
            progress.update(task, completed=i, stats=f"loss {1 / i:.3f}")
    lines = stream.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["train: 1/3", "train: 2/3", "train: 3/3"]


def test_the_first_plain_line_comes_within_seconds_then_every_interval():
    stream = io.StringIO()
    with helpers.PlainProgress(3600.0, (), stream=stream, first=0.0) as progress:
        task = progress.add_task("bench", total=4)
        for i in range(4):
            progress.update(task, completed=i)
    assert stream.getvalue().splitlines()[0].startswith("bench: 0/4")   # at once, not after an hour
    assert stream.getvalue().count("\n") == 2                            # then only the closing line


@pytest.fixture(scope="module")
def long_names_root(tmp_path_factory):
    return make_mvtec_tree(tmp_path_factory.mktemp("newcomer-data"), categories=LONG, n_train=2, n_test_good=1,
                           n_test_bad=1, size=32)


def test_train_at_80_columns_in_a_log(long_names_root, tmp_path, monkeypatch):
    monkeypatch.setattr(helpers, "PLAIN_PROGRESS_SECONDS", 0.0)   # a line at every step: the worst case
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(long_names_root), "--encoder", "small", "--encoder-weights",
                                 "random", "--resize", "28", "--crop", "28", "--batch-size", "2", "--iters", "2",
                                 "--out", str(run_dir), "--device", "cpu"], **WIDTH)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    started = lines.index(f"Run directory: {run_dir}")   # named when training starts...
    assert started < min(i for i, line in enumerate(lines) if line.startswith("train: "))
    assert sum(line.startswith("train: 2/2") for line in lines) == 1          # ...and the last step once
    assert "…" not in result.output
    assert all(first_column(result.output).count(name) == 1 for name in LONG)   # three rows told apart
    assert max(len(line) for line in table_lines(result.output)) <= 80
    thresholds = next(line for line in lines if line.startswith("F1-max thresholds"))
    assert re.search(r"image .*\(F1 [\d.]+%\), pixel .*\(F1 [\d.]+%\)$", thresholds)   # one line, not two
    assert any(line.startswith("Wrote ") and line.endswith("thresholds.json") for line in lines)


# --- benchmarks fit the machine (item 2) --------------------------------------------------------

def test_bench_model_sizes_fit_the_device():
    from inp_former.benchmarks.sizes import CPU_SIZES, GPU_SIZES, resolve_sizes

    assert CPU_SIZES.crop < GPU_SIZES.crop and max(CPU_SIZES.batches) < max(GPU_SIZES.batches)
    assert resolve_sizes("cuda") == (GPU_SIZES, False) and resolve_sizes("cpu") == (CPU_SIZES, True)
    given = resolve_sizes("cpu", "small", [2], 1, 28)
    assert given[0].describe() == "encoder small, 28 px, batch 2, train batch 1" and given[1] is False
    partly = resolve_sizes("cpu", crop=28)
    assert partly[0].crop == 28 and partly[0].batches == CPU_SIZES.batches and partly[1] is True


def test_bench_model_with_its_defaults_on_a_cpu_says_so_and_shows_progress_at_once():
    """The newcomer's command as typed, in a log: once its first two lines are in, it is stopped
    (the whole CPU-sized run takes a minute or more; the sizes it times are checked above)."""
    from inp_former.benchmarks.sizes import CPU_SIZES, GPU_SIZES

    # importing torch on a busy 2-core machine is slow: up to 180 s for the two lines
    lines = first_lines([sys.executable, "-m", "inpctl", "bench", "model", "--device", "cpu"], 2, 180,
                        cwd=Path(__file__).resolve().parents[1], env={**os.environ, "COLUMNS": "80"})
    assert len(lines) == 2, lines
    assert lines[0] == (f"On cpu: CPU-sized defaults for the flags not given ({CPU_SIZES.describe()}; on a GPU: "
                        f"{GPU_SIZES.describe()}); --encoder, --crop, --batch, --train-batch choose")
    # progress before the model is built, not after the first row: 2 batch sizes x 7 inference rows (ref fp32,
    # auto, bf16, onnx fp32, onnx int8, openvino, openvino int8), the ONNX export and its quantisation (with
    # onnxruntime), the OpenVINO compilation (with openvino), 2 training rows
    from inp_former.benchmarks.onnx_paths import onnx_missing, openvino_missing

    steps = 16 + 2 * (onnx_missing() is None) + (openvino_missing() is None)
    assert re.match(rf"bench model: 0/{steps}  building the small model  elapsed 0:00:0\d$", lines[1]), lines[1]


def test_bench_model_rows_have_no_cuda_only_fields_off_cuda():
    from inp_former.benchmarks.model import _row
    from inp_former.benchmarks.timing import Timing

    assert "peak MB" not in _row("infer", "ref fp32", 1, Timing(2.0, 1.0, 3, None), 0.0)
    assert _row("infer", "ref fp32", 1, Timing(2.0, 1.0, 3, 12.5), 0.0)["peak MB"] == 12.5


def test_bench_quality_at_80_columns(long_names_root, tmp_path):
    result = runner.invoke(app, ["bench", "quality", "--data", str(long_names_root), "--categories", LONG[0],
                                 "--encoder", "timm:resnet18", "--encoder-weights", "random", "--resize", "64",
                                 "--crop", "64", "--iters", "3", "--batch-size", "2", "--device", "cpu",
                                 "--json", str(tmp_path / "q.json")], **WIDTH)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert first_column(result.output) == "untrainedtrainednearest-neighbour"   # folded, not "nearest-neig…"
    training = next(line for line in result.output.splitlines() if line.startswith("Training: 3 iterations"))
    assert training.endswith(")") and "still falling over the last 20%" in training   # one line
    # 3 losses: a 20% tail of 2 points has no t-statistic; none is printed (was "t -1000000.0")
    assert ", t " not in training and json.loads((tmp_path / "q.json").read_text())["loss"]["tail_t"] is None


def test_loss_trend_statistic_is_meaningful_or_absent():
    from inp_former.benchmarks.quality import loss_summary

    short = loss_summary([1.0 - 0.05 * i for i in range(10)])   # a 20% tail of 2 losses: no t, the drop decides
    assert short["tail_t"] is None and short["still_falling"] is True
    json.dumps(short, allow_nan=False)                           # no clamped or infinite stand-in
    noisy = loss_summary([1.0 / (1 + 0.1 * i) + 0.01 * (-1) ** i for i in range(100)])
    assert math.isfinite(noisy["tail_t"]) and noisy["tail_t"] < -2 and noisy["still_falling"] is True


def test_compile_report_shows_progress_as_configs_compile():
    from inp_former.benchmarks.compile import compile_report, compiler_unavailable

    if compiler_unavailable():
        pytest.skip(compiler_unavailable())
    seen: list[tuple[int, int, str]] = []
    report = compile_report(targets=((80, "fp32"),), kernels=("map",), jobs=1, sass=False,
                            progress=lambda done, total, name: seen.append((done, total, name)))
    total = len(report["rows"])
    assert seen[0][:2] == (0, total) and seen[-1][:2] == (total, total)
    assert [done for done, _, _ in seen] == list(range(total + 1)) and seen[-1][2].startswith("map sm_80 fp32")


def test_legends_and_fields_follow_what_is_shown(capsys):
    """The CUDA-only columns come back on CUDA, with their legend; an empty column or field never shows."""
    from inp_former.benchmarks import attention, scoring
    from inpctl.commands.bench import print_rows

    row = {"name": attention.REFERENCE, "pass": "forward", "median_ms": 2.0, "speedup": 1.0, "min_bytes": 4e6,
           "gb_per_s": 2.0, "pct_of_copy_bw": 0.1, "max_rel_err": 0.0, "peak_mem_mb": 3.0, "note": None}
    assert {"%bw", "peak MB"} <= set(attention._table_row(row, on_cuda=True))
    assert not {"%bw", "peak MB"} & set(attention._table_row(row, on_cuda=False))
    row = {"name": "matrix", "median_ms": 2.0, "speedup": 1.0, "min_bytes": 4e6, "gb_per_s": 2.0,
           "pct_of_copy_bw": 0.1, "max_abs_err_map_fp64": 0.0, "max_abs_err_score_fp64": 0.0, "peak_mem_mb": 3.0,
           "note": None}
    assert {"%bw", "peak MB"} <= set(scoring._table_row(row, on_cuda=True))
    assert not {"%bw", "peak MB"} & set(scoring._table_row(row, on_cuda=False))

    print_rows("t", {"rows": [{"path": "ref", "ms": 1.0, "%bw": 50.0, "sc err": 0.0, "peak MB": None}],
                     "columns": {"%bw": "share of the copy bandwidth", "x ref": "speed-up",
                                 "map err / sc err": "errors"},
                     "copy_gb_per_s": 3000.0, "triton": None, "roofline": {"bytes": 5, "flops": None}})
    out = capsys.readouterr().out
    assert "%bw: share of the copy bandwidth" in out and "map err / sc err: errors" in out
    assert "x ref:" not in out and "peak MB" not in out                       # no column, no legend
    assert "copy_gb_per_s: 3000" in out and "triton" not in out and "flops" not in out and "None" not in out
