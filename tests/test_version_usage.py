"""Issue 25, item 5: ``inpctl --version`` (also in ``--help``) from the package's one version, and a
usage line for ``predict`` that reads like usage lines do."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import inp_former
from inpctl.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def test_version_flag_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"inpctl {inp_former.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", inp_former.__version__)


def test_help_shows_the_version_and_the_flag():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert f"Version {inp_former.__version__}." in result.output
    assert "--version" in result.output


def test_setup_py_takes_the_version_from_the_package():
    assert "version=VERSION" in (REPO / "setup.py").read_text()   # no second literal to drift
    built = subprocess.run([sys.executable, "setup.py", "--version"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip().splitlines()[-1] == inp_former.__version__


def test_predict_usage_names_its_inputs_plainly():
    result = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "80"}, prog_name="inpctl")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Usage: inpctl predict [OPTIONS] INPUTS..."
    row = next(line for line in lines if line.strip().startswith("INPUTS..."))
    assert "Images and/or folders" in row and "<" not in row   # no type such as <list[Path]>
    assert "{inputs}" not in result.output and "list[Path]" not in result.output
    assert max(len(line) for line in lines) <= 80
