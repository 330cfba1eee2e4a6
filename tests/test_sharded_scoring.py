"""Work over several processes (torchrun, gloo on CPU) gives the files of one process: eval and
predict sharded (issue 22), train with DDP, and the library in a process group of the caller's.

The comparisons share one torchrun launch of two CPU processes (tests/torchrun_jobs.py; a launch
costs about 9 s of CPU before any work), in which each process runs, one after the other, the real
CLI's train twice (fp32 DDP against one process; the defaults, then the evaluation at the end),
eval, predict --masks and predict --resume, the library in a group the script made (a TCP store on
rank 0, torchrun's variables hidden), and an eval that fails. So each process also joins a new
group per job (with torch's default store prefix the second group failed to connect). A job that
ends otherwise than expected ends its process, and torchrun then stops the other. Each test compares one job's files with one process's: an uneven split (image and
batch counts not divisible by 2), a category with a single test image, one binned category. The run
that --resume finishes was killed, before, in a launch of its own. Tiny random ViT-S models: the
numbers measure nothing about INP-Former, only that the processes agree.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from inpctl.cli import app
from tests.datagen import make_mvtec_tree
from tests.helpers import built_once, one_thread
from tests.predict_setup import write_image

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
# bottle: 5 test images (3 batches of 2 -> 1 + 2), binned (5 x 32 x 32 pixels > EXACT); screw: 3 (exact,
# one batch each); cable: a single test image (rank 0 gets no batch of it)
COUNTS = {"bottle": (2, 3), "screw": (1, 2), "cable": (0, 1)}
EXACT = "4000"
EVAL = ["--device", "cpu", "--batch-size", "2", "--exact-pixels", EXACT]
TINY = ["--encoder", "small", "--encoder-weights", "random", "--resize", "64", "--crop", "56", "--warmup-iters", "1",
        "--device", "cpu"]
# DDP against one process. fp32: the tolerance below is fp32 rounding (the training default, auto, is
# bf16 on a CPU with native bf16). Global batch 4 = 2 per process; --eps: see
# test_two_processes_train_like_one.
TRAIN = [*TINY, "--batch-size", "4", "--iters", "3", "--eps", "1e-6", "--checkpoint-every", "2", "--precision", "fp32"]
DDP_ATOL = 1e-6
LAUNCH_SECONDS = 420      # a torchrun of 2 processes on the shared 2-core machine, start to end
STOP_SECONDS = 60         # from a failure to every process gone


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["OMP_NUM_THREADS"] = "1"   # what torchrun gives each of several processes
    return env


def _launch(log: Path, *command: object) -> subprocess.Popen:
    """``torchrun --nproc-per-node 2 --standalone COMMAND...`` in a session of its own (so that
    :func:`_stop` reaches its workers too), its output to ``log``: a file, not a pipe, as nobody
    reads while it runs."""
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                 "--standalone", *map(str, command)], env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(launcher: subprocess.Popen, seconds: float) -> bool:
    """Wait up to ``seconds`` for the launch to end; past that, kill it and its workers. True if it
    ended by itself."""
    try:
        launcher.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        return False


def _invoke(*args: object):
    with one_thread():
        result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _without(payload: dict, *names: str) -> dict:
    """A JSON payload without the keys ``names`` (at any depth): timestamps and process counts."""
    if isinstance(payload, dict):
        return {k: _without(v, *names) for k, v in payload.items() if k not in names}
    if isinstance(payload, list):
        return [_without(v, *names) for v in payload]
    return payload


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the shared launch ---------------------------------------------------------------------------

def _build(folder: Path) -> None:
    """The data, an untrained checkpoint, the same with stored thresholds, predict's inputs, and
    the one launch that runs every compared job (its files under folder/launch)."""
    from inp_former.checkpoint import save_checkpoint
    from inp_former.config import DataConfig, RunConfig
    from tests.helpers import tiny_model

    data = folder / "data"
    for seed, (category, (good, bad)) in enumerate(COUNTS.items()):
        make_mvtec_tree(data, categories=(category,), n_train=2, n_test_good=good, n_test_bad=bad, seed=seed)
    # an untrained tiny model (random ViT-S, 64 -> 56 px, 32 x 32 maps)
    model = tiny_model()
    save_checkpoint(folder / "checkpoint.pt", model,
                    RunConfig(model=model.cfg, data=DataConfig(root=str(data), categories=tuple(COUNTS))))
    # stored thresholds (per category), so that predictions are labelled
    (folder / "calibrated").mkdir()
    calibrated = folder / "calibrated" / "checkpoint.pt"
    shutil.copy(folder / "checkpoint.pt", calibrated)
    _invoke("eval", "--ckpt", calibrated, "--out", folder / "calibrated" / "eval", "--device", "cpu",
            "--save-thresholds")
    # predict's inputs: 11 images (a wide and a tall one among them: masks at their own sizes) and an
    # unreadable file (batches of 3: 4 batches, 2 + 2), plus a missing one
    inputs = folder / "inputs"
    for category in COUNTS:
        shutil.copytree(data / category / "test", inputs / category)
    write_image(inputs / "bottle" / "wide.png", 100, 80, seed=1)
    write_image(inputs / "cable" / "tall.png", 60, 90, seed=2)
    (inputs / "screw" / "zz_broken.png").write_bytes(b"not an image")
    # a corrupt test image in rank 1's share of an evaluation
    shutil.copytree(data, folder / "broken")
    _broken_image(folder).write_bytes(b"not an image")

    killed = _kill_rank_1_of_a_predict(folder)

    out = folder / "launch"
    jobs = [{"name": "train", "inpctl": ["train", "--data", data, *TRAIN, "--no-eval", "--out", out / "train"]},
            {"name": "train-eval", "inpctl": ["train", "--data", data, *TINY, "--batch-size", "2", "--iters", "2",
                                              "--eval-batch-size", "2", "--out", out / "train-eval"]},
            {"name": "eval", "inpctl": ["eval", "--ckpt", folder / "checkpoint.pt", "--out", out / "eval", *EVAL]},
            {"name": "predict", "inpctl": ["predict", *_predict_inputs(folder), "--ckpt", calibrated,
                                           "--device", "cpu", "--batch-size", "3", "--masks",
                                           "--out", out / "predict"]},
            *([{"name": "resume", "inpctl": ["predict", *killed, "--out", folder / "killed", "--resume"]}]
              if killed else []),
            {"name": "library", "library": [out / "library", folder / "checkpoint.pt", _free_port()]},
            {"name": "failing", "expect": 1, "inpctl": ["eval", "--ckpt", folder / "checkpoint.pt", "--data",
                                                        folder / "broken", "--out", out / "failing", *EVAL]}]
    spec = folder / "jobs.json"
    spec.write_text(json.dumps({"logs": str(out / "logs"), "jobs": jobs}, default=str))
    launcher = _launch(folder / "launch.log", REPO / "tests" / "torchrun_jobs.py", spec)
    ended = _stop(launcher, LAUNCH_SECONDS)
    if not ended or launcher.returncode != 0:
        unfinished = [job["name"] for job in jobs if not (out / "logs" / f"{job['name']}.rank0.json").exists()
                      or not (out / "logs" / f"{job['name']}.rank1.json").exists()]
        logs = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in sorted((out / "logs").glob("*.log")))
        raise AssertionError(f"the launch {'ended with ' + str(launcher.returncode) if ended else 'timed out'}; "
                             f"jobs without a status on both ranks: {unfinished}\n{logs}\n--- torchrun\n"
                             + (folder / "launch.log").read_text()[-3000:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MANY = 16   # images; batches of 2: 8 batches, rank 1 has batches 4..7


def _workers(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (its children), from their environment."""
    found = {}
    for pid in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(pid)
    return found


