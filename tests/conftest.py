"""Shared test set-up.

Without a GPU the Triton kernels run through Triton's interpreter, which must be switched on
before any kernel module is imported, hence here, before the tests import anything. OpenMP's
wait policy is set as the CLI sets it (``inp_former.runtime``), before torch loads libgomp: the
tests share the cores with their own subprocesses and, under pytest-xdist (tests/pytest.ini), with
the other worker; spinning threads would take the core from whoever holds the work.
"""
import os

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
