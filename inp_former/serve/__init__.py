"""Serve a trained model over HTTP: a JSON API with dynamic micro-batching and a web page.

>>> from inp_former.serve import ServeConfig, serve
>>> serve(ServeConfig("runs/mvtec-base/checkpoint.pt", port=8000))     # doctest: +SKIP

or, to mount it in your own ASGI server::

    from inp_former.predictor import Predictor
    from inp_former.serve import ServeConfig, create_app
    config = ServeConfig("checkpoint.pt")
    app = create_app(Predictor.from_checkpoint(config.checkpoint, latency=True), config)

The web stack (Starlette, uvicorn, python-multipart) is the ``serve`` extra, imported only here,
so the core install stays lean. The API contract is in docs/deployment.md.
"""
from __future__ import annotations

from typing import Any

from inp_former.serve.config import MISSING_EXTRA, ServeConfig, require_web_stack

__all__ = ["MISSING_EXTRA", "ServeConfig", "create_app", "require_web_stack", "serve"]


def __getattr__(name: str) -> Any:  # lazy: importing this package does not import the web stack
    if name == "create_app":
        require_web_stack()
        from inp_former.serve.app import create_app

        return create_app
    if name == "serve":
        from inp_former.serve.server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
