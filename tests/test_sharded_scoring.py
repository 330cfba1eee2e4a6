"""Issue 22: eval and predict sharded over processes (torchrun, gloo on CPU) give the files of one process.

Two CPU processes through the real CLI against one process, file by file; an uneven split (image
and batch counts not divisible by 2), a category with a single test image, one binned category; a
process failing or killed mid-run; predict --resume; the evaluation at the end of train under
torchrun; and the library's collectives under a process group the caller initialised. Tiny random
ViT-S models: the numbers measure nothing about INP-Former, only that the processes agree.
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
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from inpctl.cli import app
from tests.datagen import make_mvtec_tree
from tests.helpers import one_thread

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
# bottle: 5 test images (3 batches of 2 -> 1 + 2), binned (5 x 32 x 32 pixels > EXACT); screw: 3 (exact,
# one batch each); cable: a single test image (rank 0 gets no batch of it)
COUNTS = {"bottle": (2, 3), "screw": (1, 2), "cable": (0, 1)}
EXACT = "4000"
EVAL = ["--device", "cpu", "--batch-size", "2", "--exact-pixels", EXACT]
LAUNCH_SECONDS = 300      # a torchrun of 2 processes on the shared 2-core machine, start to end
STOP_SECONDS = 60         # from a failure to every process gone


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["OMP_NUM_THREADS"] = "1"   # what torchrun gives each of several processes
    return env


def _torchrun(*args: object, timeout: float = LAUNCH_SECONDS) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                           "-m", "inpctl", *map(str, args)], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _torchrun_popen(log: Path, *args: object) -> subprocess.Popen:
    with log.open("w") as out:   # a file, not a pipe: nobody reads while it runs
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                 "--standalone", "-m", "inpctl", *map(str, args)], env=_env(), stdout=out,
                                stderr=subprocess.STDOUT)


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


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for seed, (category, (good, bad)) in enumerate(COUNTS.items()):
        make_mvtec_tree(root, categories=(category,), n_train=2, n_test_good=good, n_test_bad=bad, seed=seed)
    return root


@pytest.fixture(scope="module")
def checkpoint(data_root, tmp_path_factory) -> Path:
    """An untrained tiny model (random ViT-S, 64 -> 56 px, 32 x 32 maps) saved as a checkpoint."""
    from inp_former.checkpoint import save_checkpoint
    from inp_former.config import DataConfig, RunConfig
    from tests.helpers import tiny_model

    model = tiny_model()
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(path, model, RunConfig(model=model.cfg, data=DataConfig(root=str(data_root),
                                                                           categories=tuple(COUNTS))))
    return path


# --- eval ----------------------------------------------------------------------------------------

def test_two_processes_evaluate_like_one(checkpoint, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _invoke("eval", "--ckpt", checkpoint, "--out", one, *EVAL)
    ran = _torchrun("eval", "--ckpt", checkpoint, "--out", two, *EVAL)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert " ".join(ran.stdout.split()).count("Wrote ") == 1   # rank 0 alone prints the table and the files

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


TWO_EVALUATIONS = textwrap.dedent("""
    import sys
    from pathlib import Path

    from inp_former.workflow import evaluate_checkpoint

    checkpoint, out = sys.argv[1], Path(sys.argv[2])
    for name in ("first", "second"):   # each joins its own process group, one after the other
        evaluate_checkpoint(checkpoint, out_dir=out / name, device="cpu")
""")


def test_a_process_joins_a_second_group_for_a_second_job(checkpoint, tmp_path):
    """A script under torchrun that evaluates twice through the library: each evaluation joins a
    process group of its own, sharded over both processes, and the second gives the first's files
    (with torch's default store prefix the second group failed to connect)."""
    script = tmp_path / "twice.py"
    script.write_text(TWO_EVALUATIONS)
    ran = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          str(script), str(checkpoint), str(tmp_path)], env=_env(), capture_output=True, text=True,
                         timeout=LAUNCH_SECONDS)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    first, second = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("first", "second"))
    assert first["meta"]["processes"] == second["meta"]["processes"] == 2
    assert (tmp_path / "first" / "scores.csv").read_bytes() == (tmp_path / "second" / "scores.csv").read_bytes()
    assert _without(first, "computed_at") == _without(second, "computed_at")


