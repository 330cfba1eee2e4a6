"""Shared test set-up.

Without a GPU the Triton kernels run through Triton's interpreter, which must be switched on
before any kernel module is imported, hence here, before the tests import anything. OpenMP's
wait policy is set as the CLI sets it (``inp_former.runtime``), before torch loads libgomp: the
tests share the cores with their own subprocesses and, under pytest-xdist (tests/pytest.ini), with
the other worker; spinning threads would take the core from whoever holds the work.
"""
import os
from pathlib import Path

from inp_former.runtime import apply_env_defaults

apply_env_defaults()
# The suite scores with torch unless a test asks for OpenVINO (tests/test_openvino_runtime.py, which
# clears this): under `auto` every test's freshly trained model would be exported and compiled first,
# seconds each. Subprocesses inherit it.
os.environ.setdefault("INPCTL_RUNTIME", "torch")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# Modules whose single tests (or shared set-up) take 5 s or more, longest first. pytest-xdist's
# worksteal (tests/pytest.ini) hands each of the two workers one half of the tests in collection
# order, and lets a worker that runs out take the last half of the other's queue. So the long
# modules go to the fronts of both halves, alternately: each worker starts with long tests, and
# what is left at the ends, and may be moved, is short tests with cheap fixtures (a moved module
# builds its module fixtures again in the other worker; a long test last keeps the other worker idle).
LONG_MODULES_FIRST = ("test_sharded_scoring.py", "test_bench_model_cpu.py", "test_reliability.py", "test_tiling.py",
                      "test_int8_export.py", "test_serve.py", "test_trust.py", "test_compile_evidence.py",
                      "test_metrics.py", "test_serve_browser.py", "test_categories.py")
assert all((Path(__file__).parent / name).is_file() for name in LONG_MODULES_FIRST), "a module was renamed"


def pytest_collection_modifyitems(items: list) -> None:
    long_first = {name: rank for rank, name in enumerate(LONG_MODULES_FIRST)}
    halves: tuple[list, list] = ([], [])   # the long modules of each half, in LONG_MODULES_FIRST order
    short = []                             # the rest, in file order
    for item in items:   # a module's tests stay together and in order: its fixtures are made once
        rank = long_first.get(item.path.name)
        (short if rank is None else halves[rank % 2]).append(item)
    for half in halves:
        half.sort(key=lambda item: long_first[item.path.name])   # stable: order within a module kept
    first_short = max(0, len(items) // 2 - len(halves[0]))   # xdist gives the first worker len // 2
    items[:] = halves[0] + short[:first_short] + halves[1] + short[first_short:]
