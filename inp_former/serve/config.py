"""The settings of one serving process (``inpctl serve`` flags, or built by hand in Python)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from inp_former.inference import InferenceConfig

if TYPE_CHECKING:
    import torch


MISSING_EXTRA = "inpctl serve needs the serve extra: pip install 'inpctl[serve]'"
# The largest image (width x height, read from its header before decoding) that serve and predict
# take by default: a 50 000 x 50 000 PNG is a few kilobytes on disk and 7.5 GB decoded.
MAX_MEGAPIXELS = 40.0


def require_web_stack() -> None:
    """Raise ImportError with a one-line install hint when the serve extra is missing."""
    multipart = importlib.util.find_spec("python_multipart") or importlib.util.find_spec("multipart")
    if not (importlib.util.find_spec("starlette") and importlib.util.find_spec("uvicorn") and multipart):
        raise ImportError(MISSING_EXTRA)


@dataclass
class ServeConfig:
    """Where the model comes from, where to listen and every bound the server enforces.

    Every limit exists so that no request, however large or numerous, can take the process down:
    memory is bounded by ``max_queue`` (preprocessed images waiting), ``max_upload_mb`` (request
    body) and ``max_megapixels`` (one decoded image); time by ``request_timeout_s``.
    """

    checkpoint: str | Path
    inference: InferenceConfig = field(default_factory=InferenceConfig)  # batch_size: images in one forward pass
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | torch.device = "auto"   # auto, cpu, cuda, cuda:N
    max_wait_ms: float = 5.0              # how long the first image of a batch waits for company
    max_queue: int = 256                  # images admitted but not yet in a forward pass; more -> 503
    max_upload_mb: float = 32.0           # request body; more -> 413
    max_megapixels: float = MAX_MEGAPIXELS  # one image's width x height, read from its header; more -> 413
    request_timeout_s: float = 60.0       # a request slower than this -> 504
    threshold: float | None = None        # default image threshold; None: the checkpoint's
    encoder_weights: str | None = None    # as for inpctl predict: the encoder's source if not as trained
    allow_encoder_mismatch: bool = False  # serve a model with another encoder than it was trained with
    shutdown_timeout_s: float = 30.0      # SIGTERM: how long in-flight requests get to finish

    def __post_init__(self) -> None:
        for name in ("max_queue", "port"):
            if int(getattr(self, name)) < (0 if name == "port" else 1):
                raise ValueError(f"{name} {getattr(self, name)}: expected a positive integer")
        for name in ("max_upload_mb", "max_megapixels", "request_timeout_s", "shutdown_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} {getattr(self, name)}: expected a positive number")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms {self.max_wait_ms}: expected >= 0")

    @property
    def max_batch(self) -> int:
        """Most images in one forward pass (the micro-batcher's batch)."""
        return self.inference.batch_size

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)
