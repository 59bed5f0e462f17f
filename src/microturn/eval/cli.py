"""Evaluation commands: `eval fdbench` (Full-Duplex-Bench v1 and v1.5 folders, the model and the harness
baseline side by side) and `eval export-overlap` (v1.5 scenarios from held-out conversations) here;
`background`, `rendering`, `proactive` and `onsets` in their own modules."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from microturn.runtime.cli import add_voice_argument

SYSTEMS = ("model", "harness")


def _background_model(args: argparse.Namespace, opening_words: int | None = None):
    """None for `oracle`; else the real background model on the loop's simulated clock, its backend (and
    Whisper) loaded and warmed up once, so no task's latency counts loading. `opening_words`: how the
    answer reaches the system (`WorkerConfig.opening_words`; the harness's TTS takes whole sentences)."""
    if args.background == "oracle":
        return None
    from microturn.background.backends import backend_from_spec
    from microturn.background.offline import SimulatedBackground
    from microturn.background.worker import WorkerConfig

    if getattr(args, "_backend", None) is None:
        args._backend = backend_from_spec(args.background)
        if args._backend is None:
            raise ValueError("--background off: use oracle, embedded or a URL")
    config = WorkerConfig(timeout_s=args.background_timeout)
    if opening_words is not None:
        config = replace(config, opening_words=opening_words)
    background = SimulatedBackground(args._backend, config)
    background.warm_up()
    return background


def _model_factory(args: argparse.Namespace):
    from microturn.runtime.model_system import model_system_factory

    return model_system_factory(args.checkpoint, args.seed, _background_model(args), args.voice)


def _harness_factory(args: argparse.Namespace):
    from microturn.eval.harness import CascadeHarness

    # loads Whisper, piper and the VAD once; reset() starts each sample afresh
    harness = CascadeHarness(background_model=_background_model(args, opening_words=0))
    return lambda: harness


def cmd_fdbench(args: argparse.Namespace) -> int:
    from microturn.eval.report import write_report
    from microturn.eval.runner import EchoSpec, parse_delay_ms, run_fdbench
    from microturn.runtime.stream_loop import run_stream

    systems = list(SYSTEMS) if args.system == "both" else [args.system]
    factories = {"model": _model_factory, "harness": _harness_factory}
    echo = None
    if args.echo_db is not None:
        echo = EchoSpec(args.echo_db, parse_delay_ms(args.echo_delay_ms), seed=args.seed)
    out = Path(args.out)
    runs = []
    for name in systems:
        factory = factories[name](args)
        run = run_fdbench(
            args.dir,
            factory,
            run_stream,
            out,
            args.background,
            system_name=name,
            task=args.task,
            echo=echo,
            per_folder=args.n,
        )
        runs.append(run)
        condition = f", {echo.describe()}" if echo else ""
        print(f"{name} ({args.background} background{condition}): " + json.dumps(run.metrics))
    report = write_report(out, runs)
    if args.json:  # the same flat metrics that write_report put beside the report
        shutil.copyfile(report.parent / "metrics.json", args.json)
    print(f"report: {report}")
    return 0


def cmd_export_overlap(args: argparse.Namespace) -> int:
    from microturn.eval.overlap import export_overlap

    n = export_overlap(args.source, args.out, args.n, seed=args.seed)
    print(f"wrote {n} v1.5 overlap samples to {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="benchmarks: Full-Duplex-Bench v1/v1.5")
    sub = parser.add_subparsers(dest="eval_command", required=True)

    fdb = sub.add_parser("fdbench", help="run a system over Full-Duplex-Bench sample folders and score it")
    fdb.add_argument("dir", help="folder of sample folders (input.wav + the task's annotation JSON)")
    fdb.add_argument("--system", choices=[*SYSTEMS, "both"], default="both")
    fdb.add_argument("--checkpoint", default=None, help="model checkpoint folder (default: the embedded one)")
    add_voice_argument(fdb)
    fdb.add_argument(
        "--background",
        default="oracle",
        help="oracle (the held-out reply text at the corpus's delay), embedded (SmolLM2) or an "
        "OpenAI-compatible base URL[#model]: the real background model, its latency measured",
    )
    fdb.add_argument(
        "--background-timeout", type=float, default=30.0, help="seconds a background task may take (as live)"
    )
    fdb.add_argument("--task", default=None, help="only accept folders of this task")
    fdb.add_argument("--out", default="out/fdbench", help="where outputs, report.md and plots go")
    fdb.add_argument("--json", default=None, help="also write the flat metrics here")
    fdb.add_argument("--seed", type=int, default=0)
    fdb.add_argument("--n", type=int, default=None, help="at most this many samples of each task folder")
    fdb.add_argument(
        "--echo-db",
        type=float,
        default=None,
        help="leak the system's own output into its input at this level (dB, e.g. -10): a loudspeaker echo",
    )
    fdb.add_argument(
        "--echo-delay-ms", default="50-150", help="the echo's delay, N or LOW-HIGH ms (drawn per sample)"
    )
    fdb.set_defaults(func=cmd_fdbench)

    ov = sub.add_parser("export-overlap", help="v1.5 overlap scenario folders from held-out talks")
    ov.add_argument("--from", dest="source", required=True, help="a corpus folder (valid/test split)")
    ov.add_argument("--out", required=True)
    ov.add_argument("--n", type=int, default=25, help="samples per scenario")
    ov.add_argument("--seed", type=int, default=0)
    ov.set_defaults(func=cmd_export_overlap)

    from microturn.background.cli import add_parser as add_background_parser
    from microturn.eval.rendering import add_parser as add_rendering_parser

    add_background_parser(sub)
    add_rendering_parser(sub)

    from microturn.eval.onsets import add_parser as add_onsets_parser
    from microturn.eval.proactive import add_parser as add_proactive_parser

    add_proactive_parser(sub)
    add_onsets_parser(sub)
