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


# Modules whose single tests (or shared set-up) take 5 s or more, longest first. They run before
# the rest: worksteal hands each worker half of the tests in this order and lets an idle worker take
# tests from the end of the other's half, so the tests left at the end are short ones and neither
# worker waits long, idle, for the other's last test (a 9 s signal test last cost ~4 s of wall time).
LONG_MODULES_FIRST = ("test_sharded_scoring.py", "test_bench_model_cpu.py", "test_reliability.py", "test_tiling.py",
                      "test_int8_export.py", "test_serve.py", "test_trust.py", "test_compile_evidence.py",
                      "test_metrics.py", "test_serve_browser.py", "test_categories.py")
assert all((Path(__file__).parent / name).is_file() for name in LONG_MODULES_FIRST), "a module was renamed"


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:   # a module's tests stay together and in order: its fixtures are made once
        name = item.path.name
        return LONG_MODULES_FIRST.index(name) if name in LONG_MODULES_FIRST else len(LONG_MODULES_FIRST)

    items.sort(key=rank)   # stable: the other modules keep their file order
