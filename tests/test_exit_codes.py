"""Issue 25 item 3: every exit code of docs/reliability.md's table ("Exit codes", the one place the
docs state them), each case run through the CLI; a predict run that scored nothing says what
happened; library notices reach the command line with its flags and Python callers with the
argument names. The model is a tiny untrained one (random ViT-S): nothing here measures INP-Former.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from inpctl.cli import app
from tests.predict_setup import save_tiny_checkpoint, write_image

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """A checkpoint without thresholds, an image, a text file and a path that does not exist."""
    folder = tmp_path_factory.mktemp("exit")
    notes = folder / "notes.txt"
    notes.write_text("not an image")
    return SimpleNamespace(ckpt=save_tiny_checkpoint(folder / "checkpoint.pt"), notes=notes, folder=folder,
                           image=write_image(folder / "a.png", 64, 64), missing=folder / "missing.png")


def _raise(error: BaseException):
    def job(*args, **kwargs):
        raise error
    return job


def _export_differs(*args, **kwargs) -> dict:
    """export_model's outcome with an ONNX model 1.0 away from torch."""
    from inp_former.config import RunConfig
    from tests.helpers import tiny_config

    info = SimpleNamespace(path=Path("m.onnx"), sidecar=Path("m.onnx.json"), opset=17, outputs={"embedding": (1, 8)})
    return {"info": info, "config": RunConfig(model=tiny_config()), "calibration": {},
            "check": {"map": 1.0, "score": 0.0, "embedding": 0.0}, "checked": True, "int8": None}


# (case, code, command line with {ckpt} {image} {notes} {missing} {folder}, library function replaced,
#  what the output says: parts separated by " | ")
CASES = [
    ("predict scored an image", 0, "predict {image} --ckpt {ckpt} --out {folder}/ok --device cpu", None,
     "evaluate it with inpctl eval --ckpt {ckpt} --save-thresholds | Scored 1 images (no threshold)"),
    ("an unknown flag", 2, "predict {image} --ckpt {ckpt} --no-such-flag", None, "No such option"),
    ("a flag out of range", 2, "predict {image} --ckpt {ckpt} --max-megapixels 0", None, "--max-megapixels"),
    ("every predict input missing", 2, "predict {missing} --ckpt {ckpt} --out {folder}/m --device cpu", None,
     "no such file or directory"),
    ("not a checkpoint", 2, "predict {image} --ckpt {notes} --out {folder}/c --device cpu", None,
     "not a readable checkpoint"),
    ("out of GPU memory", 2, "predict {image} --ckpt {ckpt} --out {folder}/g",
     ("predict_images", torch.cuda.OutOfMemoryError("CUDA out of memory")), "lower --batch-size"),
    ("an internal error", 1, "predict {image} --ckpt {ckpt} --out {folder}/i",
     ("predict_images", RuntimeError("simulated bug")), "internal error (RuntimeError: simulated bug)"),
    ("a torchrun process failed", 1, "predict {image} --ckpt {ckpt} --out {folder}/d",
     ("predict_images", "distributed"), "rank 1: simulated"),
    ("the ONNX check failed", 1, "export --ckpt {ckpt} --out {folder}/m.onnx", ("export_model", _export_differs),
     "the ONNX model differs from torch"),
    ("Ctrl-C", 130, "predict {image} --ckpt {ckpt} --out {folder}/k", ("predict_images", KeyboardInterrupt()),
     "error: interrupted"),
    ("SIGTERM while training", 143, "train --data {folder}/data --out {folder}/run --device cpu",
     ("train_run", "sigterm"), "continue with: inpctl train --resume"),
]


