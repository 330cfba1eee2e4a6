"""What a person reads: plain progress lines where no terminal shows a bar, tables within 80 columns."""
from __future__ import annotations

import io
import re
import time

import pytest
from typer.testing import CliRunner

from inpctl.cli import app
from inpctl.helpers import PlainProgress

runner = CliRunner()


def test_plain_progress_prints_iteration_fields_rate_and_eta():
    stream = io.StringIO()
    with PlainProgress(0.0, ("stats",), stream=stream) as progress:
        task = progress.add_task("train", total=10, stats="")
        for i in range(1, 4):
            time.sleep(0.01)
            progress.update(task, completed=i, stats=f"loss {1 / i:.4f}")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("train: 1/10  loss 1.0000")
    assert "eta" in lines[1]   # from the second update on, there is a rate to extrapolate
    assert re.search(r"train: 3/10  loss 0\.3333  [\d.]+/s  elapsed 0:00:0\d", lines[-1])
    assert "eta" not in lines[-1]   # the closing line


def test_plain_progress_is_quiet_between_its_intervals():
    stream = io.StringIO()
    with PlainProgress(3600.0, (), stream=stream) as progress:
        task = progress.add_task("eval", total=100)
        for _ in range(100):
            progress.advance(task)
    assert stream.getvalue().count("\n") == 1   # only the closing line


@pytest.mark.parametrize("command", [
    ["bench", "attention", "--n", "49", "--m", "3", "--c", "64", "--heads", "2", "--batch", "2", "--repeats", "2",
     "--device", "cpu"],
    ["bench", "scoring", "--batch", "2", "--grid", "7", "--channels", "32", "--image-size", "98", "--out-size", "64",
     "--repeats", "2", "--device", "cpu"],
])
def test_bench_tables_fit_80_columns(command):
    result = runner.invoke(app, command, terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└├"]
    assert table, result.output
    assert max(len(line) for line in table) <= 80
    assert "…" not in result.output
    # progress from the start (a first plain line before any row is timed), legends and fields only
    # for what is shown: on CPU no copy bandwidth (%bw, copy_gb_per_s) and no peak memory
    assert lines[0].startswith(f"bench {command[1]}: 0/")
    headers = {cell.strip() for line in table if line.startswith("┃") for cell in line.strip("┃").split("┃")}
    legends = [line.split(": ", 1)[0] for line in lines if line[:1] not in "┏┃┡│└├" and ": " in line]
    explained = [name for name in legends if name in headers or name.split(" / ")[0] in headers]
    assert "x ref" in explained and "GB/s" in explained
    assert "%bw" not in result.output and "copy_gb_per_s" not in result.output and "peak MB" not in result.output
    assert "None" not in result.output


def test_training_progress_in_a_log_shows_iteration_loss_images_per_second_and_eta(monkeypatch, capsys):
    import time

    import inpctl.helpers as helpers
    from inp_former.train import StepInfo

    monkeypatch.setattr(helpers, "PLAIN_PROGRESS_SECONDS", 0.0)
    with helpers.RichReporter().training("train") as on_step:
        for i in range(1, 4):
            time.sleep(0.01)
            on_step(StepInfo(i, 10, 0.5 / i, 0.0, 0.0, 1e-3, images=8))
    lines = capsys.readouterr().err.splitlines()
    assert re.search(r"^train: 3/10  loss 0\.1667  lr 1\.00e-03  [\d.]+ img/s  .*eta", lines[-2]), lines
