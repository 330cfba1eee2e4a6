"""The web page at ``GET /``: ``page.html`` beside this module, one self-contained HTML file
(inline CSS and JS, no CDN, works offline), shipped as package data (setup.py ``package_data``).

Drop images or folders, or pick images (one picker); each file is sent to ``POST /predict?maps=1``
(at most 4 requests in flight) under the name uploaded, with its folders for a dropped folder, so
that the server can choose the category from them. Cards follow the upload order, are titled by
that name, and show the image (the browser's own copy) beside its heat-map overlay, the score and
the server's label, threshold and category, as the server gave them: the page decides nothing.
The slider is an explicit what-if ("try another threshold"): the cards then show, marked as a
trial, the labels under that one threshold (score >= threshold: anomalous) until the user goes
back to the server's decisions. The category selector sends no ``category`` ("automatic": the
server decides) or ``?category=NAME``.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def page() -> str:
    """The page's HTML (read once from the installed package)."""
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


PAGE: str = page()
