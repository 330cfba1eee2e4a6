"""Benchmarks outside the packages (never installed): ``bench/regression`` holds the pytest
benchmarks CI runs, ``bench/studies`` the one-off investigations, run from the repository root as
modules (``python3 -m bench.studies.<name>``); ``bench/gpu`` the GPU session script and
``bench/results`` what they recorded."""
