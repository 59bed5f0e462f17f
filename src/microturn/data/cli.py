"""`microturn data synth | stats | export-fdbench`."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from microturn.data.chitchat import SPLITS
from microturn.data.synth import SHAPES


def synth_overrides(pairs: list[str]) -> dict[str, float | int]:
    """`--synth KEY=VALUE` pairs -> `SynthConfig` field values (numbers, typed as the field's default)."""
    from microturn.data.synth import SynthConfig

    defaults = {f.name: getattr(SynthConfig(), f.name) for f in fields(SynthConfig)}
    out: dict[str, float | int] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in defaults:
            raise ValueError(f"--synth {pair!r}: expected KEY=VALUE with KEY one of {', '.join(defaults)}")
        try:
            out[key] = type(defaults[key])(value)
        except ValueError as exc:
            raise ValueError(f"--synth {pair!r}: {key} takes a {type(defaults[key]).__name__}") from exc
    return out


def _synth(args: argparse.Namespace) -> int:
    from microturn.data.build import synth_corpus

    if args.minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {args.minutes}")
    summary = synth_corpus(
        args.out,
        args.minutes,
        args.seed,
        args.split,
        args.shape,
        args.cache,
        args.workers,
        timing_seed=args.timing_seed,
        overrides=synth_overrides(args.synth),
    )
    print(json.dumps(summary))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from microturn.data.stats import corpus_stats

    print(json.dumps(corpus_stats(args.dir)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from microturn.data.export import export_fdbench

    summary = export_fdbench(args.source, args.out, args.task, args.n)
    print(json.dumps(summary))
    return 0


def _real(args: argparse.Namespace) -> int:
    from microturn.data.export import TASKS
    from microturn.data.real import export_real_fdbench

    tasks = tuple(args.tasks.split(",")) if args.tasks else TASKS
    print(json.dumps(export_real_fdbench(args.out, tasks, args.n, args.seed)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="the synthetic full-duplex conversation corpus")
    sub = data.add_subparsers(dest="data_command", required=True)

    synth = sub.add_parser("synth", help="render conversations (resumes an interrupted run)")
    synth.add_argument("--out", required=True, help="corpus folder")
    synth.add_argument("--minutes", type=float, required=True, help="about this many minutes of conversation")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--split", choices=SPLITS, default="train")
    synth.add_argument(
        "--timing-seed",
        type=int,
        default=None,
        help="new timing for the same chats and voices (default: --seed); reuses cached units",
    )
    synth.add_argument(
        "--shape",
        choices=SHAPES,
        default="conversation",
        help="conversation, or single Full-Duplex-Bench episodes of one kind",
    )
    synth.add_argument("--cache", default=None, help="TTS unit cache folder (default: cache/tts in the repo)")
    synth.add_argument("--workers", type=int, default=1)
    synth.add_argument(
        "--synth",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a renderer field for every shape (data/synth.py SynthConfig, e.g. wait_act_after_s=0.25)",
    )
    synth.set_defaults(func=_synth)

    stats = sub.add_parser("stats", help="one JSON object describing a corpus")
    stats.add_argument("dir")
    stats.set_defaults(func=_stats)

    export = sub.add_parser("export-fdbench", help="Full-Duplex-Bench v1 sample folders from held-out data")
    export.add_argument("--from", dest="source", required=True, help="corpus folder (valid or test split)")
    export.add_argument("--out", required=True)
    export.add_argument("--task", required=True, help="pause | turn_taking | interruption | backchannel")
    export.add_argument("--n", type=int, default=None, help="at most this many samples")
    export.set_defaults(func=_export)

    real = sub.add_parser(
        "real-fdbench",
        help="Full-Duplex-Bench samples in real human voices (the read-speech clips of moonshine-voice)",
    )
    real.add_argument("--out", required=True, help="new folder; gets one folder per task")
    real.add_argument("--tasks", default=None, help="comma-separated (default: all four)")
    real.add_argument("--n", type=int, default=None, help="at most this many samples per task")
    real.add_argument("--seed", type=int, default=0)
    real.set_defaults(func=_real)