def test_a_failing_process_stops_all_with_one_line(data_root, checkpoint, tmp_path):
    """A corrupt test image in rank 1's share: both processes stop, one line names rank 1 and the file."""
    broken = tmp_path / "data"
    shutil.copytree(data_root, broken)
    bad = broken / "screw" / "test" / "good" / "000.png"   # screw: 3 images, batch 2 -> the second batch, rank 1
    bad.write_bytes(b"not an image")
    start = time.monotonic()
    ran = _torchrun("eval", "--ckpt", checkpoint, "--data", broken, "--out", tmp_path / "out", *EVAL)
    assert ran.returncode != 0
    assert time.monotonic() - start < LAUNCH_SECONDS
    lines = _error_lines(ran.stdout + "\n" + ran.stderr)
    assert len(lines) == 1, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert lines[0].startswith("error: rank 1: ") and f"{bad}: not a readable image" in lines[0], lines
    assert not (tmp_path / "out" / "metrics.json").exists() and not (tmp_path / "out" / "scores.csv").exists()


# --- predict -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibrated(checkpoint, data_root, tmp_path_factory) -> Path:
    """The checkpoint with thresholds stored (per category), so that predictions are labelled."""
    path = tmp_path_factory.mktemp("calibrated") / "checkpoint.pt"
    shutil.copy(checkpoint, path)
    _invoke("eval", "--ckpt", path, "--out", path.parent / "eval", "--device", "cpu", "--save-thresholds")
    return path


def test_two_processes_predict_like_one(calibrated, data_root, tmp_path):
    """9 images and an unreadable file in batches of 3 (4 batches: 2 + 2), plus a missing input."""
    inputs = tmp_path / "inputs"
    for category in COUNTS:
        shutil.copytree(data_root / category / "test", inputs / category)
    (inputs / "screw" / "zz_broken.png").write_bytes(b"not an image")
    args = [inputs, tmp_path / "missing.png", "--ckpt", calibrated, "--device", "cpu", "--batch-size", "3"]
    one, two = tmp_path / "one", tmp_path / "two"
    _invoke("predict", *args, "--out", one)
    ran = _torchrun("predict", *args, "--out", two)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert " ".join(ran.stdout.split()).count("Scored 9 images") == 1

    assert (two / "predictions.csv").read_bytes() == (one / "predictions.csv").read_bytes()
    ours, reference = (json.loads((d / "predictions.json").read_text()) for d in (two, one))
    assert _without(ours, "written_at") == _without(reference, "written_at")
    assert ours["counts"] == {"inputs": 11, "scored": 9, "skipped": 2, "anomalous": ours["counts"]["anomalous"],
                              "normal": 9 - ours["counts"]["anomalous"]}
    assert [s["path"] for s in ours["skipped"]] == [str(tmp_path / "missing.png"),
                                                   str(inputs / "screw" / "zz_broken.png")]
    overlays = _files(two / "overlays")
    assert len(overlays) == 9 and overlays == _files(one / "overlays")   # the same names, the same pictures
    assert not (two / ".partial").exists()


