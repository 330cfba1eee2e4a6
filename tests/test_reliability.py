"""Issue 6, scale and reliability: multi-process training, resume after a kill, bounded-memory
evaluation, non-finite losses, bad input, determinism. All on CPU with tiny models."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
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

from inp_former.train import TRAIN_LOG, read_train_log
from inpctl.cli import app
from tests.datagen import make_mvtec_tree
from tests.helpers import one_thread

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
TINY = ["--encoder", "small", "--encoder-weights", "random", "--resize", "64", "--crop", "56",
        "--warmup-iters", "1", "--device", "cpu"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _cli_env() -> dict[str, str]:
    # one thread, whatever the caller's environment: the in-process references use one too
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _assert_one_line_error(result, *expected: str) -> None:
    """Non-zero exit, no traceback, one line starting with 'error:' that contains every ``expected``."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for text in expected:
        assert text in lines[0], result.output


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One category, 8 training images (4 batches of 2 per epoch), 2 good + 2 anomalous test images."""
    return make_mvtec_tree(tmp_path_factory.mktemp("data"), categories=("bottle",), n_train=8)


# --- determinism -------------------------------------------------------------------------------

def test_seed_repeats_bit_for_bit_and_another_seed_differs(data_root, tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = _invoke("train", "--data", data_root, *TINY, "--batch-size", "2", "--iters", "2", "--seed", seed,
                         "--no-eval", "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        runs[name] = _weights(tmp_path / name / "checkpoint.pt")
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


# --- resume after SIGKILL ------------------------------------------------------------------------

def test_killed_run_resumes_to_the_uninterrupted_weights(data_root, tmp_path):
    """6 iterations over 4-batch epochs (a resume from the first state crosses an epoch boundary), a
    state every 2.

    The uninterrupted run and the resumed one are made in this process, at the killed run's one
    thread (their start-up is not what is compared; the weights are, to the bit)."""
    train = ["train", "--data", str(data_root), *TINY, "--batch-size", "2", "--iters", "6", "--checkpoint-every",
             "2", "--no-eval"]
    full, part = tmp_path / "full", tmp_path / "part"
    with one_thread():
        done = _invoke(*train, "--out", full)
    assert done.exit_code == 0, done.output
    assert not (full / "last.pt").exists()  # a complete run keeps only checkpoint.pt

    proc = subprocess.Popen([sys.executable, "-m", "inpctl", *train, "--out", str(part)], env=_cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (part / "last.pt").exists():  # written atomically: once it exists it is whole
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first state"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (part / "checkpoint.pt").exists(), "killed too late: the run had finished"
    state = torch.load(part / "last.pt", map_location="cpu", weights_only=True)
    assert state["format"] == "inpctl-training-state" and 2 <= state["iteration"] < 6
    (part / ".last.pt.abc123.tmp").write_bytes(b"half a file")  # what a kill during a save leaves

    # resumed in this process, at the killed run's one thread (a process start is not what is compared)
    with one_thread():
        resumed = _invoke("train", "--resume", part, "--device", "cpu", "--no-eval")
    assert resumed.exit_code == 0, resumed.output
    assert f"Resuming {part} at iteration {state['iteration']} of 6" in " ".join(resumed.output.split())
    ours, reference = _weights(part / "checkpoint.pt"), _weights(full / "checkpoint.pt")
    assert ours.keys() == reference.keys()
    for key in reference:
        assert torch.equal(ours[key], reference[key]), key  # exact on CPU
    meta = torch.load(part / "checkpoint.pt", map_location="cpu", weights_only=True)["meta"]
    assert meta["iterations"] == 6
    assert not (part / ".last.pt.abc123.tmp").exists() and not (part / "last.pt").exists()

    # the log: every iteration once (the rows the killed run wrote after its state are dropped), and
    # the same losses and rates as the uninterrupted run's, since the weights are
    ours, reference = read_train_log(part / TRAIN_LOG), read_train_log(full / TRAIN_LOG)
    assert [row["iteration"] for row in ours] == list(range(1, 7))
    assert [(row["loss"], row["lr"]) for row in ours] == [(row["loss"], row["lr"]) for row in reference]

    again = _invoke("train", "--resume", part)
    _assert_one_line_error(again, f"--resume {part}: the run is complete", "inpctl eval --ckpt",
                           f"--resume {part} --iters N (more than its 6 iterations)")


# --- extending a run: --resume RUN_DIR --iters N -------------------------------------------------

FINAL_LR = 1e-4   # TrainConfig's final_lr; the peak is 1e-3


def _rates(run_dir: Path) -> tuple[list[int], list[float]]:
    rows = read_train_log(run_dir / TRAIN_LOG)
    return [int(row["iteration"]) for row in rows], [row["lr"] for row in rows]


def _totals(run_dir: Path) -> tuple[int, int, int]:
    """The planned total in config.json and in the checkpoint's config, and the checkpoint's iterations."""
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    return (json.loads((run_dir / "config.json").read_text())["train"]["iters"],
            checkpoint["config"]["train"]["iters"], checkpoint["meta"]["iterations"])


def test_a_finished_run_extends_from_its_weights_with_a_warm_up_to_the_final_rate(data_root, tmp_path):
    run = tmp_path / "run"
    result = _invoke("train", "--data", data_root, *TINY, "--warmup-iters", "2", "--batch-size", "2", "--iters", "4",
                     "--no-eval", "--out", run)
    assert result.exit_code == 0, result.output
    _, before = _rates(run)
    finished = _weights(run / "checkpoint.pt")

    result = _invoke("train", "--resume", run, "--iters", "14", "--no-eval")
    assert result.exit_code == 0, result.output
    assert f"Extending the finished run {run} from 4 to 14 iterations" in " ".join(result.output.split())
    iterations, rates = _rates(run)
    assert iterations == list(range(1, 15))
    assert rates[:4] == before
    # docs/reliability.md: a new optimiser; a warm-up of min(warm-up 2, 10 extra // 10) = 1 iteration
    # (the authors' linspace from 0: 0.0), then the final rate (where the finished schedule ended)
    assert rates[4:] == [0.0] + [FINAL_LR] * 9
    assert _totals(run) == (14, 14, 14)
    assert not (run / "last.pt").exists()
    extended = _weights(run / "checkpoint.pt")
    assert not all(torch.equal(extended[k], finished[k]) for k in finished)


def test_an_interrupted_run_extends_its_cosine_from_where_it_stands(data_root, tmp_path):
    from inp_former.config import DataConfig, RunConfig, TrainConfig
    from inp_former.errors import TrainingInterrupted
    from inp_former.workflow import Reporter, train_run
    from tests.helpers import tiny_config

    class CtrlCAt3(Reporter):
        @contextlib.contextmanager
        def training(self, label):
            yield lambda step: signal.raise_signal(signal.SIGINT) if step.iteration == 3 else None

    run = tmp_path / "run"
    cfg = RunConfig(model=tiny_config(), train=TrainConfig(iters=8, batch_size=2, warmup_iters=2),
                    data=DataConfig(root=str(data_root)))
    with pytest.raises(TrainingInterrupted):
        train_run(cfg, run, "cpu", evaluation=None, reporter=CtrlCAt3())
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 3

    result = _invoke("train", "--resume", run, "--iters", "12", "--no-eval")
    assert result.exit_code == 0, result.output
    assert f"Resuming {run} at iteration 3 of 12 (extended from 8" in " ".join(result.output.split())
    iterations, rates = _rates(run)
    assert iterations == list(range(1, 13))

    def cosine(start: float, steps: int) -> list[float]:   # from start down to the final rate
        return [FINAL_LR + 0.5 * (start - FINAL_LR) * (1 + math.cos(math.pi * k / steps)) for k in range(steps)]

    planned = [0.0, 1e-3] + cosine(1e-3, 6)        # the 8-iteration schedule: warm-up 2, cosine over 6
    # docs/reliability.md: iterations 1-3 as planned; from 4 on, a cosine from the rate iteration 4 had
    # in the old schedule down to the final rate over the 9 iterations left
    np.testing.assert_allclose(rates, planned[:3] + cosine(planned[3], 9), rtol=1e-12, atol=0)
    assert _totals(run) == (12, 12, 12)


def test_extending_needs_more_iterations_than_the_run_has(data_root, tmp_path):
    run = tmp_path / "run"
    result = _invoke("train", "--data", data_root, *TINY, "--batch-size", "2", "--iters", "2", "--no-eval",
                     "--out", run)
    assert result.exit_code == 0, result.output
    for iters in ("2", "1"):
        _assert_one_line_error(_invoke("train", "--resume", run, "--iters", iters),
                               f"--iters {iters}: the run in {run} is planned for 2 iterations", "more than 2")
    # --iters is the one setting a resumed run takes; the others are still refused, by name
    result = _invoke("train", "--resume", run, "--iters", "4", "--lr", "0.1")
    _assert_one_line_error(result, "these flags cannot change it: --lr")
    assert "--iters" not in result.output
    assert _totals(run) == (2, 2, 2)


def test_resume_refuses_what_is_not_a_training_state(tmp_path):
    _assert_one_line_error(_invoke("train", "--resume", tmp_path / "nothing"), "no such run directory")
    _assert_one_line_error(_invoke("train", "--resume", tmp_path), "no last.pt there")
    (tmp_path / "last.pt").write_bytes(b"not a torch file")
    _assert_one_line_error(_invoke("train", "--resume", tmp_path), f"{tmp_path / 'last.pt'} is not a readable "
                                                                   "training state")
    torch.save({"format": "something else"}, tmp_path / "last.pt")
    _assert_one_line_error(_invoke("train", "--resume", tmp_path), "is not an inpctl training state")


# --- multi-process (DDP: the torchrun test is in tests/test_sharded_scoring.py) -----------------

def test_batch_size_must_split_evenly_over_processes():
    from inp_former.train import EpochBatchSampler

    with pytest.raises(ValueError, match="batch_size 5: must be divisible by the 2 processes"):
        EpochBatchSampler(10, 5, seed=0, world=2, rank=0)
    one = list(EpochBatchSampler(12, 4, seed=1))
    halves = [list(EpochBatchSampler(12, 4, seed=1, world=2, rank=r)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == one  # the processes together see the one-process batches


# --- non-finite loss ---------------------------------------------------------------------------

@pytest.fixture
def nan_at_iteration_3(monkeypatch):
    import inp_former.train as train_module

    original, calls = train_module.coherence_loss, {"n": 0}

    def poisoned(distance):
        calls["n"] += 1
        value = original(distance)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(train_module, "coherence_loss", poisoned)


def test_nonfinite_loss_stops_and_keeps_the_last_good_state(data_root, tmp_path, nan_at_iteration_3):
    run_dir = tmp_path / "run"
    result = _invoke("train", "--data", data_root, *TINY, "--batch-size", "2", "--iters", "5",
                     "--checkpoint-every", "2", "--on-nonfinite", "stop", "--out", run_dir)
    _assert_one_line_error(result, "loss is nan at iteration 3", f"the last good state {run_dir / 'last.pt'} "
                           "(iteration 2) is kept", "--on-nonfinite skip")
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert state["iteration"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (run_dir / "checkpoint.pt").exists()


def test_nonfinite_loss_skip_drops_the_step(data_root, tmp_path, nan_at_iteration_3):
    run_dir = tmp_path / "run"
    result = _invoke("train", "--data", data_root, *TINY, "--batch-size", "2", "--iters", "4",
                     "--on-nonfinite", "skip", "--no-eval", "--out", run_dir)
    assert result.exit_code == 0, result.output
    payload = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert payload["meta"]["skipped_steps"] == 1 and payload["meta"]["iterations"] == 4
    assert all(torch.isfinite(v).all() for v in payload["state_dict"].values())


# --- evaluation in bounded memory ----------------------------------------------------------------

def _synthetic_batch(rng: np.random.Generator, n: int, size: int, anomalous_every: int = 4, first: int = 0):
    """Maps: normal pixels ~ U(0, 1), anomalous ones ~ U(0.5, 1.5) (so P-AUROC = 0.875); a rectangle
    defect in every ``anomalous_every``-th image."""
    maps = torch.from_numpy(rng.random((n, size, size), dtype=np.float32))
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        if (first + i) % anomalous_every == 0:
            y, x = rng.integers(0, size // 2, size=2)
            h, w = rng.integers(size // 8, size // 3, size=2)
            masks[i, y:y + h, x:x + w] = True
    maps[masks] += 0.5
    labels = masks.flatten(1).any(1).long()
    return labels, maps.flatten(1).max(1).values, masks, maps


def test_streamed_metrics_equal_the_exact_ones_on_a_small_set():
    from inp_former.evaluate import CategoryStream
    from inp_former.metrics import category_metrics

    rng = np.random.default_rng(0)
    batches = [_synthetic_batch(rng, 5, 32, first=5 * b) for b in range(4)]
    exact = category_metrics(*(torch.cat(parts) for parts in zip(*batches)))
    small, binned = CategoryStream(), CategoryStream(exact_pixels=0, bins=1 << 12)
    for batch in batches:
        small.update(*batch)
        binned.update(*batch)
    assert not small.binned and small.compute() == exact  # exact below the pixel budget, to the bit
    assert all(v == 0 for v in small.error_bounds().values())
    assert binned.binned
    values, bounds = binned.compute(), binned.error_bounds()
    for key, bound in bounds.items():
        assert 0 < bound < 0.05, (key, bound)
        assert abs(values[key] - exact[key]) <= bound, (key, values[key], exact[key], bound)
    for key in ("i_auroc", "i_ap", "i_f1max"):  # image metrics are always exact
        assert values[key] == exact[key]


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    sys.path.insert(0, sys.argv[1])
    from tests.test_reliability import _synthetic_batch
    from inp_former.evaluate import CategoryStream, bound_heap_growth

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    torch.set_num_threads(1)
    bound_heap_growth()  # as inpctl eval does
    rng, stream, n, size, batch = np.random.default_rng(1), CategoryStream(), 1000, 256, 25
    start, trace = rss_mb(), []
    for b in range(n // batch):
        stream.update(*_synthetic_batch(rng, batch, size, first=b * batch))
        trace.append(((b + 1) * batch, rss_mb()))
    metrics, bounds = stream.compute(), stream.error_bounds()
    print(json.dumps({"start": start, "trace": trace, "state_bytes": stream.pixels.state_nbytes(),
                      "full_maps_mb": n * size * size * 5 / 2**20, "binned": stream.binned, "metrics": metrics,
                      "bounds": bounds}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_memory_stays_flat_on_a_stream_far_larger_than_the_maps_fit(tmp_path):
    """1000 maps of 256x256 (66M pixels: 310 MiB as float32 maps + bool masks, ~1.7 GB for the exact
    computation): after the first 400 maps the resident memory does not grow. Measured with glibc's
    heap growth bounded as inpctl eval does it (``bound_heap_growth``): without it, glibc's dynamic mmap
    threshold lets fragmentation grow the heap by a batch now and then although nothing is kept."""
    script = tmp_path / "stream.py"
    script.write_text(MEMORY_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(REPO)], capture_output=True, text=True, timeout=600,
                          env=_cli_env())
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(out)
    assert out["binned"]
    # resident memory (MiB) after each batch; the exact-mode buffer is folded into histograms at 256 maps
    first = max(mb for maps, mb in out["trace"] if 400 <= maps <= 700)
    second = max(mb for maps, mb in out["trace"] if maps > 700)
    peak = max(mb for _, mb in out["trace"])
    print(f"RSS above start: after 400-700 maps {first - out['start']:.0f} MiB, after 700-1000 maps "
          f"{second - out['start']:.0f} MiB, peak {peak - out['start']:.0f} MiB; full maps {out['full_maps_mb']:.0f} MiB")
    assert second - first < 16, out["trace"]  # flat: 300 more maps (95 MiB of maps and masks) add nothing
    assert peak - out["start"] < 0.4 * out["full_maps_mb"], out["trace"]  # far less than holding the maps alone
    assert out["state_bytes"] < 32 * 2**20
    # the known answer of the generated stream: P(U(0.5, 1.5) > U(0, 1)) = 0.875
    assert abs(out["metrics"]["p_auroc"] - 0.875) <= out["bounds"]["p_auroc"] + 2e-3
    assert all(0 < b < 1e-3 for b in out["bounds"].values()), out["bounds"]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = _invoke("train", "--data", data_root, *TINY, "--batch-size", "2", "--iters", "2", "--out", run_dir)
    assert result.exit_code == 0, result.output
    return run_dir


def test_eval_states_the_error_bound_when_binned(trained, data_root, tmp_path):
    exact = json.loads((trained / "metrics.json").read_text())
    assert exact["meta"]["pixel_metrics"]["mode"] == "exact"
    result = _invoke("eval", "--ckpt", trained / "checkpoint.pt", "--out", tmp_path, "--device", "cpu",
                     "--exact-pixels", "0")
    assert result.exit_code == 0, result.output
    assert "are binned" in result.output and "points from the exact values" in result.output
    binned = json.loads((tmp_path / "metrics.json").read_text())
    info = binned["meta"]["pixel_metrics"]
    assert info["mode"] == "binned" and info["bins"] == 1 << 20 and "bottle" in info["binned_categories"]
    bounds = info["binned_categories"]["bottle"]["error_bounds"]
    for key, bound in bounds.items():
        assert abs(binned["categories"]["bottle"][key] - exact["categories"]["bottle"][key]) <= bound + 1e-12
        assert bound <= info["max_error_bounds"][key]


# --- bad input -----------------------------------------------------------------------------------

def _copy_tree(root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(root, target)
    return target


def _train(root: Path, out: Path, *extra: str):
    return _invoke("train", "--data", root, *TINY, "--batch-size", "2", "--iters", "1", "--out", out, *extra)


def test_missing_root(tmp_path):
    _assert_one_line_error(_train(tmp_path / "absent", tmp_path / "run"), f"--data {tmp_path / 'absent'}: "
                                                                          "no such directory")


def test_empty_root(tmp_path):
    (tmp_path / "empty").mkdir()
    _assert_one_line_error(_train(tmp_path / "empty", tmp_path / "run"), str(tmp_path / "empty"),
                           "the dataset folder is empty", "expected <root>/<category>/train/good")


def test_category_without_test_images_fails_before_training(data_root, tmp_path):
    root = _copy_tree(data_root, tmp_path)
    shutil.rmtree(root / "bottle" / "test")
    shutil.rmtree(root / "bottle" / "ground_truth")
    _assert_one_line_error(_train(root, tmp_path / "run"), f"{root / 'bottle' / 'test'}: no test images")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_truncated_image(data_root, tmp_path, workers):
    root = _copy_tree(data_root, tmp_path)
    image = root / "bottle" / "train" / "good" / "003.png"
    image.write_bytes(image.read_bytes()[:200])
    result = _train(root, tmp_path / "run", "--num-workers", workers, "--iters", "4", "--no-eval")
    _assert_one_line_error(result, f"{image}: not a readable image", "expected a PNG/JPEG")
    assert "worker" not in result.output


def test_non_image_files(data_root, tmp_path):
    root = _copy_tree(data_root, tmp_path)
    good = root / "bottle" / "train" / "good"
    (good / "notes.txt").write_text("not an image, not an image extension: ignored")
    (good / "._000.png").write_bytes(b"macOS AppleDouble: hidden, ignored")
    assert _train(root, tmp_path / "ok", "--no-eval").exit_code == 0
    (good / "fake.png").write_text("text with an image extension")
    _assert_one_line_error(_train(root, tmp_path / "run", "--iters", "5", "--no-eval"),
                           f"{good / 'fake.png'}: not a readable image")


def test_grayscale_rgba_and_16_bit_images_are_converted(data_root, tmp_path):
    root = _copy_tree(data_root, tmp_path)
    good = root / "bottle" / "train" / "good"
    rgb = np.asarray(Image.open(good / "000.png").convert("RGB"))
    Image.fromarray(rgb).convert("L").save(good / "000.png")
    Image.fromarray(rgb).convert("RGBA").save(good / "001.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(good / "002.png")  # 16-bit grayscale PNG
    assert Image.open(good / "002.png").mode.startswith("I")
    test_good = root / "bottle" / "test" / "good" / "000.png"
    Image.open(test_good).convert("LA").save(test_good)
    result = _train(root, tmp_path / "run", "--iters", "4")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(math.isfinite(v) for v in metrics["categories"]["bottle"].values())


def test_mask_of_another_size(data_root, tmp_path, trained):
    root = _copy_tree(data_root, tmp_path)
    mask = root / "bottle" / "ground_truth" / "defect" / "001_mask.png"
    Image.open(mask).resize((32, 32)).save(mask)
    result = _invoke("eval", "--ckpt", trained / "checkpoint.pt", "--data", root, "--out", tmp_path / "eval",
                     "--device", "cpu")
    _assert_one_line_error(result, f"{mask}: mask of 32x32 pixels; expected the size of its image",
                           "(64x64)")


def test_mask_without_its_image(data_root, tmp_path, trained):
    root = _copy_tree(data_root, tmp_path)
    (root / "bottle" / "test" / "defect" / "001.png").unlink()
    result = _invoke("eval", "--ckpt", trained / "checkpoint.pt", "--data", root, "--out", tmp_path / "eval",
                     "--device", "cpu")
    _assert_one_line_error(result, f"{root / 'bottle' / 'ground_truth' / 'defect' / '001_mask.png'}: "
                                   "mask without its image")


def test_checkpoint_that_is_not_ours(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    _assert_one_line_error(_invoke("eval", "--ckpt", tmp_path / "other.pt"), f"--ckpt {tmp_path / 'other.pt'}: "
                           "not an inpctl checkpoint")
    (tmp_path / "text.pt").write_text("hello")
    _assert_one_line_error(_invoke("eval", "--ckpt", tmp_path / "text.pt"), "not a readable checkpoint")


def test_checkpoint_from_another_encoder(trained, tmp_path):
    payload = torch.load(trained / "checkpoint.pt", map_location="cpu", weights_only=True)
    payload["meta"]["encoder_fingerprint"] += 1.0  # trained on other encoder weights
    torch.save(payload, tmp_path / "fingerprint.pt")
    _assert_one_line_error(_invoke("eval", "--ckpt", tmp_path / "fingerprint.pt", "--device", "cpu"),
                           "the encoder loaded now", "is not the one it was trained with")
    payload = torch.load(trained / "checkpoint.pt", map_location="cpu", weights_only=True)
    payload["config"]["model"]["encoder"] = "base"  # a ViT-S decoder claimed for ViT-B
    torch.save(payload, tmp_path / "other_encoder.pt")
    _assert_one_line_error(_invoke("eval", "--ckpt", tmp_path / "other_encoder.pt", "--device", "cpu"),
                           f"--ckpt {tmp_path / 'other_encoder.pt'}")


@pytest.mark.parametrize("flags, expected", [
    (["--on-nonfinite", "ignore"], "--on-nonfinite 'ignore': expected one of stop, skip"),
    (["--precision", "fp8"], "--precision 'fp8': expected one of auto, fp32, bf16"),
    (["--crop", "70"], "--crop 70: must not exceed --resize 64"),
    (["--batch-size", "16"], "--batch-size 16: larger than the 8 training images"),
    (["--categories", "nope"], "nope"),
    (["--device", "tpu"], "--device 'tpu'"),
])
def test_invalid_flag_values(data_root, tmp_path, flags, expected):
    _assert_one_line_error(_train(data_root, tmp_path / "run", *flags), expected)


def test_invalid_flag_value_rejected_by_the_parser(data_root, tmp_path):
    result = _train(data_root, tmp_path / "run", "--checkpoint-every", "-1")
    assert result.exit_code == 2 and "Traceback" not in result.output and "--checkpoint-every" in result.output


def test_output_directory_that_already_holds_a_run(trained, data_root):
    _assert_one_line_error(_train(data_root, trained), f"--out {trained}: already holds a run",
                           f"--resume {trained}")
