"""Checkpoints: a folder with model.safetensors, config.json, tokenizer.json (and, for training runs,
optimizer.pt). Written into a temporary folder and renamed into place, so a crash leaves the previous
checkpoint intact; loading gives a clear error for missing files, corrupt files and config mismatches.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from microturn.files import read_safetensors

from .config import ModelConfig
from .interaction import InteractionModel
from .tokenizer import TextTokenizer

MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, OPTIMIZER_FILE = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "optimizer.pt",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: names the file and the problem."""


def save_checkpoint(
    path: str | Path,
    model: InteractionModel,
    tokenizer: TextTokenizer,
    extra: dict[str, Any] | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write the checkpoint folder `path` atomically (replacing an older one). `extra` is stored in
    config.json next to the model config (training state: step, seed, options)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # clone: safetensors refuses tensors sharing storage (the text table is tied to the slot unembedding)
    save_file({k: v.detach().clone() for k, v in model.state_dict().items()}, str(tmp / MODEL_FILE))
    tokenizer.save(tmp / TOKENIZER_FILE)
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
    config = {"model": model.cfg.to_dict(), **(extra or {})}
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder itself, or the `.old` copy a crash between the two renames left behind."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not (path / CONFIG_FILE).exists() and (old / CONFIG_FILE).exists():
        return old
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    path = resolve_checkpoint(path)
    file = path / CONFIG_FILE
    if not file.exists():
        raise CheckpointError(f"{file}: file not found (is {path} a checkpoint folder?)")
    try:
        data = json.loads(file.read_text())
        ModelConfig.from_dict(data["model"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: not a valid checkpoint config ({exc})") from exc
    return data


def load_checkpoint(
    path: str | Path, expect: ModelConfig | None = None
) -> tuple[InteractionModel, TextTokenizer, dict[str, Any]]:
    """(model in eval mode, tokenizer, config.json contents). With `expect`, the checkpoint must have been
    trained with that model config."""
    path = resolve_checkpoint(path)
    config = read_config(path)
    cfg = ModelConfig.from_dict(config["model"])
    if expect is not None and cfg != expect:
        diff = {k: (v, getattr(cfg, k)) for k, v in expect.to_dict().items() if getattr(cfg, k) != v}
        raise CheckpointError(f"{path}: checkpoint of another model config (expected vs found: {diff})")
    weights = _read_weights(path)
    weights_file = path / MODEL_FILE
    model = InteractionModel(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{k} {tuple(weights[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{weights_file}: weights do not fit the config in {CONFIG_FILE} (another config?): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    model.load_state_dict(weights)
    tokenizer = _read_tokenizer(path, cfg)
    model.attach_tokenizer(tokenizer)
    return model.eval(), tokenizer, config


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    weights_file = path / MODEL_FILE
    if not weights_file.exists():
        raise CheckpointError(f"{weights_file}: file not found")
    return read_safetensors(weights_file, CheckpointError)


def _read_tokenizer(path: Path, cfg: ModelConfig) -> TextTokenizer:
    tokenizer_file = path / TOKENIZER_FILE
    try:
        tokenizer = TextTokenizer.load(tokenizer_file)
    except (FileNotFoundError, ValueError) as exc:
        raise CheckpointError(str(exc)) from exc
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(
            f"{tokenizer_file}: {tokenizer.vocab_size} tokens but the model has {cfg.vocab_size}"
        )
    return tokenizer


def init_from_checkpoint(model: InteractionModel, path: str | Path) -> tuple[TextTokenizer, list[str]]:
    """Fine-tuning start: every weight of the checkpoint whose name and shape fit `model` is copied in (the
    model may have grown a head or a block since); returns the checkpoint's tokenizer and the names of the
    parameters that start fresh. At least the trunk must fit, or this is another model."""
    path = resolve_checkpoint(path)
    weights = _read_weights(path)
    own = model.state_dict()
    fits = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("blocks.") for k in fits):
        raise CheckpointError(f"{path / MODEL_FILE}: no transformer block fits this model config")
    if dropped := sorted(set(weights) - set(own)):  # a smaller config would silently lose trained weights
        raise CheckpointError(
            f"{path / MODEL_FILE}: this model config has no place for {len(dropped)} trained tensors "
            f"({', '.join(dropped[:4])}{', ...' if len(dropped) > 4 else ''}): the checkpoint's config.json "
            "says which fields to set (train --model-set FIELD=VALUE)"
        )
    model.load_state_dict(fits, strict=False)
    fresh = set(own) - set(fits)
    for name, module in model.named_modules():  # a wholly new residual block starts as the identity
        if hasattr(module, "start_as_identity") and all(f"{name}.{k}" in fresh for k in module.state_dict()):
            module.start_as_identity()
    tokenizer = _read_tokenizer(path, model.cfg)
    model.attach_tokenizer(tokenizer)
    return tokenizer, sorted(fresh)
