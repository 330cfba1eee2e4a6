"""Regression benchmarks CI runs: ``python3 -m pytest -q bench/regression --benchmark-disable-gc
--benchmark-min-rounds=3``. Each compares a fast path with its reference in the same run."""
