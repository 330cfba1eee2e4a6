"""Benchmarks behind ``inpctl bench``: each returns plain dicts that the CLI prints and saves."""
