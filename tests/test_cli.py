"""End to end through the CLI: train a few iterations on a tiny generated dataset, then eval."""
import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from inpctl.cli import app
from tests.datagen import make_mvtec_tree
from tests.helpers import assert_same_category_metrics

runner = CliRunner()
TINY = ["--encoder", "small", "--encoder-weights", "random", "--resize", "64", "--crop", "56",
        "--batch-size", "2", "--warmup-iters", "1"]
METRICS = {"i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_mvtec_tree(tmp_path_factory.mktemp("data"), categories=("bottle", "cable"))
    run_dir = tmp_path_factory.mktemp("run") / "r1"
    # fp32 training: eval below re-scores at another batch size, and with bf16-trained weights bf16 scoring's
    # rounding follows the batch (a metric moved by 1e-5 between batch 3 and 16; identical at the same batch)
    result = runner.invoke(app, ["train", "--data", str(root), *TINY, "--iters", "4", "--out", str(run_dir),
                                 "--device", "cpu", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    return root, run_dir, result.output


def test_train_writes_checkpoint_config_and_metrics(trained):
    root, run_dir, output = trained
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "config.json").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["iters"] == 4 and config["data"]["categories"] == ["bottle", "cable"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["categories"]) == {"bottle", "cable"}
    for values in [*metrics["categories"].values(), metrics["mean"]]:
        assert set(values) == METRICS
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert metrics["meta"]["random_encoder"] is True
    assert "I-AUROC" in output and "mean" in output
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert payload["meta"]["iterations"] == 4
    assert not any(k.startswith("encoder.") for k in payload["state_dict"])


def test_eval_reproduces_the_training_run_metrics(trained, tmp_path):
    root, run_dir, _ = trained
    result = runner.invoke(app, ["eval", "--ckpt", str(run_dir / "checkpoint.pt"), "--data", str(root),
                                 "--out", str(tmp_path), "--device", "cpu", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    ours = json.loads((tmp_path / "metrics.json").read_text())
    before = json.loads((run_dir / "metrics.json").read_text())
    assert_same_category_metrics(before, ours)
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert rows and list(rows[0]) == ["path", "category", "label", "score"]
    assert len(rows) == 2 * 4  # 2 categories x (2 good + 2 anomalous) test images
    assert {r["label"] for r in rows} == {"0", "1"}
    assert all(float(r["score"]) == float(r["score"]) for r in rows)


def test_eval_scores_equal_the_library(trained, tmp_path):
    """scores.csv holds the top-1% mean of each map, as the library computes it."""
    from inp_former.checkpoint import load_checkpoint
    from inp_former.data import AnomalyDataset, build_samples, image_transform
    from inp_former.inference import score_batch

    root, run_dir, _ = trained
    runner.invoke(app, ["eval", "--ckpt", str(run_dir / "checkpoint.pt"), "--out", str(tmp_path), "--device", "cpu",
                        "--precision", "fp32"])   # the reference path, as score_batch's default below
    rows = {r["path"]: float(r["score"]) for r in csv.DictReader((tmp_path / "scores.csv").open())}
    model, cfg, _ = load_checkpoint(run_dir / "checkpoint.pt")
    samples = build_samples("mvtec", root, "cable", "test")
    dataset = AnomalyDataset(samples, image_transform(cfg.model.resize, cfg.model.crop))
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    maps, scores, _ = score_batch(model.eval(), images, cfg)
    k = int(cfg.model.map_size ** 2 * cfg.model.top_fraction)
    torch.testing.assert_close(scores, maps.flatten(1).topk(k).values.mean(1))
    for sample, score in zip(samples, scores.tolist()):
        assert rows[sample.path] == pytest.approx(score, rel=1e-5)


def test_existing_run_directory_is_refused(trained):
    root, run_dir, _ = trained
    result = runner.invoke(app, ["train", "--data", str(root), *TINY, "--iters", "1", "--out", str(run_dir)])
    assert result.exit_code != 0 and "already holds a run" in result.output


@pytest.mark.parametrize("args, expected", [
    (["train", "--data", "/nonexistent/inpctl"], "--data /nonexistent/inpctl: no such directory"),
    (["train", "--data", ".", "--precision", "fp8"], "--precision 'fp8'"),
    (["eval", "--ckpt", "/nonexistent/ckpt.pt"], "--ckpt /nonexistent/ckpt.pt: no such file"),
])
def test_bad_input_gives_one_line_errors(args, expected):
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert expected in result.output
    assert "Traceback" not in result.output


def test_not_our_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    result = runner.invoke(app, ["eval", "--ckpt", str(path)])
    assert result.exit_code != 0 and "not an inpctl checkpoint" in result.output


def test_an_unexpected_error_is_one_line_with_the_traceback_saved(trained, tmp_path, monkeypatch):
    root, run_dir, _ = trained
    import inp_former.workflow

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(inp_former.workflow, "evaluate", broken)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    result = runner.invoke(app, ["eval", "--ckpt", str(run_dir / "checkpoint.pt"), "--out", str(tmp_path / "e"),
                                 "--device", "cpu"])
    assert result.exit_code == 1
    assert "internal error (RuntimeError: simulated bug)" in result.output
    assert "Traceback" not in result.output and "second line" not in result.output
    logs = list(tmp_path.glob("inpctl-error-*.txt"))
    assert len(logs) == 1 and "simulated bug" in logs[0].read_text()