@pytest.mark.parametrize("case, code, command, replaced, says", CASES, ids=[c[0] for c in CASES])
def test_each_exit_code_as_the_docs_state_it(files, monkeypatch, case, code, command, replaced, says):
    import inp_former.workflow as workflow
    from inp_former.errors import DistributedError, TrainingInterrupted

    if replaced is not None:
        name, behaviour = replaced
        if behaviour == "distributed":
            behaviour = _raise(DistributedError(1, "simulated"))
        elif behaviour == "sigterm":
            behaviour = _raise(TrainingInterrupted("interrupted at iteration 1 of 3: the training state is saved in "
                                                   f"{files.folder}/run/last.pt", signal.SIGTERM,
                                                   str(files.folder / "run" / "last.pt")))
        elif isinstance(behaviour, BaseException):
            behaviour = _raise(behaviour)
        monkeypatch.setattr(workflow, name, behaviour)
    if case == "SIGTERM while training":
        from tests.datagen import make_mvtec_tree

        make_mvtec_tree(files.folder / "data", categories=("bottle",), n_train=2, n_test_good=1, n_test_bad=1)
    args = command.format(**vars(files)).split()
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    text = " ".join(result.output.split())
    assert all(part in text for part in says.format(**vars(files)).split(" | ")), result.output
    assert "Traceback" not in result.output and " save_thresholds" not in result.output


def test_the_docs_state_these_codes_once():
    """The table in docs/reliability.md lists exactly the codes tested above, and no other doc states one."""
    from inpctl.helpers import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_SIGINT

    text = (REPO / "docs" / "reliability.md").read_text()
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    codes = {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    assert codes == {c[1] for c in CASES} == {0, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_SIGINT, 128 + signal.SIGTERM}
    stated = re.compile(r"\bexit(?:s| code)? \(?(?:with )?\d+\b|\(exit \d+")
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        body = doc.read_text()
        if doc.name == "reliability.md":
            body = body.replace(table, "")
        assert not stated.search(body), (doc.name, stated.search(body).group(0))


def test_a_real_process_exits_2_for_a_missing_input(files):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ran = subprocess.run([sys.executable, "-m", "inpctl", "predict", str(files.missing), "--ckpt", str(files.ckpt),
                          "--out", str(files.folder / "real"), "--device", "cpu"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert f"error: {files.missing}: no such file or directory" in ran.stderr


def test_nothing_scored_says_so_and_claims_no_overlays(files):
    """A text file alone: exit 2 (bad input, as in the table), with what happened instead of overlays."""
    out = files.folder / "text-only"
    result = runner.invoke(app, ["predict", str(files.notes), "--ckpt", str(files.ckpt), "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"skipped: {files.notes}: not a readable image" in text
    assert text.endswith("error: nothing scored: 1 input skipped (1 not a readable image)")
    assert "overlays" not in text and "Scored" not in text and not (out / "overlays").exists()


# --- library notices: flags on the command line, argument names in Python ------------------------

def test_the_no_threshold_notice_keeps_the_argument_name_in_python(files):
    """(On the command line the first case of the table shows it as inpctl eval --ckpt CKPT --save-thresholds.)"""
    from inp_former.workflow import Notice, Reporter, predict_images

    class Collect(Reporter):
        def __init__(self):
            self.messages = []

        def message(self, text):
            self.messages.append(text)

    reporter = Collect()
    predict_images(files.ckpt, [files.image], files.folder / "api", reporter=reporter, device="cpu")
    notice = next(m for m in reporter.messages if "no threshold" in m)
    assert isinstance(notice, Notice) and " save_thresholds" in notice and "--save-thresholds" not in notice


def test_the_reporter_renders_a_notice_with_the_running_commands_flags(capsys):
    from inp_former.workflow import Notice
    from inpctl.helpers import RichReporter, as_flags, run

    notice = Notice("warning: skipped; raise max_megapixels or give checkpoint", names=("max_megapixels", "checkpoint"))
    run(lambda: RichReporter().message(notice))
    assert "warning: skipped; raise --max-megapixels or give --ckpt" in capsys.readouterr().err
    run(lambda: RichReporter().message(notice), flags={"checkpoint": "--model"})
    assert "or give --model" in capsys.readouterr().err
    assert str(notice) == "warning: skipped; raise max_megapixels or give checkpoint"   # Python keeps the names
    assert as_flags("raise max_megapixels", ["max_megapixels"]) == "raise --max-megapixels"
