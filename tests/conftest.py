"""Shared test set-up.

Without a GPU the Triton kernels run through Triton's interpreter, which must be switched on
before any kernel module is imported, hence here, before the tests import anything.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
