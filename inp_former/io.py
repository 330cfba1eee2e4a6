"""Atomic file writes: a crash mid-write never leaves a half-written result or checkpoint."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    import PIL.Image


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); results should get the usual umask permissions
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic(path, write)


def atomic_torch_save(obj: object, path: Path) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_image(image: PIL.Image.Image, path: Path, format: str = "PNG") -> None:
    """A PIL image written atomically (``format``: the temporary file's name does not say it)."""
    _atomic(path, lambda tmp: image.save(tmp, format=format))
