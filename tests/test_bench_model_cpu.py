"""``inpctl bench model --device cpu`` (issue 21, item 5): one run, on the same images and weights
(random weights: only the rows and their fields are checked, not a speed), with the rows ``ref fp32``,
``auto``, ``bf16``, ``onnx fp32``, ``onnx int8`` (skipped, saying why, without onnxruntime), the
keys of every row and the top-level ``cpu`` object. Tiny sizes: ViT-S/14 at 28 px, batch 1.
"""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from inp_former.benchmarks import onnx_paths
from inp_former.benchmarks.model import run_model_bench
from inp_former.runtime import cpu_capabilities
from inpctl.cli import app

INFER_PATHS = ["ref fp32", "auto", "bf16", "onnx fp32", "onnx int8"]
KEYS = ("pass", "path", "img/s", "x ref", "max err")
TINY = ["--encoder", "small", "--crop", "28", "--batch", "1", "--train-batch", "1", "--repeats", "1"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench-model-cpu") / "bench.json"
    result = CliRunner().invoke(app, ["bench", "model", "--device", "cpu", *TINY, "--json", str(path)],
                                terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output, json.loads(path.read_text())


def _rows(result, pass_):
    return {row["path"]: row for row in result["rows"] if row["pass"] == pass_}


def test_cpu_rows_in_one_run_with_the_json_keys(cli_run):
    _, result = cli_run
    assert [row["path"] for row in result["rows"] if row["pass"] == "infer"] == INFER_PATHS   # no compile unasked
    assert list(_rows(result, "train")) == ["ref fp32", "bf16"]
    for row in result["rows"]:
        assert all(key in row for key in KEYS), row
        assert "peak MB" not in row   # the CUDA-only column
    reference = _rows(result, "infer")["ref fp32"]
    assert reference["x ref"] == 1.0 and reference["max err"] == 0.0 and reference["RSS MB"] > 0


def test_the_table_fits_80_columns_and_explains_its_columns(cli_run):
    output, _ = cli_run
    table = [line for line in output.splitlines() if line[:1] in "┏┃┡│└├"]
    assert table and max(len(line) for line in table) <= 80 and "…" not in output
    for column in ("x ref", "max err", "RSS MB"):
        assert any(line.startswith(f"{column}: ") for line in output.splitlines()), column
    assert "peak MB" not in output and "None" not in output


def test_auto_row_names_its_precision_and_reason(cli_run):
    from inp_former.inference import choose_precision

    precision, reason = choose_precision("auto", "cpu")
    assert _rows(cli_run[1], "infer")["auto"]["note"] == f"{precision} ({reason})"


def test_bf16_differs_from_the_reference_a_little(cli_run):
    error = _rows(cli_run[1], "infer")["bf16"]["max err"]
    assert 0.0 < error < 0.05, error


def test_cpu_object_holds_the_detected_capabilities(cli_run):
    output, result = cli_run
    cpu = result["cpu"]
    assert cpu["capabilities"] == cpu_capabilities().as_dict()
    assert cpu["threads"] == torch.get_num_threads() and cpu["cores"] >= 1 and cpu["torch"] == torch.__version__
    assert isinstance(cpu["flags"], list) and set(cpu["flags"]) >= {f for f in ("amx_bf16", "avx512_bf16")
                                                                   if cpu["capabilities"][f]}
    assert f"native bf16: {cpu['capabilities']['native_bf16'] or 'none'}" in output   # and the table says it


def test_onnx_rows_run_when_onnxruntime_is_installed(cli_run):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rows = _rows(cli_run[1], "infer")
    for name in ("onnx fp32", "onnx int8"):
        assert rows[name]["img/s"] > 0 and rows[name]["x ref"] > 0 and "note" not in rows[name]
    assert rows["onnx fp32"]["max err"] < 1e-3          # the same fp32 graph
    assert 0.0 < rows["onnx int8"]["max err"] < 0.5      # quantised: close, not equal
    assert cli_run[1]["cpu"]["onnxruntime"] is not None


def test_onnx_rows_say_why_they_are_skipped(monkeypatch):
    monkeypatch.setattr(onnx_paths, "onnx_missing", lambda: "skipped: onnxruntime not installed (test)")
    steps = []
    result = run_model_bench("small", [1], 1, 28, torch.device("cpu"), repeats=1,
                             progress=lambda done, total, name: steps.append((done, total, name)))
    rows = _rows(result, "infer")
    assert list(rows) == INFER_PATHS
    for name in ("onnx fp32", "onnx int8"):
        assert rows[name]["img/s"] is None and rows[name]["x ref"] is None
        assert rows[name]["note"] == "skipped: onnxruntime not installed (test)"
    # progress from the start, every row counted, and the end: 5 inference rows + 2 training rows
    assert steps[0] == (0, 7, "building the small model") and steps[-1] == (7, 7, "")
    assert not any("ONNX" in name for _, _, name in steps)


def test_onnx_missing_names_the_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    reason = onnx_paths.onnx_missing()
    assert reason.startswith("skipped: onnxruntime not installed") and "inpctl[export]" in reason
