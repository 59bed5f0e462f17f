"""Files on disk: written so that a crash or a kill never leaves a half-written one behind, and weights
read with an error that names the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes the content to a temporary name beside `path`, then one rename puts it in place."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_safetensors(path: Path, error: type[ValueError] = ValueError) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; `error` names the file when it is corrupt or unreadable."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{path}: corrupt or unreadable safetensors file ({exc})") from exc
