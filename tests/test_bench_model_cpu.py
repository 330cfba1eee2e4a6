"""``inpctl bench model --device cpu`` (issue 21, item 5): one run, on the same images and weights
(random weights: only the rows and their fields are checked, not a speed), with the rows ``ref fp32``,
``auto``, ``bf16``, ``onnx fp32``, ``onnx int8`` (skipped, saying why, without onnxruntime),
``openvino``, ``openvino int8`` (issue 21, item 4; skipped, saying why, without the optional openvino
extra), the keys of every row and the top-level ``cpu`` object. Tiny sizes: ViT-S/14 at 28 px, batch 1.
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

INFER_PATHS = ["ref fp32", "auto", "bf16", "onnx fp32", "onnx int8", "openvino", "openvino int8"]
KEYS = ("pass", "path", "img/s", "x ref", "max err")
TINY = ["--encoder", "small", "--crop", "28", "--batch", "1", "--train-batch", "1", "--repeats", "1"]


@pytest.fixture(scope="module")
def openvino_outputs() -> dict:
    """What the bench's own OpenVINO models gave on 2 images, and the reference (filled by ``cli_run``)."""
    return {}


def _record_openvino_outputs(monkeypatch: pytest.MonkeyPatch, into: dict) -> None:
    """While the bench runs: the model it exports, and, before it closes its OpenVINO models, the
    maps and scores of each OpenVINO row and of the fp32 reference on the same 2 images (the model
    is still the exported one then: the training rows come after)."""
    from inp_former.inference import score_batch
    from kernels.dispatch import kernel_mode

    exported = {}
    real_init, real_close = onnx_paths.OnnxModels.__init__, onnx_paths.OpenVinoModels.close

    def init(self, model, cfg, *args, **kwargs):
        exported.update(model=model, cfg=cfg)
        real_init(self, model, cfg, *args, **kwargs)

    def close(self):
        if "reference" not in into:   # once, while the compiled models are still open
            crop = exported["cfg"].model.crop
            images = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(1))
            with kernel_mode("reference"):
                into["reference"] = score_batch(exported["model"], images, exported["cfg"], "fp32")[:2]
            for name in onnx_paths.OpenVinoModels.ROWS:
                into[name] = self.scorer(name)(images)
        real_close(self)

    monkeypatch.setattr(onnx_paths.OnnxModels, "__init__", init)
    monkeypatch.setattr(onnx_paths.OpenVinoModels, "close", close)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, openvino_outputs):
    path = tmp_path_factory.mktemp("bench-model-cpu") / "bench.json"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _record_openvino_outputs(monkeypatch, openvino_outputs)
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


def test_auto_row_names_its_runtime_and_precision_and_why(cli_run):
    from inp_former.inference import choose_precision, choose_runtime

    precision, reason = choose_precision("auto", "cpu")
    runtime, why = choose_runtime("auto", "auto", "cpu")   # torch here: the suite sets INPCTL_RUNTIME=torch
    assert _rows(cli_run[1], "infer")["auto"]["note"] == f"{runtime} ({why}), {precision} ({reason})"


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


def test_openvino_rows_run_when_openvino_is_installed(cli_run):
    ov = pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    output, result = cli_run
    rows = _rows(result, "infer")
    # the precision the CPU plugin chose for this CPU (bf16 where it has native bf16 units), named in the note
    precision = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    for name in ("openvino", "openvino int8"):
        assert rows[name]["img/s"] > 0 and rows[name]["x ref"] > 0, rows[name]
        release = ov.__version__.split("-")[0]
        assert rows[name]["note"].startswith(f"{name}: OpenVINO {release}, INFERENCE_PRECISION_HINT {precision}")
        assert f"note: {rows[name]['note']}" in output
    assert rows["openvino"]["max err"] < 0.05                # the fp32 graph, in bf16 or fp32
    assert 0.0 < rows["openvino int8"]["max err"] < 0.5      # quantised: close, not equal
    assert "int8" in rows["openvino int8"]["note"]           # its quantised products ran int8 kernels
    assert result["cpu"]["openvino"] == ov.__version__ and f"openvino {ov.__version__}" in output


def test_openvino_scorer_gives_maps_and_scores_close_to_the_reference(cli_run, openvino_outputs):
    """Both outputs, not only the maps the table's ``max err`` compares: the bench's own compiled
    OpenVINO models (ViT-S at 28 px, random weights) on 2 images, against the fp32 reference."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    maps, scores = openvino_outputs["reference"]
    for name, tolerance in (("openvino", 0.05), ("openvino int8", 0.5)):
        got_maps, got_scores = openvino_outputs[name]
        assert got_maps.shape == maps.shape and got_scores.shape == scores.shape
        assert ((got_maps - maps).abs().max() / maps.abs().max()).item() < tolerance, name
        assert ((got_scores - scores).abs() / scores.abs()).max().item() < tolerance, name


@pytest.mark.parametrize("openvino_installed", [True, False])
def test_runtime_rows_say_why_they_are_skipped(monkeypatch, openvino_installed):
    """Without onnxruntime nothing can write the graphs OpenVINO runs: its rows are skipped too."""
    monkeypatch.setattr(onnx_paths, "onnx_missing", lambda: "skipped: onnxruntime not installed (test)")
    monkeypatch.setattr(onnx_paths, "openvino_missing",
                        lambda: None if openvino_installed else "skipped: openvino not installed (test)")
    steps = []
    result = run_model_bench("small", [1], 1, 28, torch.device("cpu"), repeats=1,
                             progress=lambda done, total, name: steps.append((done, total, name)))
    rows = _rows(result, "infer")
    assert list(rows) == INFER_PATHS
    expected = {"onnx fp32": "onnxruntime", "onnx int8": "onnxruntime",
                "openvino": "onnxruntime" if openvino_installed else "openvino",
                "openvino int8": "onnxruntime" if openvino_installed else "openvino"}
    for name, package in expected.items():
        assert rows[name]["img/s"] is None and rows[name]["x ref"] is None
        assert rows[name]["note"] == f"skipped: {package} not installed (test)"
    # progress from the start, every row counted, and the end: 7 inference rows + 2 training rows
    assert steps[0] == (0, 9, "building the small model") and steps[-1] == (9, 9, "")
    assert not any("ONNX" in name or "OpenVINO" in name for _, _, name in steps)


def _without(monkeypatch, package: str) -> None:
    """Imports of ``package`` fail from now on in this test, as where it is not installed."""
    import builtins

    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == package:
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)


def test_onnx_missing_names_the_package(monkeypatch):
    _without(monkeypatch, "onnxruntime")
    reason = onnx_paths.onnx_missing()
    assert reason.startswith("skipped: onnxruntime not installed") and "inpctl[export]" in reason


def test_openvino_missing_names_the_package_and_the_extra(monkeypatch):
    _without(monkeypatch, "openvino")
    reason = onnx_paths.openvino_missing()
    assert reason.startswith("skipped: ") and "openvino not installed" in reason and "'inpctl[openvino]'" in reason
    assert "\n" not in reason and onnx_paths.openvino_version() is None


def test_skip_notes_print_the_extra_as_written(capsys):
    """rich would read ``[openvino]`` as markup and print ``pip install 'inpctl'``."""
    from inpctl.commands.bench import print_rows

    note = "skipped: openvino not installed (pip install 'inpctl[openvino]')"
    print_rows("t", {"rows": [{"path": "openvino", "ms": None, "note": note}]})
    assert f"note: {note}" in capsys.readouterr().out