MANY = 16   # images; batches of 2: 8 batches, rank 1 has batches 4..7


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """16 noise images of 480 x 480: reading them makes a run last long enough to be killed in."""
    folder = tmp_path_factory.mktemp("many") / "parts"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(MANY):
        Image.fromarray(rng.integers(0, 256, (480, 480, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def _workers(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (its children), from their environment."""
    found = {}
    for pid in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(pid)
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_killed_process_stops_the_run_and_resume_completes_it(checkpoint, many_images, tmp_path):
    """Without stored thresholds the overlay scale is the first batch's range: resumed or not, the same."""
    args = [many_images, "--ckpt", checkpoint, "--device", "cpu", "--batch-size", "2"]
    full, part = tmp_path / "full", tmp_path / "part"
    _invoke("predict", *args, "--out", full)

    log = tmp_path / "killed.log"
    launcher = _torchrun_popen(log, "predict", *args, "--out", part)
    deadline = time.monotonic() + LAUNCH_SECONDS
    batches = MANY // 2   # rank 1 has the second half; kill it once it has written its first one
    while not any(int(p.stem.split("-")[1]) >= batches // 2 for p in (part / ".partial").glob("batch-*.json")):
        assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.005)
    os.kill(_workers(launcher)[1], signal.SIGKILL)
    killed = time.monotonic()
    launcher.wait(timeout=STOP_SECONDS)
    assert launcher.returncode != 0 and time.monotonic() - killed < STOP_SECONDS
    report = log.read_text()   # torchrun's report names the rank and the cause
    assert re.search(r"rank\s*:\s*1\b", report) and "SIGKILL" in report, report[-3000:]
    assert not (part / "predictions.csv").exists() and not (part / "predictions.json").exists()
    written = sorted((part / ".partial").glob("batch-*.json"))
    assert 0 < len(written) < batches, "killed too late: the run had finished"

    resumed = _torchrun("predict", *args, "--out", part, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    taken = int(" ".join(resumed.stdout.split()).split("Resumed: ")[1].split()[0])
    assert 2 <= taken <= 2 * len(written)   # whole batches of 2 whose results were written
    assert (part / "predictions.csv").read_bytes() == (full / "predictions.csv").read_bytes()
    assert _without(json.loads((part / "predictions.json").read_text()), "written_at") == \
        _without(json.loads((full / "predictions.json").read_text()), "written_at")
    assert _files(part / "overlays") == _files(full / "overlays")
    assert not (part / ".partial").exists()


def test_resume_needs_the_output_folder():
    result = runner.invoke(app, ["predict", "x.png", "--ckpt", "ckpt.pt", "--resume"])
    assert result.exit_code == 2 and "error: --resume: give the --out folder" in result.output


# --- train ---------------------------------------------------------------------------------------

def test_train_under_torchrun_evaluates_on_every_process(data_root, tmp_path):
    run = tmp_path / "run"
    ran = _torchrun("train", "--data", data_root, "--encoder", "small", "--encoder-weights", "random", "--resize", "64",
                    "--crop", "56", "--warmup-iters", "1", "--device", "cpu", "--batch-size", "2", "--iters", "2",
                    "--eval-batch-size", "2", "--out", run)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert " ".join(ran.stdout.split()).count("Stored the thresholds") == 1
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["meta"]["processes"] == 2   # sharded over both, not rank 0 alone

    again = tmp_path / "again"   # one process, the same checkpoint and batch: the same files
    _invoke("eval", "--ckpt", run / "checkpoint.pt", "--out", again, "--device", "cpu", "--batch-size", "2")
    assert (run / "scores.csv").read_bytes() == (again / "scores.csv").read_bytes()
    alone = json.loads((again / "metrics.json").read_text())
    assert trained["categories"] == alone["categories"] and trained["mean"] == alone["mean"]
    assert trained["meta"]["pixel_metrics"] == alone["meta"]["pixel_metrics"]


# --- the library in a process group the caller made ----------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api_worker(rank: int, world: int, port: int, folder: str, checkpoint: str) -> None:
    import torch.distributed as dist

    from inp_former import distributed
    from inp_former.errors import DistributedError
    from inp_former.workflow import evaluate_checkpoint

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    report: dict = {}
    outcome = evaluate_checkpoint(checkpoint, out_dir=Path(folder) / "eval", device="cpu")
    report["mean"] = outcome.result.mean
    report["rows"] = len(outcome.result.rows)
    report["gathered"] = distributed.gather(rank * 10)
    report["given"] = distributed.on_writer(lambda: "from rank 0")

    job = distributed.Job("stall")   # rank 1 is late: rank 0 gives up after 1 s without progress
    start = time.monotonic()
    try:
        if rank == 1:
            time.sleep(3)
        job.wait(stall_seconds=1)
    except DistributedError as exc:
        report["stall"] = {"message": str(exc), "seconds": time.monotonic() - start}

    job = distributed.Job("failure")   # rank 1 fails: rank 0, waiting, reports it
    start = time.monotonic()
    try:
        with distributed.guard():
            if rank == 1:
                raise OSError("disk full")
            job.wait()
    except DistributedError as exc:
        report["failure"] = {"message": str(exc), "rank": exc.rank, "reported_elsewhere": exc.reported_elsewhere,
                             "seconds": time.monotonic() - start}
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()   # rank 0 holds the store: it stays until rank 1 is done with it
    dist.destroy_process_group()


def test_library_under_a_process_group_of_the_callers(checkpoint, tmp_path):
    from inp_former.workflow import evaluate_checkpoint

    torch.multiprocessing.spawn(_api_worker, args=(2, _free_port(), str(tmp_path), str(checkpoint)), nprocs=2,
                                join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    with one_thread():
        alone = evaluate_checkpoint(checkpoint, out_dir=tmp_path / "alone", device="cpu")
    for report in reports:   # every process returns the whole evaluation
        assert report["mean"] == pytest.approx(alone.result.mean, nan_ok=True, abs=1e-6)
        assert report["rows"] == len(alone.result.rows)
        assert report["given"] == "from rank 0"
    assert (tmp_path / "eval" / "scores.csv").read_bytes() == (tmp_path / "alone" / "scores.csv").read_bytes()
    assert reports[0]["gathered"] == [0, 10] and reports[1]["gathered"] is None

    stall = reports[0]["stall"]
    assert stall["message"].startswith("rank 1: no progress for 1 s") and stall["seconds"] < 3
    failure, echo = reports[0]["failure"], reports[1]["failure"]
    assert failure == {**failure, "message": "rank 1: OSError: disk full", "rank": 1, "reported_elsewhere": False}
    assert echo["rank"] == 1 and echo["reported_elsewhere"] is True   # rank 0 printed it: rank 1 stays quiet
    assert max(failure["seconds"], echo["seconds"]) < 10


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
