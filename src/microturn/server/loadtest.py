"""Load test on loopback: N concurrent Realtime clients streaming speech in real time into one server.

    python -m microturn.server.loadtest --clients 1,4,8,16 --seconds 20 [--checkpoint DIR | --untrained small]

The server runs in this process (uvicorn on 127.0.0.1, one engine); the clients run in a child process
so that their JSON and base64 work does not share this process's interpreter. Each client streams an
espeak-ng recording as 24 kHz PCM16 in 200 ms `input_audio_buffer.append` frames at real-time pace (looped),
and asks for the extension's per-micro-turn `microturn.turn` events.

Micro-turn latency = the moment a client receives micro-turn t's events minus the moment the engine began
the step for t (its deadline, stamped by the server): compute, fan-out, event loop and socket. A level is
held when that latency's p99 is within the budget (100 ms) and the engine missed no deadline. Every level
is bounded: at most --max-clients clients, --seconds each, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPEECH = (
    "hello there, how are you doing today? I was wondering what the weather will be like this "
    "weekend, because I would like to go for a long walk by the river if it does not rain."
)
FRAME_MS = 200
LATENCY_BUDGET_MS = 100.0


def speech_frames() -> list[str]:
    """espeak-ng speech as base64 24 kHz PCM16 frames of 200 ms."""
    from microturn.audio import read_wav, resample

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        try:
            subprocess.run(["espeak-ng", "-w", str(wav), SPEECH], check=True, capture_output=True)
        except (FileNotFoundError, subprocess.CalledProcessError) as exc:
            raise RuntimeError(f"espeak-ng could not synthesise the load test's speech ({exc})") from exc
        samples, rate = read_wav(wav, expect_rate=None)
    pcm = (np.clip(resample(samples, rate, 24_000), -1, 1) * 32767).astype("<i2")
    n = 24 * FRAME_MS
    return [base64.b64encode(pcm[i : i + n].tobytes()).decode() for i in range(0, len(pcm) - n + 1, n)]


# ---- clients (child process) ----


async def _client(url: str, frames: list[str], seconds: float, offset: int) -> list[float]:
    import websockets

    latencies: list[float] = []
    async with websockets.connect(url, max_size=None, proxy=None, compression=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {"microturn": {"turn_events": True}}}))

        async def read() -> None:
            async for message in ws:
                if '"microturn.turn"' in message:  # skip parsing audio deltas: only timing matters here
                    event = json.loads(message)
                    latencies.append((time.time() - event["step_started"]) * 1000.0)

        reader = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in range(int(seconds * 1000 / FRAME_MS)):
            await asyncio.sleep(max(0.0, start + k * FRAME_MS / 1000 - loop.time()))
            frame = frames[(k + offset) % len(frames)]
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": frame}))
        reader.cancel()
    return latencies[5:]  # the first micro-turns include joining the batch


async def _clients(url: str, frames: list[str], n: int, seconds: float) -> list[list[float]]:
    # Staggered starts and audio offsets, like independent callers.
    async def one(i: int) -> list[float]:
        await asyncio.sleep(i * FRAME_MS / 1000 / max(n, 1))
        return await _client(url, frames, seconds, offset=7 * i)

    return await asyncio.gather(*(one(i) for i in range(n)))


def _client_process(url: str, frames: list[str], n: int, seconds: float, results) -> None:
    results.put(asyncio.run(_clients(url, frames, n, seconds)))


# ---- the server side and the report ----


def run_level(engine, port: int, frames: list[str], n: int, seconds: float) -> dict:
    stats = engine.stats
    skipped_before, steps_before = stats.skipped, stats.steps
    results = mp.get_context("spawn").Queue()
    worker = mp.get_context("spawn").Process(
        target=_client_process, args=(f"ws://127.0.0.1:{port}/v1/realtime", frames, n, seconds, results)
    )
    worker.start()
    per_client = results.get(timeout=seconds + 120)
    worker.join(timeout=30)
    steps = stats.steps - steps_before
    step_ms = list(stats.step_ms)[-steps:] if steps else []
    latencies = np.array([x for client in per_client for x in client]) if per_client else np.zeros(0)
    expected = n * (seconds * 1000 / FRAME_MS - 5)
    p50, p99 = np.percentile(latencies, [50, 99]) if len(latencies) else (float("nan"),) * 2
    skipped = stats.skipped - skipped_before
    return {
        "clients": n,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "max_ms": float(latencies.max()) if len(latencies) else float("nan"),
        "step_p99_ms": float(np.percentile(step_ms, 99)) if step_ms else float("nan"),
        "skipped": skipped,
        "turns_received": int(len(latencies)),
        "turns_expected": int(expected),
        "held": bool(len(latencies) and p99 <= LATENCY_BUDGET_MS and skipped == 0),
    }


def build_engine(args: argparse.Namespace):
    import torch

    from microturn.runtime.engine import Engine, EngineConfig
    from microturn.server.cli import load_engine

    torch.set_num_threads(args.threads)
    config = EngineConfig(max_sessions=args.max_clients, threads=args.threads)
    if args.untrained is None:
        return load_engine(args.checkpoint, config, int8=args.int8)
    # Untrained weights of a named size: the step costs exactly what a trained checkpoint's does.
    from microturn.model.config import get_config
    from microturn.model.interaction import InteractionModel
    from microturn.model.tokenizer import TextTokenizer
    from microturn.runtime.vocoder import Vocoder, VocoderConfig

    cfg = get_config(args.untrained)
    tokenizer = TextTokenizer.train([SPEECH] * 10, cfg.vocab_size)
    return Engine(config, InteractionModel(cfg), tokenizer, Vocoder(VocoderConfig()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m microturn.server.loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", default="1,2,4,8", help="client counts to try, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one)")
    parser.add_argument(
        "--untrained",
        default=None,
        metavar="CONFIG",
        help="use untrained weights of this model config instead of a checkpoint (timing only)",
    )
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine")
    parser.add_argument("--max-clients", type=int, default=256, help="refuse levels above this")
    args = parser.parse_args(argv)
    try:
        levels = sorted({int(x) for x in args.clients.split(",")})
    except ValueError:
        parser.error(f"--clients: expected comma-separated integers, got {args.clients!r}")
    if not levels or levels[0] < 1 or levels[-1] > args.max_clients:
        parser.error(f"--clients: each count must be 1..{args.max_clients}")
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds: 1..600")

    from microturn.server.app import ServerConfig, create_app, serve_in_thread
    from microturn.server.security import Limits

    try:
        frames = speech_frames()
        engine = build_engine(args)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"loadtest: error: {exc}", file=sys.stderr)
        return 2
    config = ServerConfig(port=0, limits=Limits(event_burst=10_000))
    running = serve_in_thread(create_app(engine, config), "127.0.0.1", 0, config.limits.max_event_bytes)
    rows = []
    try:
        started = time.monotonic()
        for i, n in enumerate(levels, 1):
            row = run_level(engine, running.port, frames, n, args.seconds)
            rows.append(row)
            eta = (time.monotonic() - started) / i * (len(levels) - i)
            print(
                f"[{i}/{len(levels)}] {n} clients: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                f"step p99 {row['step_p99_ms']:.1f} ms, skipped {row['skipped']}, "
                f"{'held' if row['held'] else 'NOT held'} (ETA {eta:.0f} s)",
                flush=True,
            )
    finally:
        running.stop()
    held = [r["clients"] for r in rows if r["held"]]
    print(
        "\n| clients | p50 ms | p99 ms | max ms | step p99 ms | missed deadlines | turns received/expected "
        "| held |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
            f"{r['step_p99_ms']:.1f} | {r['skipped']} | {r['turns_received']}/{r['turns_expected']} | "
            f"{'yes' if r['held'] else 'no'} |"
        )
    print(
        f"\nmost sessions held with p99 micro-turn latency <= {LATENCY_BUDGET_MS:.0f} ms: "
        f"{max(held) if held else 0}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
