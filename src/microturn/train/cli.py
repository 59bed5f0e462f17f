"""`microturn train`: train the interaction model on a corpus (`python -m microturn.train` for torchrun)."""

from __future__ import annotations

import argparse
from dataclasses import fields

import torch

from ..model.config import CONFIGS, get_config
from ..model.interaction import InteractionModel
from .loop import TrainOptions, train


def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = {f.name: f.default for f in fields(TrainOptions)}
    p.add_argument("--config", required=True, choices=sorted(CONFIGS), help="model size")
    p.add_argument(
        "--data", help="training corpus folder(s), comma-separated (manifest.jsonl + conversation folders)"
    )
    p.add_argument("--out", help="run folder: checkpoint/, metrics.jsonl")
    p.add_argument("--valid", help="validation corpus folder (losses per stream every --eval-every steps)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint if there is one")
    p.add_argument("--print-params", action="store_true", help="print the parameter count and exit")
    for name in (
        "steps",
        "seed",
        "batch_size",
        "min_turns",
        "max_turns",
        "warmup",
        "log_every",
        "eval_every",
        "valid_batches",
        "checkpoint_every",
        "threads",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=defaults[name])
    for name in (
        "lr",
        "weight_decay",
        "grad_clip",
        "checkpoint_minutes",
        "refresh_minutes",
        "proactive_gate_weight",
        "stop_gate_weight",
        "wait_act_gate_weight",
        "pause_gate_weight",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=defaults[name])
    p.add_argument(
        "--tokenizer", help="use this tokenizer.json instead of training one on the chitchat train split"
    )
    p.add_argument(
        "--init", help="start from this checkpoint's weights and tokenizer (new optimizer, step 0)"
    )
    p.add_argument(
        "--trainable",
        help="comma-separated parameter-name prefixes to train (e.g. mel_head,text_head); the rest is frozen",
    )
    p.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the model config (repeatable), e.g. flow_layers=4 to grow the mel head",
    )
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP instead of DDP (under torchrun)")


def run(args: argparse.Namespace) -> int:
    if args.print_params:
        with torch.device("meta"):  # counts without allocating (large has ~1B parameters)
            model = InteractionModel(get_config(args.config))
        trunk = sum(p.numel() for p in model.blocks.parameters())
        print(f"{args.config}: {model.num_params():,} parameters ({trunk:,} in the transformer blocks)")
        return 0
    if not args.data or not args.out:
        raise ValueError("train needs --data and --out (or --print-params)")
    names = {f.name for f in fields(TrainOptions)}
    opts = TrainOptions(
        **{k: v for k, v in vars(args).items() if k in names and k != "model_set"},
        model_set=tuple(args.model_set),
    )
    train(opts, resume=args.resume)
    return 0


def plot(args: argparse.Namespace) -> int:
    from .plot import plot_run

    print(plot_run(args.run, args.out))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the interaction model", description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run)
    p = subparsers.add_parser("plot-training", help="plot a run's loss per stream (train and valid) vs step")
    p.add_argument("run", help="run folder with metrics.jsonl")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(func=plot)
