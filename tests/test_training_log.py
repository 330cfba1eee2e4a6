"""Issue 25, item 6: the training log a person plots (RUN_DIR/train_log.csv, TensorBoard events with
--tensorboard) and its loss curve in the evaluation report. CPU, tiny models with a random encoder."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from inp_former.train import LOG_COLUMNS, TRAIN_LOG, StepInfo, TrainingLog, read_train_log
from inpctl.cli import app
from tests.datagen import make_mvtec_tree

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
TINY = ["--encoder", "small", "--encoder-weights", "random", "--resize", "64", "--crop", "56", "--device", "cpu",
        "--batch-size", "2"]


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_mvtec_tree(tmp_path_factory.mktemp("data"), categories=("bottle",), n_train=8)


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory) -> Path:
    """A 5-iteration run (warm-up 2), not evaluated."""
    out = tmp_path_factory.mktemp("runs") / "run"
    result = _invoke("train", "--data", data_root, *TINY, "--iters", "5", "--warmup-iters", "2", "--no-eval",
                     "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_the_log_has_one_row_per_step_with_the_rate_each_step_used(run_dir):
    lines = (run_dir / TRAIN_LOG).read_text().splitlines()
    assert lines[0] == "iteration,loss,lr,seconds"
    rows = read_train_log(run_dir / TRAIN_LOG)
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4, 5]
    # the authors' schedule (lr 1e-3 -> 1e-4): linear warm-up over 2 steps, then a cosine over the other 3
    cosine = [1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + np.cos(np.pi * k / 3)) for k in range(3)]
    np.testing.assert_allclose([row["lr"] for row in rows], [0.0, 1e-3, *cosine], rtol=1e-12, atol=0)
    assert all(np.isfinite(row["loss"]) and row["loss"] > 0 for row in rows)
    seconds = [row["seconds"] for row in rows]
    assert seconds == sorted(seconds) and seconds[0] > 0


def test_rows_are_on_disk_while_the_run_goes_and_a_kill_keeps_them(data_root, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "inpctl", "train", "--data", str(data_root), *TINY,
                                "--iters", "500", "--no-eval", "--out", str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(read_train_log(out / TRAIN_LOG)) < 3:  # flushed per row: readable before the run ends
            assert process.poll() is None and time.monotonic() < deadline, "no rows while the run was going"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    text = (out / TRAIN_LOG).read_text()
    rows = read_train_log(out / TRAIN_LOG)
    assert text.endswith("\n") and len(text.splitlines()) == len(rows) + 1   # whole rows only
    assert [row["iteration"] for row in rows] == list(range(1, len(rows) + 1)) and len(rows) < 500


def test_a_resumed_log_drops_the_rows_past_the_saved_state_and_appends(tmp_path):
    with TrainingLog(tmp_path) as log:
        for i in range(1, 7):
            log.write(StepInfo(i, 10, 1.0 / i, 0.0, 0.0, 1e-3), seconds=float(i))
    with TrainingLog(tmp_path, resumed_at=4) as log:   # the state was saved at 4; 5 and 6 are done again
        for i in (5, 6, 7):
            log.write(StepInfo(i, 10, 0.5 / i, 0.0, 0.0, 1e-4), seconds=0.5)
    rows = read_train_log(tmp_path / TRAIN_LOG)
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert [row["loss"] for row in rows] == [1.0, 0.5, 1.0 / 3, 0.25, 0.1, 0.5 / 6, 0.5 / 7]   # exact (repr)
    assert [row["seconds"] for row in rows] == [1, 2, 3, 4, 4.5, 4.5, 4.5]   # carries on from row 4
    with TrainingLog(tmp_path) as log:   # a new run (e.g. --overwrite): a new log
        log.write(StepInfo(1, 10, 2.0, 0.0, 0.0, 0.0), seconds=1.0)
    assert [row["iteration"] for row in read_train_log(tmp_path / TRAIN_LOG)] == [1]


def test_a_row_cut_short_by_a_crash_is_left_out(tmp_path):
    (tmp_path / TRAIN_LOG).write_text(",".join(LOG_COLUMNS) + "\n1,0.9,0.0,0.5\n2,0.8,0.001,1.0\n3,0.7")
    assert [row["iteration"] for row in read_train_log(tmp_path / TRAIN_LOG)] == [1, 2]
    with TrainingLog(tmp_path, resumed_at=2) as log:
        log.write(StepInfo(3, 5, 0.6, 0.0, 0.0, 1e-3), seconds=0.25)
    assert (tmp_path / TRAIN_LOG).read_text().splitlines()[1:] == ["1,0.9,0.0,0.500", "2,0.8,0.001,1.000",
                                                                   "3,0.6,0.001,1.250"]


def test_only_the_writing_process_logs(data_root, tmp_path, monkeypatch):
    """Under torchrun only rank 0 writes: the other ranks' is_writer() is False."""
    from inp_former import distributed
    from inp_former.config import DataConfig, RunConfig, TrainConfig
    from inp_former.train import train
    from tests.helpers import tiny_config

    cfg = RunConfig(model=tiny_config(), train=TrainConfig(iters=2, batch_size=2, warmup_iters=1),
                    data=DataConfig(root=str(data_root)))
    monkeypatch.setattr(distributed, "is_writer", lambda: False)
    train(cfg, tmp_path / "other-rank", "cpu")
    assert not (tmp_path / "other-rank" / TRAIN_LOG).exists()
    monkeypatch.undo()
    train(cfg, tmp_path / "rank0", "cpu")
    assert len(read_train_log(tmp_path / "rank0" / TRAIN_LOG)) == 2


