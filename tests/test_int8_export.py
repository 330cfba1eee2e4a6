"""INT8 ONNX export (inp_former/quantize.py, ``inpctl export --int8``): calibrated on normal images,
checked against fp32 on labelled images, refused when it loses more than a point of image AUROC."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from inp_former.quantize import Int8Check, evenly_spaced, mean_category_auroc, refuse_if_worse
from inpctl.cli import app
from tests.datagen import make_mvtec_tree

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

runner = CliRunner()
TINY = ["--encoder", "small", "--encoder-weights", "random", "--resize", "64", "--crop", "56", "--batch-size", "2",
        "--warmup-iters", "1", "--iters", "2", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_mvtec_tree(tmp_path_factory.mktemp("data"), categories=("bottle", "cable"), n_test_good=3,
                           n_test_bad=3)
    run_dir = tmp_path_factory.mktemp("run") / "r"
    result = invoke("train", "--data", root, *TINY, "--out", run_dir)
    assert result.exit_code == 0, result.output
    return root, run_dir


def test_the_refusal_rule():
    check = Int8Check(images=10, categories=["a"], auroc_fp32=90.0, auroc_int8=88.5, max_map_diff=0.1, map_scale=1.0)
    assert check.auroc_drop == pytest.approx(1.5)
    with pytest.raises(ValueError, match=r"drops by 1\.50 points .* force"):
        refuse_if_worse(check, force=False)
    refuse_if_worse(check, force=True)                                              # forced: written
    refuse_if_worse(Int8Check(10, ["a"], 90.0, 89.5, 0.1, 1.0), force=False)       # half a point: fine
    unknown = Int8Check(4, ["a"], math.nan, math.nan, 0.0, 1.0)                     # no anomalous image: unknown
    with pytest.raises(ValueError, match="cannot be checked"):
        refuse_if_worse(unknown, force=False)


def test_auroc_is_the_mean_over_categories_with_both_labels():
    labels = np.array([0, 1, 0, 1, 0, 0])
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.5, 0.4])
    categories = np.array(["a", "a", "b", "b", "c", "c"])        # c has no anomalous image: left out
    assert mean_category_auroc(labels, scores, categories) == pytest.approx(50.0)   # a: 100, b: 0
    assert evenly_spaced(list(range(10)), 3) == [0, 3, 6] and evenly_spaced([1, 2], 5) == [1, 2]


def test_export_int8_writes_a_checked_model_that_runs(trained, tmp_path):
    import onnxruntime as ort

    root, run_dir = trained
    target = tmp_path / "model.int8.onnx"
    result = invoke("export", "--ckpt", run_dir, "--int8", "--out", target, "--force",
                    "--calibration", root / "bottle" / "train" / "good")
    assert result.exit_code == 0, result.output
    assert "Int8 against fp32 on 12 check images" in result.output
    meta = json.loads((tmp_path / "model.int8.onnx.json").read_text())
    assert meta["precision"] == "int8" and meta["int8"]["calibration_images"] == 4
    int8 = meta["int8"]
    assert int8["auroc_drop"] == pytest.approx(int8["auroc_fp32"] - int8["auroc_int8"])
    assert int8["quantised_nodes"] > 0 and int8["forced"] == (int8["auroc_drop"] > 1.0)
    assert not list(tmp_path.glob(".*"))                       # no temporary file left beside it
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in __import__("onnx").load(str(target)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    maps, scores, embeddings = session.run(None, {"image": np.zeros((2, 3, 56, 56), np.float32)})
    assert maps.shape == (2, 256, 256) and scores.shape == (2,) and np.isfinite(maps).all()


def test_a_model_that_loses_accuracy_is_not_written(trained, tmp_path, monkeypatch):
    import inp_former.quantize as quantize

    def fp32_as_int8(fp32_path, int8_path, calibration):
        """The quantiser's contract without its work (the test above runs the real one): a model
        file at ``int8_path``, here the fp32 graph itself, which the check then runs like any other."""
        shutil.copyfile(fp32_path, int8_path)
        return []

    _, run_dir = trained
    monkeypatch.setattr(quantize, "MAX_AUROC_DROP", -1000.0)   # any int8 model "loses" too much now
    monkeypatch.setattr(quantize, "quantize_onnx", fp32_as_int8)
    target = tmp_path / "model.int8.onnx"
    result = invoke("export", "--ckpt", run_dir, "--int8", "--out", target)
    assert result.exit_code != 0 and "--force" in result.output and "not written" in result.output
    assert not target.exists() and not list(tmp_path.iterdir())


def test_int8_flags_without_int8_are_refused(trained, tmp_path):
    _, run_dir = trained
    result = invoke("export", "--ckpt", run_dir, "--out", tmp_path / "m.onnx", "--calibration", tmp_path)
    assert result.exit_code != 0 and "--calibration: only with --int8" in result.output
