"""``inpctl serve``: the model behind an HTTP API and a web page (library: inp_former.serve)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from inp_former.serve.config import MAX_MEGAPIXELS
from inpctl.helpers import PRECISION_HELP, RUNTIME_CHOICES, RUNTIME_HELP, choices, fail, pick_device, run


def serve_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint.pt of inpctl train, or its run directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most images in one forward pass."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0, help="How long an image waits for others "
                                      "to join its batch."),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Most images waiting for the model; "
                                  "beyond, requests get 503 + Retry-After."),
    max_upload_mb: float = typer.Option(32.0, "--max-upload-mb", min=0.001, help="Largest request body (413 "
                                        "above)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Image-score threshold: anomalous when "
                                              "score >= it [default: the one stored in --ckpt]."),
    max_megapixels: float = typer.Option(MAX_MEGAPIXELS, "--max-megapixels", min=0.001, help="Largest image, read from "
                                         "its header before decoding (413 above)."),
    request_timeout: float = typer.Option(60.0, "--request-timeout", min=0.001, help="Seconds before a request "
                                          "is answered 504."),
    map_mode: str = typer.Option("decoder", "--map", metavar=choices("MapMode"), help="prototype: zero-shot map."),
    precision: Optional[str] = typer.Option(None, "--precision", metavar=choices("Precision"), help=PRECISION_HELP),
    runtime: Optional[str] = typer.Option(None, "--runtime", metavar=RUNTIME_CHOICES, help=RUNTIME_HELP),
    fast: bool = typer.Option(False, "--fast/--no-fast", help="CUDA: bf16, fused kernels, CUDA graphs."),
    encoder_weights: Optional[str] = typer.Option(None, help="Encoder weights, if not as at training."),
    allow_encoder_mismatch: bool = typer.Option(False, "--allow-encoder-mismatch", help="Serve even if the "
                                                "encoder is not the trained one."),
) -> None:
    """Serve the model over HTTP: POST /predict (JSON), GET /healthz, and a web page at /."""
    from inp_former.serve import ServeConfig, require_web_stack

    try:
        require_web_stack()
    except ImportError as exc:
        fail(str(exc))
    from inp_former.checkpoint import resolve_checkpoint

    ckpt = run(lambda: resolve_checkpoint(ckpt, arg="ckpt"))  # a run directory means its checkpoint.pt

    def job() -> None:
        from inp_former.inference import InferenceConfig, choose_runtime
        from inp_former.serve import serve

        inference = InferenceConfig(precision=precision, map_mode=map_mode, fast=fast, batch_size=max_batch,
                                    runtime=runtime)
        choose_runtime(inference.runtime, inference.precision, pick_device(device))   # refused before listening
        config = ServeConfig(ckpt, inference, host=host, port=port, device=pick_device(device),
                             max_wait_ms=max_wait_ms, max_queue=max_queue, max_upload_mb=max_upload_mb,
                             max_megapixels=max_megapixels, request_timeout_s=request_timeout,
                             threshold=threshold, encoder_weights=encoder_weights,
                             allow_encoder_mismatch=allow_encoder_mismatch)
        serve(config)

    run(job, {"batch_size": "--max-batch", "max_queue": "--max-queue", "map_mode": "--map"})
