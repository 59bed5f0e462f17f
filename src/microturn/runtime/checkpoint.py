"""What the runtime runs: a model checkpoint folder (model.safetensors, config.json, tokenizer.json) and a
vocoder (the checkpoint's own `vocoder/` subfolder if it has one, else the vocoder shipped in the package)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from microturn.model.checkpoint import load_checkpoint
from microturn.model.interaction import InteractionModel
from microturn.model.tokenizer import TextTokenizer
from microturn.runtime.vocoder import DEFAULT_CHECKPOINT as DEFAULT_VOCODER
from microturn.runtime.vocoder import Vocoder, load_vocoder

VOCODER_SUBDIR = "vocoder"


def default_checkpoint_path() -> Path:
    """The interaction model checkpoint shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "checkpoints" / "default"


@dataclass
class RuntimeModels:
    model: InteractionModel
    tokenizer: TextTokenizer
    vocoder: Vocoder
    checkpoint: Path
    vocoder_checkpoint: Path
    int8: bool = False


def quantize_int8(module: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of the Linear layers (weights int8, activations quantised per call)."""
    with warnings.catch_warnings():  # torch.ao.quantization warns that it moves to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)


def load_runtime(checkpoint: str | Path | None = None, int8: bool = False) -> RuntimeModels:
    """Model, tokenizer and vocoder in eval mode; clear errors for a folder that is not a checkpoint."""
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint_path()
    if not path.exists():
        hint = (
            "" if checkpoint is not None else " (no default checkpoint is installed yet: pass --checkpoint)"
        )
        raise FileNotFoundError(f"{path}: checkpoint folder not found{hint}")
    model, tokenizer, _ = load_checkpoint(path)
    vocoder_path = path / VOCODER_SUBDIR if (path / VOCODER_SUBDIR).is_dir() else DEFAULT_VOCODER
    vocoder = load_vocoder(vocoder_path)
    if int8:
        model, vocoder = quantize_int8(model), quantize_int8(vocoder)
    return RuntimeModels(model, tokenizer, vocoder, path, vocoder_path, int8)
