"""Runtime commands: `simulate` (stream a wav through the model as live audio), `bench` (step time,
capacity, long sessions) and `demo` (simulate the bundled example conversation)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from microturn.runtime import VOICES

EXAMPLES = Path(__file__).resolve().parent / "examples"


def add_voice_argument(parser: argparse.ArgumentParser) -> None:
    """`--voice` (EngineConfig.voice) for every command that runs the model."""
    parser.add_argument(
        "--voice",
        choices=VOICES,
        default=VOICES[0],
        help="what says the model's words: the corpus voice's unit for each word (words) or the learned "
        "mel head and vocoder (mel)",
    )


def _load(args: argparse.Namespace):
    import torch

    from microturn.runtime.checkpoint import load_runtime

    torch.set_num_threads(1)  # the real-time budget is one core per engine
    return load_runtime(args.checkpoint, int8=args.int8)


def _system(models, args: argparse.Namespace):
    from microturn.runtime.engine import EngineConfig
    from microturn.runtime.model_system import ModelSystem

    return ModelSystem(
        models.model, models.tokenizer, models.vocoder, EngineConfig(voice=args.voice), seed=args.seed
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    from microturn.runtime.simulate import find_inputs, read_input, simulate_one

    source = Path(args.input)
    if not source.exists():
        raise FileNotFoundError(f"{source}: input not found")
    background = Path(args.background) if args.background else None
    if source.is_dir():
        paths = find_inputs(source)
        inputs = [read_input(p) for p in paths]  # every input checked before anything is written
    else:
        if args.out is None:
            raise ValueError("simulate: --out DIR is needed for a single input file")
        inputs = [read_input(source, background)]
    models = _load(args)
    system = _system(models, args)
    for i, item in enumerate(inputs, 1):
        out_dir = Path(args.out) if not source.is_dir() else item.path.parent
        run = simulate_one(system, item, out_dir, str(models.checkpoint), plot=not source.is_dir())
        print(
            f"[{i}/{len(inputs)}] {item.path}: {len(run.words)} words,"
            f" compute p50 {run.compute_ms(0.5):.1f} ms p99 {run.compute_ms(0.99):.1f} ms per 200 ms step"
            f" -> {out_dir / 'output.wav'}"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from microturn.runtime.bench import BenchPlan, run_bench

    plan = BenchPlan.quick() if args.quick else BenchPlan()
    plan.threads = args.threads
    plan.engines = args.engines if args.engines is not None else (os.cpu_count() or 1)
    plan.flow_steps = args.flow_steps
    plan.voice = args.voice
    result = run_bench(_load(args), plan)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from microturn.runtime.simulate import read_input, simulate_one

    example = EXAMPLES / "conversation.wav"
    out_dir = Path(args.out)
    item = read_input(example, EXAMPLES / "conversation.background.json")
    models = _load(args)
    run = simulate_one(_system(models, args), item, out_dir, str(models.checkpoint))
    said = " ".join(w["text"] for w in run.words) or "(nothing)"
    print(f"example conversation: {example} ({len(item.samples) / 16000:.1f} s)")
    print(f"checkpoint: {models.checkpoint}")
    print(f"the model said: {said}")
    floors = [s.floor for s in run.steps]
    print("floor: " + ", ".join(f"{f} {floors.count(f)}" for f in sorted(set(floors))) + " micro-turns")
    print(
        f"compute per 200 ms micro-turn: p50 {run.compute_ms(0.5):.1f} ms, p99 {run.compute_ms(0.99):.1f} ms"
    )
    for name in ("output.wav", "timeline.json", "timeline.png"):
        print(f"wrote {out_dir / name}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="model checkpoint folder (default: the shipped one)")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the Linear layers")
    add_voice_argument(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("simulate", help="stream a wav (or FDB sample folders) through the model")
    p.add_argument("input", help="a wav (8/16/24/48 kHz) or a folder of Full-Duplex-Bench sample folders")
    p.add_argument(
        "--out", default=None, help="output folder (single file); folders get output.wav per sample"
    )
    p.add_argument("--background", default=None, help="background text JSON [{time, text}] (single file)")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(func=cmd_simulate)

    p = subparsers.add_parser("bench", help="measure step time, real-time capacity and long sessions")
    p.add_argument("--json", action="store_true", help="print the result as one line of JSON")
    p.add_argument("--quick", action="store_true", help="a few seconds' smoke run (CI)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the batched capacity search")
    p.add_argument(
        "--engines",
        type=int,
        default=None,
        help="engine processes (one thread each) sharing the sessions for max_realtime_sessions "
        "(default: the CPU count)",
    )
    p.add_argument(
        "--flow-steps", type=int, default=None, help="Euler steps of the mel head (default: the checkpoint's)"
    )
    _common(p)
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("demo", help="simulate the bundled example conversation")
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(func=cmd_demo)