# --- TensorBoard --------------------------------------------------------------------------------

@contextlib.contextmanager
def _without_tensorboard():
    """As if the tensorboard package were not installed (whether it is or not)."""
    saved = {name: sys.modules.get(name) for name in ("tensorboard", "torch.utils.tensorboard")}
    sys.modules.update(dict.fromkeys(saved))   # None: an import of it fails
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_tensorboard_without_the_package_is_refused_with_the_install_command(data_root, tmp_path):
    with _without_tensorboard():
        result = _invoke("train", "--data", data_root, *TINY, "--iters", "2", "--no-eval", "--tensorboard",
                         "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --tensorboard"), result.output
    assert "pip install tensorboard" in lines[0]
    assert not (tmp_path / "run").exists()   # refused before anything ran


def test_tensorboard_events_hold_the_logged_steps(data_root, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = _invoke("train", "--data", data_root, *TINY, "--iters", "3", "--warmup-iters", "1", "--no-eval",
                     "--tensorboard", "--out", out)
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/mining", "train/coherence"} <= set(events.Tags()["scalars"])
    logged = read_train_log(out / TRAIN_LOG)
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    np.testing.assert_allclose([e.value for e in loss], [row["loss"] for row in logged], rtol=1e-6)


# --- the loss curve in the report ---------------------------------------------------------------

def test_eval_report_shows_the_loss_curve_of_the_run(run_dir, tmp_path):
    result = _invoke("eval", "--ckpt", run_dir, "--out", tmp_path / "eval", "--report", "--report-samples", "1",
                     "--device", "cpu")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "eval" / "report.html").read_text()
    section = text[text.index("<h2>Training loss</h2>"):]
    svg = section[section.index("<svg"):section.index("</svg>")]
    points = svg[svg.index('<polyline points="') + 18:].split('"')[0].split()
    assert len(points) == 5   # one point per logged step
    assert f"{run_dir / TRAIN_LOG}: 5 steps up to iteration 5" in section

    no_log = tmp_path / "copy"
    no_log.mkdir()
    (no_log / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
    result = _invoke("eval", "--ckpt", no_log, "--report", "--report-samples", "0", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "Training loss" not in (no_log / "report.html").read_text()


def test_loss_curve_svg_leaves_out_skipped_steps_and_thins_long_runs():
    from inp_former.visualize import loss_curve_svg

    def polyline(svg: str) -> list[str]:
        return svg[svg.index('<polyline points="') + 18:].split('"')[0].split()

    assert len(polyline(loss_curve_svg([1, 2, 3, 4], [1.0, float("nan"), 0.5, 0.4]))) == 3
    long = loss_curve_svg(range(1, 10_001), np.linspace(1, 0.1, 10_000), points=400)
    assert len(polyline(long)) == 400 and ">10000</text>" in long   # the axis spans every step
    assert "no finite losses" in loss_curve_svg([1], [float("inf")])
