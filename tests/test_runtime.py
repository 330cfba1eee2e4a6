"""Runtime defaults (inp_former/runtime.py): workers, loader arguments, threads, tensor preprocessing."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from inp_former import runtime
from inp_former.data import image_transform
from inp_former.data.transforms import IMAGENET_STD
from inp_former.runtime import (ThreadChoice, apply_env_defaults, configure_cpu_threads, default_cpu_threads,
                                default_num_workers, loader_kwargs, preprocess_uint8)


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_workers_per_device(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_count", lambda: 16)
    assert default_num_workers("cuda") == 8 and default_num_workers(torch.device("cuda:1")) == 8
    monkeypatch.setattr(runtime, "_cpu_count", lambda: 4)
    assert default_num_workers("cuda") == 3          # one core stays with the main process
    monkeypatch.setattr(runtime, "_cpu_count", lambda: 1)
    assert default_num_workers("cuda") == 0
    assert default_num_workers("cpu") == runtime.CPU_WORKERS


def test_loader_kwargs():
    assert loader_kwargs("cpu", 0) == {"num_workers": 0, "pin_memory": False}
    cuda = loader_kwargs(torch.device("cuda"), 2)
    assert cuda == {"num_workers": 2, "pin_memory": True, "persistent_workers": True, "prefetch_factor": 4}
    assert loader_kwargs("cpu", None)["num_workers"] == runtime.CPU_WORKERS
    with pytest.raises(ValueError):
        loader_kwargs("cpu", -1)
    # what DataLoader accepts, with and without workers
    from torch.utils.data import DataLoader

    data = list(range(6))
    assert sum(len(b) for b in DataLoader(data, batch_size=4, **loader_kwargs("cpu", 1))) == 6


def test_env_defaults_keep_user_values():
    env = {}
    assert apply_env_defaults(env) == {"OMP_WAIT_POLICY": "PASSIVE"} and env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert apply_env_defaults(env) == {} and env["OMP_WAIT_POLICY"] == "ACTIVE"


def test_runtime_module_does_not_import_torch():
    """apply_env_defaults must run before libgomp loads, so importing the module must not load torch."""
    code = ("import sys; from inp_former.runtime import apply_env_defaults; apply_env_defaults(); "
            "import os; assert 'torch' not in sys.modules, 'torch imported'; print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "PASSIVE"


def test_default_threads_are_the_available_cores(monkeypatch):
    assert default_cpu_threads(cores=2) == 2 and default_cpu_threads(cores=0) == 1
    monkeypatch.setattr(runtime, "_cpu_count", lambda: 3)   # the affinity mask, not the machine
    assert default_cpu_threads() == 3


def test_configure_threads_respects_the_user(keep_threads, monkeypatch):
    assert configure_cpu_threads(1, environ={}) == ThreadChoice(1, "argument", "libgomp default")
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    choice = configure_cpu_threads(environ={"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"})
    assert choice.source == "environment (OMP_NUM_THREADS)" and choice.wait_policy == "ACTIVE"
    assert torch.get_num_threads() == 2   # left as the user's variable made it
    assert configure_cpu_threads(environ={"INPCTL_THREADS": "1"}).threads == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="INPCTL_THREADS"):
        configure_cpu_threads(environ={"INPCTL_THREADS": "many"})
    monkeypatch.setattr(runtime, "default_cpu_threads", lambda: 1)
    assert configure_cpu_threads(environ={}) == ThreadChoice(1, "default (all cores)", "libgomp default")
    with pytest.raises(ValueError):
        configure_cpu_threads(0, environ={})


def _photo(size: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = 127 + 60 * np.sin(2 * np.pi * 5 * x) * np.cos(2 * np.pi * 3 * y)
    rgb = np.stack([base, base * 0.8 + 30, base * 0.6 + 50], -1) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size", [224, 700])  # enlarged to 448, and reduced (antialiased) to 448
def test_tensor_preprocessing_matches_pil_within_two_levels(size):
    """The tensor path's resize/crop/normalise against image_transform (PIL). PIL rounds
    its resized image to 8 bits, the tensor path does not: the difference is about a quarter of a level
    on average and at most 2 levels of 255; a wrong crop offset or a missing antialias gives tens."""
    picture = _photo(size, seed=size)
    reference = image_transform(448, 392)(picture)
    tensor = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)
    ours = preprocess_uint8([tensor], 448, 392)
    assert ours.shape == (1, 3, 392, 392) and ours.dtype == torch.float32
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    levels = ((ours[0] - reference) * std).abs() * 255
    assert levels.max() <= 2.0 and levels.mean() <= 0.5
