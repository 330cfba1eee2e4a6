"""Artifacts a user can trust: evaluating never rewrites a checkpoint, the encoder a checkpoint was
trained with is enforced everywhere, Ctrl-C keeps the work, the demo obeys its flags, and outputs
are named so that a picture is found by its image."""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from inpctl.cli import app
from tests.datagen import make_mvtec_tree
from tests.helpers import one_thread

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
TINY = ["--encoder", "small", "--encoder-weights", "random", "--resize", "64", "--crop", "56", "--batch-size", "2",
        "--warmup-iters", "1", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", INPCTL_PROGRESS_SECONDS="0")
    env.update(extra)
    return env


def other_vit_weights(path: Path) -> Path:
    """A valid ViT-S weight file (timm's naming, all 12 blocks), but not the weights the test models
    were trained with (their random ViT-S comes from seed 0)."""
    import timm

    torch.manual_seed(123)
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0)
    torch.save(vit.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_mvtec_tree(tmp_path_factory.mktemp("data"), categories=("bottle", "cable"), n_train=6)


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory) -> Path:
    """A finished multi-class run whose checkpoint holds thresholds from train's own evaluation."""
    out = tmp_path_factory.mktemp("run") / "r"
    result = invoke("train", "--data", data_root, *TINY, "--iters", "3", "--out", out)
    assert result.exit_code == 0, result.output
    assert "calibration" in torch.load(out / "checkpoint.pt", weights_only=True)["meta"]
    return out


# --- 1. eval leaves the checkpoint alone --------------------------------------------------------

def test_eval_leaves_the_checkpoint_byte_for_byte_unchanged(run_dir, tmp_path):
    ckpt = run_dir / "checkpoint.pt"
    before = digest(ckpt)
    result = invoke("eval", "--ckpt", ckpt, "--categories", "bottle", "--out", tmp_path / "e", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert digest(ckpt) == before
    thresholds = json.loads((tmp_path / "e" / "thresholds.json").read_text())
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert set(thresholds["categories"]) == {"bottle"}
    assert metrics["meta"]["calibration"] == thresholds
    assert "Stored" not in result.output


def test_save_thresholds_merges_per_category_and_says_what_changed(run_dir, tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes((run_dir / "checkpoint.pt").read_bytes())
    stored = torch.load(ckpt, weights_only=True)["meta"]["calibration"]["decoder"]
    assert set(stored["categories"]) == {"bottle", "cable"}
    result = invoke("eval", "--ckpt", ckpt, "--categories", "bottle", "--out", tmp_path / "e", "--device", "cpu",
                    "--save-thresholds")
    assert result.exit_code == 0, result.output
    merged = torch.load(ckpt, weights_only=True)["meta"]["calibration"]["decoder"]
    assert set(merged["categories"]) == {"bottle", "cable"}            # cable was not evaluated: kept
    assert merged["categories"]["cable"] == stored["categories"]["cable"]
    assert merged["image_threshold"] == stored["image_threshold"]      # a pooled value of 1 of 2 categories: kept
    assert "Stored the thresholds in" in result.output and "pooled thresholds kept" in " ".join(result.output.split())


def test_eval_takes_a_multi_class_run_directory(run_dir, tmp_path):
    result = invoke("eval", "--ckpt", run_dir, "--out", tmp_path / "e", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["meta"]["checkpoint"] == str(
        run_dir / "checkpoint.pt")


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_another_encoder_is_refused_everywhere_naming_both(run_dir, data_root, tmp_path, command):
    other = other_vit_weights(tmp_path / "other-encoder.pt")
    args = {"eval": ["eval", "--ckpt", run_dir / "checkpoint.pt", "--out", tmp_path / "e"],
            "predict": ["predict", data_root / "bottle" / "test", "--ckpt", run_dir / "checkpoint.pt",
                        "--out", tmp_path / "p"],
            "export": ["export", "--ckpt", run_dir / "checkpoint.pt", "--out", tmp_path / "m.onnx", "--no-check"]}
    device = ["--device", "cpu"] if command != "export" else []
    result = invoke(*args[command], "--encoder-weights", other, *device)
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert "is not the one it was trained with" in line and f"file {other}" in line and "random initialisation" in line
    assert "Traceback" not in result.output


def test_allowing_the_mismatch_marks_the_metrics(run_dir, tmp_path):
    before = digest(run_dir / "checkpoint.pt")
    weights = other_vit_weights(tmp_path / "w.pt")
    result = invoke("eval", "--ckpt", run_dir / "checkpoint.pt", "--encoder-weights", weights,
                    "--allow-encoder-mismatch", "--out", tmp_path / "e", "--device", "cpu")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "e" / "metrics.json").read_text())["meta"]
    assert meta["encoder_mismatch"]["loaded"] == f"file {weights}"
    assert digest(run_dir / "checkpoint.pt") == before


# --- 2. Ctrl-C keeps the work -------------------------------------------------------------------

def _train_process(data_root: Path, out: Path, iters: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "inpctl", "train", "--data", str(data_root), *TINY, "--iters",
                             str(iters), "--checkpoint-every", "0", "--no-eval", "--out", str(out)],
                            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_iteration(process: subprocess.Popen, iteration: int, limit: float = 600) -> list[str]:
    """Read progress lines until ``train: <iteration>/`` (plain lines: not a terminal)."""
    lines, deadline = [], time.monotonic() + limit
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(rf"train: {iteration}/", line):
            return lines
    raise AssertionError("no such progress line:\n" + "".join(lines))


SIGNAL_ITERS = 6


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory) -> Path:
    """The run the interrupted ones are compared with, made once for both signals (read only), in
    this process at the cut runs' one thread (OMP_NUM_THREADS=1): the same weights, to the bit."""
    out = tmp_path_factory.mktemp("uninterrupted") / "full"
    with one_thread():
        result = invoke("train", "--data", data_root, *TINY, "--iters", SIGNAL_ITERS, "--checkpoint-every", "0",
                        "--no-eval", "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("signal_number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_resumable_state_and_resuming_gives_the_uninterrupted_weights(
        data_root, uninterrupted, tmp_path, signal_number, code):
    iters = SIGNAL_ITERS
    stop_at = random.Random().randint(1, iters - 2)  # any iteration before the last
    process = _train_process(data_root, tmp_path / "cut", iters)
    _wait_for_iteration(process, stop_at)
    process.send_signal(signal_number)
    rest, _ = process.communicate(timeout=600)
    assert process.returncode == code, rest
    assert f"inpctl train --resume {tmp_path / 'cut'}" in " ".join(rest.split())
    assert (tmp_path / "cut" / "last.pt").is_file() and not (tmp_path / "cut" / "checkpoint.pt").exists()
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["iteration"]
    assert stop_at <= saved < iters
    # resumed in this process, at the cut run's one thread, as the uninterrupted run was made
    with one_thread():
        resumed = invoke("train", "--resume", tmp_path / "cut", "--no-eval")
    assert resumed.exit_code == 0, resumed.output
    a = torch.load(uninterrupted / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_ctrl_c_aborts_at_once(data_root, tmp_path):
    process = _train_process(data_root, tmp_path / "cut", 200)
    _wait_for_iteration(process, 1)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    assert time.monotonic() - started < 60


def test_resume_refuses_flags_it_would_ignore(tmp_path):
    result = invoke("train", "--resume", tmp_path, "--epochs", "5", "--lr", "0.1", "--iters", "9")
    assert result.exit_code == 2
    assert "--epochs" in result.output and "--lr" in result.output and "saved config" in result.output
    assert "--iters" not in result.output   # it extends the run (tests/test_reliability.py)


# --- 3. the demo obeys its flags ----------------------------------------------------------------

def test_the_demo_applies_every_flag_given(data_root, tmp_path, monkeypatch):
    from inp_former import demo
    from inp_former.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    tiny = RunConfig(model=ModelConfig(encoder="small", encoder_weights="random", resize=64, crop=56),
                     train=TrainConfig(iters=200, batch_size=4, warmup_iters=20),
                     data=DataConfig(root=str(data_root)))
    monkeypatch.setattr(demo, "demo_config", lambda seed=1: (tiny, "tiny stand-in for the demo"))
    result = invoke("train", "--iters", "2", "--batch-size", "2", "--lr", "0.01", "--no-eval",
                    "--out", tmp_path / "demo", "--device", "cpu")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "demo" / "config.json").read_text())["train"]
    assert (saved["iters"], saved["batch_size"], saved["lr"]) == (2, 2, 0.01)
    assert saved["warmup_iters"] < 2   # a short run still decays: the demo's 20 warm-up steps shrink
    refused = invoke("train", "--dataset", "visa", "--out", tmp_path / "x")
    assert refused.exit_code == 2 and "--dataset" in refused.output


