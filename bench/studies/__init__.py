"""One-off investigations, each run from the repository root as a module, e.g.
``python3 -m bench.studies.threads_bench --help``; what they found is in ``bench/results`` and docs/."""
