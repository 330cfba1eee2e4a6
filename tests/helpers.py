"""Small models for fast tests: ViT-S with random weights at tiny image sizes."""
from __future__ import annotations

import contextlib
import functools
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from inp_former.config import ModelConfig
from inp_former.encoders import DinoV2Encoder
from inp_former.model import INPFormer


@functools.lru_cache(maxsize=None)
def _encoder() -> DinoV2Encoder:
    return DinoV2Encoder("small", "random")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """In-process work at the thread count of the subprocesses it is compared with
    (OMP_NUM_THREADS=1), so that results agree bit for bit (a matrix product may round differently
    on another thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_config(**overrides) -> ModelConfig:
    values = dict(encoder="small", encoder_weights="random", resize=64, crop=56, map_size=32)
    values.update(overrides)
    return ModelConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> INPFormer:
    """An INPFormer on a shared random ViT-S (the encoder is frozen, so sharing it is safe)."""
    torch.manual_seed(seed)
    return INPFormer(tiny_config(**overrides), encoder=_encoder())


def to_meta_dinov2_naming(timm_state: dict, generator_seed: int = 0) -> dict:
    """A timm DINOv2-reg4 ViT state dict in Meta's official naming: ``register_tokens``, the CLS
    position folded into ``pos_embed`` (and taken out of ``cls_token``), plus ``mask_token``."""
    dim = timm_state["cls_token"].shape[-1]
    cls_pos = torch.randn(1, 1, dim, generator=torch.Generator().manual_seed(generator_seed))
    meta = {}
    for key, value in timm_state.items():
        if key == "reg_token":
            key = "register_tokens"
        elif key == "pos_embed":
            value = torch.cat([cls_pos, value], 1)
        elif key == "cls_token":
            value = value - cls_pos
        meta[key] = value.clone()
    meta["mask_token"] = torch.zeros(1, dim)
    return meta


def assert_same_category_metrics(expected: dict, actual: dict, abs_tol: float = 1e-6) -> None:
    """Every per-category metric of two metrics.json payloads agrees within ``abs_tol``."""
    import pytest

    for category, values in expected["categories"].items():
        for key, value in values.items():
            assert actual["categories"][category][key] == pytest.approx(value, abs=abs_tol), (category, key)


def first_lines(args: Sequence[str], count: int, limit_s: float, **popen) -> list[str]:
    """The first ``count`` lines a command prints (stdout and stderr together), waiting at most
    ``limit_s`` seconds; then the process is killed. For checks of how a long command starts.

    A reader thread, not ``select`` on the pipe: a buffered reader may already hold the next line
    while the pipe has nothing new, and ``select`` would then wait for the command's next output."""
    process = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    received: queue.SimpleQueue = queue.SimpleQueue()

    def pump() -> None:
        for line in process.stdout:
            received.put(line.rstrip("\n"))
        received.put(None)   # end of output

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    lines: list[str] = []
    deadline = time.monotonic() + limit_s
    try:
        while len(lines) < count:
            line = received.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                break
            lines.append(line)
    except queue.Empty:   # the deadline: the caller's assertion on the lines says what is missing
        pass
    finally:
        process.kill()
        process.wait(timeout=60)
        reader.join(timeout=60)
    return lines


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name``, filled by ``build(folder)`` once per test session: under pytest-xdist
    the first worker to ask builds it while any other waits for it (a lock file), then all read it.
    For set-up that costs tens of seconds (a torchrun launch), which worksteal could otherwise run
    in both workers when it moves a module's tests from one to the other. Tests must not change it."""
    from filelock import FileLock   # a dependency of torch's

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent   # the session's folder, above each worker's
    folder, done, failed = shared / name, shared / f"{name}.built", shared / f"{name}.failed"
    with FileLock(str(shared / f"{name}.lock")):
        if failed.exists():   # not again: it would fail the same way, as slowly
            raise RuntimeError(f"building {name} failed in another pytest worker: {failed.read_text()}")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException as exc:
                failed.write_text(f"{type(exc).__name__}: {str(exc)[:2000]}")
                raise
            done.touch()
    return folder