# --- 5. predict names ---------------------------------------------------------------------------

def test_predict_keeps_relative_paths_and_names_a_missing_file(run_dir, data_root, tmp_path):
    good, bad = data_root / "bottle" / "test" / "good" / "000.png", data_root / "bottle" / "test" / "defect" / "000.png"
    result = invoke("predict", good, bad, "--ckpt", run_dir / "checkpoint.pt", "--out", tmp_path / "p",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    overlays = sorted(p.relative_to(tmp_path / "p" / "overlays").as_posix()
                      for p in (tmp_path / "p" / "overlays").rglob("*.png"))
    assert overlays == ["defect/000.png", "good/000.png"]
    missing = invoke("predict", tmp_path / "nope.png", "--ckpt", run_dir / "checkpoint.pt", "--out", tmp_path / "q",
                     "--device", "cpu")
    assert missing.exit_code == 2 and "nope.png: no such file" in missing.output


# --- 7. help at 80 columns ----------------------------------------------------------------------

@pytest.mark.parametrize("command", [["train"], ["eval"], ["predict"], ["export"], ["bench", "quality"]])
def test_help_is_readable_in_80_columns(command):
    result = runner.invoke(app, [*command, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "…" not in result.output and "<bool>" not in result.output


# --- 8. the HTML report reads well --------------------------------------------------------------

def test_report_metadata_is_readable_and_the_axis_labels_fit():
    from inp_former.evaluate import pixel_metrics_meta
    from inp_former.report import meta_text
    from inp_former.visualize import density_svg

    assert meta_text("random_encoder", False) == "no" and meta_text("random_encoder", True) == "yes"
    exact = meta_text("pixel_metrics", pixel_metrics_meta({}, 1 << 24, 1 << 20))
    binned = meta_text("pixel_metrics", pixel_metrics_meta(
        {"bottle": {"pixels": 9, "error_bounds": {"p_auroc": 1e-5, "p_ap": 0.0, "p_f1max": 0.0, "aupro": 0.0}}},
        8, 1 << 20))
    assert exact.startswith("exact") and binned.startswith("binned for bottle")
    assert not any(c in exact + binned for c in "{}[]'")
    svg = density_svg({"edges": [0.0, 0.5, 1.0, 1.5], "normal": [1, 2, 1], "anomalous": [0, 1, 2]}, width=420)
    ticks = re.findall(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="(\w+)">([\d.e+-]+)</text>', svg)
    x, anchor, _ = ticks[-1]
    assert anchor == "end" and float(x) <= 420   # the last label ends at its tick, inside the picture
