"""INP-Former: universal industrial anomaly detection with Intrinsic Normal Prototypes.

The library behind ``inpctl``: model, losses, data, training, scoring and metrics, usable from
Python without the CLI. See README.md for the quick start.
"""
__version__ = "0.1.0"   # the one source: setup.py reads it, inpctl --version prints it