def _kill_rank_1_of_a_predict(folder: Path) -> list[object]:
    """A predict launch over 16 noise images of 480 x 480 (reading them makes it last long enough)
    into folder/killed, rank 1 killed with SIGKILL once it has written its first batch. What
    happened goes to folder/killed.json for the test; returns predict's arguments, for the resume
    (none where /proc cannot tell torchrun's workers apart, or where the kill went wrong)."""
    if not Path("/proc/self/task").is_dir():
        return []
    images = folder / "many"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(MANY):
        Image.fromarray(rng.integers(0, 256, (480, 480, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
    args = [images, "--ckpt", folder / "checkpoint.pt", "--device", "cpu", "--batch-size", "2"]
    part, log = folder / "killed", folder / "killed.log"
    facts: dict = {"killed": False}
    launcher = _launch(log, "-m", "inpctl", "predict", *args, "--out", part)
    try:
        deadline, batches = time.monotonic() + LAUNCH_SECONDS, MANY // 2
        rank_1_wrote = False   # rank 1 has the second half of the batches
        while not rank_1_wrote and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
            rank_1_wrote = any(int(p.stem.split("-")[1]) >= batches // 2
                               for p in (part / ".partial").glob("batch-*.json"))
        if rank_1_wrote and launcher.poll() is None:
            os.kill(_workers(launcher)[1], signal.SIGKILL)
            facts["killed"] = True
    except Exception as exc:   # for the test to report: the other jobs of the launch do not need this one
        facts["error"] = f"{type(exc).__name__}: {exc}"
    killed = time.monotonic()
    facts["stopped"] = _stop(launcher, STOP_SECONDS)
    facts.update({"returncode": launcher.returncode, "seconds_to_stop": time.monotonic() - killed,
                  "report": log.read_text(),   # torchrun's report names the rank and the cause
                  "finished_files": [name for name in ("predictions.csv", "predictions.json")
                                     if (part / name).exists()],
                  "batches_written": len(list((part / ".partial").glob("batch-*.json")))})
    (folder / "killed.json").write_text(json.dumps(facts))
    return args if facts["killed"] and facts["stopped"] else []


def _predict_inputs(folder: Path) -> list[Path]:
    """predict's inputs in the shared folder: the folder of images and a file that does not exist."""
    return [folder / "inputs", folder / "missing.png"]


def _broken_image(folder: Path) -> Path:
    return folder / "broken" / "screw" / "test" / "good" / "000.png"   # screw: 3 images, batch 2 -> rank 1's batch


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "torchrun-launch", _build)


def _job(shared: Path, name: str, status: int = 0, within: float = LAUNCH_SECONDS) -> list[str]:
    """What each process printed for the job ``name`` (rank 0, rank 1); both must have ended with
    ``status`` within ``within`` seconds."""
    logs = shared / "launch" / "logs"
    printed = [(logs / f"{name}.rank{rank}.log").read_text() for rank in (0, 1)]
    outcomes = [json.loads((logs / f"{name}.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [o["status"] for o in outcomes] == [status, status], "\n".join(text[-3000:] for text in printed)
    assert max(o["seconds"] for o in outcomes) < within
    return printed


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_every_job_of_the_launch_ran_sharded_in_a_group_of_its_own(shared):
    """Jobs in each process, one after the other, each ending with 0 on both: a command's group is
    destroyed at its end, so each later one joined a new group (the library job's
    init_process_group too), and the evaluations ran over both processes."""
    for name in ("train", "train-eval", "eval", "predict", "library"):   # resume, failing: their tests below
        _job(shared, name)
    launch = shared / "launch"
    for metrics in (launch / "train-eval" / "metrics.json", launch / "eval" / "metrics.json"):
        assert json.loads(metrics.read_text())["meta"]["processes"] == 2


# --- eval ----------------------------------------------------------------------------------------

def test_two_processes_evaluate_like_one(shared, tmp_path):
    one, two = tmp_path / "one", shared / "launch" / "eval"
    _invoke("eval", "--ckpt", shared / "checkpoint.pt", "--out", one, *EVAL)
    printed = _job(shared, "eval")
    assert [_flat(text).count("Wrote ") for text in printed] == [1, 0]   # rank 0 alone prints the table and the files

    assert (two / "scores.csv").read_bytes() == (one / "scores.csv").read_bytes()   # same rows, order, scores
    ours, reference = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert ours["meta"]["processes"] == 2 and reference["meta"]["processes"] == 1
    assert _without(ours, "processes", "computed_at") == _without(reference, "processes", "computed_at")
    pixel = ours["meta"]["pixel_metrics"]
    assert list(pixel["binned_categories"]) == ["bottle"] and pixel["max_error_bounds"]["p_auroc"] > 0
    assert _without(json.loads((two / "thresholds.json").read_text()), "computed_at") == \
        _without(json.loads((one / "thresholds.json").read_text()), "computed_at")
    rows = (two / "scores.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows].count("cable") == 1 and len(rows) == sum(map(sum, COUNTS.values()))


# --- predict -------------------------------------------------------------------------------------

def test_two_processes_predict_and_write_masks_like_one(shared, tmp_path):
    """11 images and an unreadable file in batches of 3 (4 batches: 2 + 2), plus a missing input."""
    one, two = tmp_path / "one", shared / "launch" / "predict"
    _invoke("predict", *_predict_inputs(shared), "--ckpt", shared / "calibrated" / "checkpoint.pt", "--device",
            "cpu", "--batch-size", "3", "--masks", "--out", one)
    printed = _job(shared, "predict")
    assert [_flat(text).count("Scored 11 images") for text in printed] == [1, 0]

    assert (two / "predictions.csv").read_bytes() == (one / "predictions.csv").read_bytes()
    ours, reference = (json.loads((d / "predictions.json").read_text()) for d in (two, one))
    assert _without(ours, "written_at") == _without(reference, "written_at")
    assert ours["counts"] == {"inputs": 13, "scored": 11, "skipped": 2, "anomalous": ours["counts"]["anomalous"],
                              "normal": 11 - ours["counts"]["anomalous"]}
    assert [s["path"] for s in ours["skipped"]] == [str(shared / "missing.png"),
                                                   str(shared / "inputs" / "screw" / "zz_broken.png")]
    overlays = _files(two / "overlays")
    assert len(overlays) == 11 and overlays == _files(one / "overlays")   # the same names, the same pictures
    masks = _files(two / "masks")   # the masks of both processes' images, bit for bit
    assert len(masks) == 11 and masks == _files(one / "masks")
    for name, size in (("bottle/wide.png", (100, 80)), ("cable/tall.png", (60, 90))):   # each input's own size
        assert Image.open(two / "masks" / "inputs" / name).size == size
    assert not (two / ".partial").exists()


# --- train ---------------------------------------------------------------------------------------

def test_two_processes_train_like_one(shared, tmp_path):
    """DDP over the 2 processes, global batch 4 = 2 per process, against 1 process with batch 4.

    Tolerance DDP_ATOL = 1e-6 (a few float32 ulps of the weights): the gradients agree up to summation
    order (~1e-6 relative). --eps 1e-6 keeps Adam's normalisation g / (|g| + eps) from magnifying that
    rounding on near-zero gradients: with the default 1e-10 such elements can differ by a fraction of
    the learning rate (about 5e-6 after 3 steps here), which is rounding, not a bug.
    """
    from inp_former.config import RunConfig
    from inp_former.model import INPFormer
    from inp_former.train import seed_everything

    printed = _job(shared, "train")
    assert [_flat(text).count("Trained 3 iterations") for text in printed] == [1, 0]   # rank 0 alone prints and writes
    _invoke("train", "--data", shared / "data", *TRAIN, "--no-eval", "--out", tmp_path / "one")

    payload = torch.load(shared / "launch" / "train" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert payload["meta"]["world_size"] == 2
    reference = torch.load(tmp_path / "one" / "checkpoint.pt", map_location="cpu", weights_only=True)["state_dict"]
    ours = payload["state_dict"]
    cfg = RunConfig.from_dict(payload["config"])
    seed_everything(cfg.train.seed)
    initial = INPFormer(cfg.model).trainable_state_dict()
    moved = max(float((reference[k] - initial[k]).abs().max()) for k in reference)
    assert moved > 100 * DDP_ATOL  # training changed the weights far more than the tolerance
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], rtol=0, atol=DDP_ATOL, msg=key)


def test_train_under_torchrun_evaluates_on_every_process(shared, tmp_path):
    """The training defaults (bf16 where the CPU has it), 1 image per process, then the evaluation."""
    run = shared / "launch" / "train-eval"
    printed = _job(shared, "train-eval")
    assert [_flat(text).count("Stored the thresholds") for text in printed] == [1, 0]
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["meta"]["processes"] == 2   # sharded over both, not rank 0 alone

    again = tmp_path / "again"   # one process, the same checkpoint and batch: the same files
    _invoke("eval", "--ckpt", run / "checkpoint.pt", "--out", again, "--device", "cpu", "--batch-size", "2")
    assert (run / "scores.csv").read_bytes() == (again / "scores.csv").read_bytes()
    alone = json.loads((again / "metrics.json").read_text())
    assert trained["categories"] == alone["categories"] and trained["mean"] == alone["mean"]
    assert trained["meta"]["pixel_metrics"] == alone["meta"]["pixel_metrics"]


# --- the library in a process group the caller made ----------------------------------------------

def test_library_under_a_process_group_of_the_callers(shared, tmp_path):
    from inp_former.workflow import evaluate_checkpoint

    _job(shared, "library")
    folder = shared / "launch" / "library"
    reports = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    with one_thread():
        alone = evaluate_checkpoint(shared / "checkpoint.pt", out_dir=tmp_path / "alone", device="cpu")
    for report in reports:   # every process returns the whole evaluation
        assert report["mean"] == pytest.approx(alone.result.mean, nan_ok=True, abs=1e-6)
        assert report["rows"] == len(alone.result.rows)
        assert report["given"] == "from rank 0"
    assert (folder / "eval" / "scores.csv").read_bytes() == (tmp_path / "alone" / "scores.csv").read_bytes()
    assert reports[0]["gathered"] == [0, 10] and reports[1]["gathered"] is None

    stall = reports[0]["stall"]
    assert stall["message"].startswith("rank 1: no progress for 1 s") and stall["seconds"] < 3
    failure, echo = reports[0]["failure"], reports[1]["failure"]
    assert failure == {**failure, "message": "rank 1: OSError: disk full", "rank": 1, "reported_elsewhere": False}
    assert echo["rank"] == 1 and echo["reported_elsewhere"] is True   # rank 0 printed it: rank 1 stays quiet
    assert max(failure["seconds"], echo["seconds"]) < 10


def test_a_failing_process_stops_all_with_one_line(shared):
    """A corrupt test image in rank 1's share: both processes stop the job (at once, not after the
    stall timeout), and one line, rank 0's, names rank 1 and the file."""
    printed = _job(shared, "failing", status=1, within=STOP_SECONDS)
    lines = [line for text in printed for line in _error_lines(text)]
    assert len(lines) == 1, printed
    assert lines[0].startswith("error: rank 1: ") and f"{_broken_image(shared)}: not a readable image" in lines[0]
    assert _error_lines(printed[0]) == lines
    out = shared / "launch" / "failing"
    assert not (out / "metrics.json").exists() and not (out / "scores.csv").exists()


# --- a process killed, and predict --resume -------------------------------------------------------

@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_killed_process_stops_the_run_and_resume_completes_it(shared, tmp_path):
    """Rank 1 of a predict launch killed once it had written its first batch (before the shared
    launch, whose resume job finishes the run). Without stored thresholds the overlay scale is the
    first batch's range: resumed or not, the same."""
    killed = json.loads((shared / "killed.json").read_text())
    assert killed["killed"] and "error" not in killed, (killed.get("error"), killed["report"][-3000:])
    assert killed["stopped"] and killed["returncode"] != 0 and killed["seconds_to_stop"] < STOP_SECONDS
    assert re.search(r"rank\s*:\s*1\b", killed["report"]) and "SIGKILL" in killed["report"], killed["report"][-3000:]
    assert not killed["finished_files"]
    assert 0 < killed["batches_written"] < MANY // 2, "killed too late: the run had finished"

    printed = _job(shared, "resume")
    taken = int(_flat(printed[0]).split("Resumed: ")[1].split()[0])
    assert 2 <= taken <= 2 * killed["batches_written"]   # whole batches of 2 whose results were written
    full, part = tmp_path / "full", shared / "killed"
    _invoke("predict", shared / "many", "--ckpt", shared / "checkpoint.pt", "--device", "cpu", "--batch-size", "2",
            "--out", full)
    assert (part / "predictions.csv").read_bytes() == (full / "predictions.csv").read_bytes()
    assert _without(json.loads((part / "predictions.json").read_text()), "written_at") == \
        _without(json.loads((full / "predictions.json").read_text()), "written_at")
    assert _files(part / "overlays") == _files(full / "overlays")
    assert not (part / ".partial").exists()


def test_resume_needs_the_output_folder():
    result = runner.invoke(app, ["predict", "x.png", "--ckpt", "ckpt.pt", "--resume"])
    assert result.exit_code == 2 and "error: --resume: give the --out folder" in result.output


def test_blocks_cover_the_items_in_order():
    from inp_former.distributed import block

    for count in range(0, 12):
        for world in range(1, 5):
            blocks = [block(count, r, world) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(count))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_accumulators_of_parts_combine_to_the_whole_stream():
    """Shares of a stream (one empty) combined equal one accumulator fed it all: exact and binned."""
    from inp_former.metrics import PixelMetricAccumulator

    rng = np.random.default_rng(3)
    maps = torch.from_numpy(rng.random((7, 16, 16)).astype(np.float32)) * 1.5
    masks = torch.zeros(7, 16, 16, dtype=torch.bool)
    masks[2:5, 3:9, 4:10] = True
    for exact_pixels in (7 * 256, 3 * 256):   # all exact; binned (the whole stream is over the limit)
        whole = PixelMetricAccumulator((0.0, 2.0), bins=64, exact_pixels=exact_pixels)
        for i in range(7):
            whole.update(masks[i:i + 1], maps[i:i + 1])
        parts = []
        for start, stop in ((0, 3), (3, 3), (3, 7)):
            part = PixelMetricAccumulator((0.0, 2.0), bins=64, exact_pixels=exact_pixels)
            for i in range(start, stop):
                part.update(masks[i:i + 1], maps[i:i + 1])
            parts.append(part)
        combined = PixelMetricAccumulator.combine(parts)
        assert combined.pixels_seen == whole.pixels_seen
        assert (combined._hist is None) == (whole._hist is None) == (exact_pixels == 7 * 256)
        assert combined.compute() == pytest.approx(whole.compute(), abs=1e-12)
        assert combined.error_bounds() == pytest.approx(whole.error_bounds(), abs=1e-12)
    with pytest.raises(ValueError, match="differ"):
        PixelMetricAccumulator.combine([PixelMetricAccumulator((0.0, 2.0)), PixelMetricAccumulator((0.0, 1.0))])
