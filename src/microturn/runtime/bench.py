"""`microturn bench`: step time, real-time capacity and long-session behaviour of the runtime engine.

Every figure is measured through `Engine.step_once` (input cutting, log-mel, the batched model step, the
vocoder, the 24 kHz resampler, the per-session bookkeeping), with real speech as input (the example
conversation, looped, each session at its own offset), so the model decides when to speak as it would live.
Wall times are what a user gets; the stepping thread's CPU times are what other processes sharing the
machine cannot inflate. Step times are taken in steady state: every session's KV ring is full, as it is
after the first `window` tokens (51.2 s for small), since a younger session attends over fewer slots and
steps faster. The figures and keys are listed in docs/runtime.md ("bench").
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from microturn.audio import SAMPLE_RATE, read_wav
from microturn.model.streaming import StreamState
from microturn.runtime.checkpoint import RuntimeModels, load_runtime
from microturn.runtime.engine import BatchState, Engine, EngineConfig
from microturn.runtime.session import Session

EXAMPLE_WAV = Path(__file__).resolve().parent / "examples" / "conversation.wav"
SESSION_COUNTS = (1, 8, 16, 32, 64, 96, 128, 192, 256)


@dataclass
class BenchPlan:
    single_steps: int = 300  # one minute of micro-turns
    batch_steps: int = 25
    hour_steps: int = 18_000  # one hour of 200 ms micro-turns
    window_steps: int = 3_000  # ten minutes: the windows step_drift compares
    budget_ms: float = 100.0
    threads: int = 1
    engines: int = 1  # engine processes for max_realtime_sessions (sessions split evenly between them)
    flow_steps: int | None = None  # Euler steps of the mel head (None: the checkpoint's)
    voice: str = "words"  # EngineConfig.voice
    batch_invariant_sessions: int = 16
    session_counts: tuple[int, ...] = SESSION_COUNTS

    @classmethod
    def quick(cls) -> BenchPlan:
        """A smoke run of a few seconds: every figure computed, none of them meaningful."""
        return cls(
            single_steps=10,
            batch_steps=3,
            hour_steps=60,
            window_steps=20,
            batch_invariant_sessions=2,
            session_counts=(1, 4),
        )


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def speech_input() -> np.ndarray:
    """The example conversation (16 kHz), or quiet noise if the package was installed without it."""
    if EXAMPLE_WAV.exists():
        samples, _ = read_wav(EXAMPLE_WAV)
        return samples
    return (np.random.default_rng(0).standard_normal(SAMPLE_RATE * 8) * 0.01).astype(np.float32)


# Each session is made to speak for SPEECH_TURNS of every SPEECH_PERIOD micro-turns (at its own phase), as
# a client's response.create / response.cancel would: the trained model alone rarely takes the floor on
# the example input (and once made to, rarely stops), and a step without speech would measure neither the
# text decoder, the flow head nor the vocoder.
SPEECH_PERIOD, SPEECH_TURNS = 25, 10


class Feeder:
    """Feeds each session its own stretch of the looped input, one micro-turn per step, and asks it to
    speak 40% of the time."""

    def __init__(self, sessions: list[Session], hop: int, samples: np.ndarray):
        self.sessions, self.hop, self.samples = sessions, hop, samples
        # each session starts at its own place in the loop
        self.positions = [(i * 7919 * hop // 3) % len(samples) for i in range(len(sessions))]
        self.turn = 0

    def feed(self) -> None:
        for i, session in enumerate(self.sessions):
            idx = np.arange(self.positions[i], self.positions[i] + self.hop) % len(self.samples)
            session.push_audio(self.samples[idx], SAMPLE_RATE)
            self.positions[i] += self.hop
            phase = (self.turn + i * 7) % SPEECH_PERIOD
            if phase == 0:
                session.request_speech(SPEECH_TURNS)
            elif phase == SPEECH_TURNS:
                session.cancel_speech()
        self.turn += 1


@dataclass
class StepTimes:
    wall_ms: np.ndarray  # each step's wall time
    cpu_ms: np.ndarray  # each step's CPU time on the stepping thread (what other processes cannot inflate)
    speaking: float  # fraction of session micro-turns in which the model spoke
    spoke: np.ndarray  # each step's number of speaking sessions


def run_steps(engine: Engine, feeder: Feeder, steps: int, label: str) -> StepTimes:
    """Step the engine `steps` times as fast as possible."""
    wall, cpu, spoke = np.zeros(steps), np.zeros(steps), np.zeros(steps, dtype=int)
    total = 0
    started = last = time.perf_counter()
    for i in range(steps):
        feeder.feed()
        t0, c0 = time.perf_counter(), time.thread_time()
        outputs = engine.step_once()
        wall[i], cpu[i] = (time.perf_counter() - t0) * 1000.0, (time.thread_time() - c0) * 1000.0
        spoke[i] = sum(o.speaking for o in outputs.values())
        total += len(outputs)
        now = time.perf_counter()
        if now - last > 10.0:
            rate = (i + 1) / (now - started)
            progress(
                f"{label}: {i + 1}/{steps} steps, {rate:.1f} steps/s, ETA {(steps - i - 1) / rate:.0f} s"
            )
            last = now
    return StepTimes(wall, cpu, int(spoke.sum()) / max(total, 1), spoke)


def ms(values: np.ndarray, q: float) -> float:
    return round(float(np.quantile(values, q)), 3)


def new_engine(
    models: RuntimeModels,
    sessions: int,
    batch_invariant: bool = False,
    threads: int = 1,
    large_batch_threads: int = 1,
    ring: StreamState | None = None,
    plan: BenchPlan | None = None,
) -> tuple[Engine, Feeder]:
    """An engine with `sessions` live sessions, speaking with `plan`'s mel steps and voice; with `ring` (a
    one-session model state whose KV ring is full), every session starts from a copy of it, so the steps
    measured are steady-state ones."""
    plan = plan or BenchPlan()
    config = EngineConfig(
        max_sessions=max(sessions, 1),
        batch_invariant=batch_invariant,
        threads=threads,
        large_batch_threads=large_batch_threads,
        flow_steps=plan.flow_steps,
        voice=plan.voice,
    )
    engine = Engine(config, models.model, models.tokenizer, models.vocoder)
    opened = [engine.open_session(seed=i) for i in range(sessions)]
    feeder = Feeder(opened, engine.chunk_samples, speech_input())
    if ring is not None and sessions:
        engine.step_once()  # the sessions join
        model = engine.state.model
        with torch.inference_mode():  # the engine's state tensors are inference tensors
            for target, source in zip(
                [*model.keys, *model.values, model.slot_pos, model.turn, model.out_token],
                [*ring.keys, *ring.values, ring.slot_pos, ring.turn, ring.out_token],
                strict=True,
            ):
                target.copy_(source.expand_as(target))
    return engine, feeder


def full_ring(models: RuntimeModels, plan: BenchPlan | None = None) -> StreamState:
    """One session's model state after enough micro-turns of the example input to fill its KV ring."""
    engine, feeder = new_engine(models, 1, plan=plan)
    # two tokens per micro-turn, the last micro-turn's out token entering the ring with the next step
    turns = -(-(models.model.cfg.window + 1) // 2)
    run_steps(engine, feeder, turns, "filling a KV ring")
    return engine.state.model.select([0])


def state_bytes(state: BatchState) -> int:
    tensors = [
        *state.model.keys,
        *state.model.values,
        state.model.slot_pos,
        state.model.turn,
        state.model.seeds,
        state.model.out_token,
        *state.vocoder.conv_inputs,
        state.vocoder.ola_tail,
        state.resampler.history,
        state.mel_history,
    ]
    return sum(t.numel() * t.element_size() for t in tensors)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def capacity_sweep(
    models: RuntimeModels,
    plan: BenchPlan,
    ring: StreamState,
    large_batch_threads: int,
    kinds: tuple[str, ...],
) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
    """For each of `kinds` ("wall", "cpu"), the largest batch up to which every tried batch's p99 step
    fitted the budget, and each tried batch's p99s. The search goes on while any kind fits."""
    fits = dict.fromkeys(kinds, 0)
    failed: set[str] = set()
    p99s = {}
    for n in plan.session_counts:
        engine, feeder = new_engine(
            models,
            n,
            threads=plan.threads,
            large_batch_threads=large_batch_threads,
            ring=ring,
            plan=plan,
        )
        run_steps(engine, feeder, 2, f"{n} sessions warm-up")
        batch = run_steps(engine, feeder, plan.batch_steps, f"{n} sessions")
        p99 = {kind: ms(batch.wall_ms if kind == "wall" else batch.cpu_ms, 0.99) for kind in kinds}
        p99s[str(n)] = p99
        threads = torch.get_num_threads()
        progress(
            f"{n} sessions, {threads} threads: p99 step " + ", ".join(f"{v} ms {k}" for k, v in p99.items())
        )
        for kind in kinds:
            if kind in failed:
                continue
            if p99[kind] <= plan.budget_ms:
                fits[kind] = n
            else:
                failed.add(kind)
        if len(failed) == len(kinds):
            break
    return fits, p99s


def run_paced(engine: Engine, feeder: Feeder, steps: int, t0: float, until=None) -> StepTimes:
    """Step the engine on the real-time clock: step i starts at t0 + i * micro-turn (or as soon as the
    previous one ends, if it overran). After `steps` timed steps it goes on, untimed, while `until()`."""
    wall, cpu = np.zeros(steps), np.zeros(steps)
    i = 0
    while i < steps or (until is not None and until()):
        wait = t0 + i * engine.turn_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        feeder.feed()
        w, c = time.perf_counter(), time.thread_time()
        engine.step_once()
        if i < steps:
            wall[i], cpu[i] = (time.perf_counter() - w) * 1000.0, (time.thread_time() - c) * 1000.0
        i += 1
    return StepTimes(wall, cpu, 0.0, np.zeros(steps, dtype=int))


def _engine_process(conn, checkpoint: str, int8: bool, ring: StreamState, plan: BenchPlan, sync) -> None:
    """One engine process of the multi-engine sweep: for each (sessions, steps) it receives, an engine
    with that many sessions from the full ring, stepped with one torch thread on the real-time clock (one
    step per 200 ms micro-turn, every engine on the same schedule, so their steps coincide); it goes on
    stepping until every engine has finished its timed steps, so each is measured while the others run."""
    barrier, finished, engines = sync
    # Its own session, as separately started servers would be: Linux's autogroup scheduler then gives each
    # engine process its own share of the CPU instead of one share for all of them.
    os.setsid()
    torch.set_num_threads(1)
    models = load_runtime(checkpoint, int8=int8)
    while (job := conn.recv()) is not None:
        sessions, steps = job
        engine, feeder = new_engine(models, sessions, ring=ring, plan=plan)
        run_steps(engine, feeder, 2, "warm-up")
        barrier.wait()
        turn = engine.turn_s
        t0 = (time.monotonic() // turn + 2) * turn  # the same clock in every engine process

        def others_running() -> bool:
            return finished.value < engines

        timed = run_paced(engine, feeder, steps, t0)
        with finished.get_lock():
            finished.value += 1
        run_paced(engine, feeder, 0, t0 + steps * turn, until=others_running)
        conn.send({"wall": ms(timed.wall_ms, 0.99), "cpu": ms(timed.cpu_ms, 0.99)})


def engines_sweep(
    models: RuntimeModels, plan: BenchPlan, ring: StreamState
) -> tuple[dict[str, int], dict[str, dict[str, list[float]]]]:
    """`plan.engines` engine processes, one torch thread each, with the sessions split evenly between them,
    all stepping in real time on the same clock: for "wall" and "cpu", the largest total up to which every
    tried total's p99 step fitted the budget in every engine, and each tried total's p99s per engine."""
    n_engines = plan.engines
    ctx = multiprocessing.get_context("spawn")
    sync = (ctx.Barrier(n_engines), ctx.Value("i", 0), n_engines)
    workers = []
    for _ in range(n_engines):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_engine_process,
            args=(child, str(models.checkpoint), models.int8, ring, plan, sync),
            daemon=True,
        )
        proc.start()
        workers.append((proc, parent))
    fits, failed, p99s = {"wall": 0, "cpu": 0}, set(), {}
    try:
        for total in plan.session_counts:
            if total < n_engines:
                continue
            shares = [total // n_engines + (i < total % n_engines) for i in range(n_engines)]
            sync[1].value = 0
            for (_, conn), share in zip(workers, shares, strict=True):
                conn.send((share, plan.batch_steps))
            results = [conn.recv() for _, conn in workers]
            p99s[str(total)] = {kind: [r[kind] for r in results] for kind in fits}
            progress(
                f"{total} sessions on {n_engines} engine processes ({'+'.join(map(str, shares))}): "
                f"p99 step {', '.join(str(r['wall']) for r in results)} ms wall, "
                f"{', '.join(str(r['cpu']) for r in results)} ms cpu"
            )
            for kind in fits:
                if kind not in failed and max(r[kind] for r in results) <= plan.budget_ms:
                    fits[kind] = total
                else:
                    failed.add(kind)
            if len(failed) == len(fits):
                break
    finally:
        for proc, conn in workers:
            conn.send(None)
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return fits, p99s


def run_bench(models: RuntimeModels, plan: BenchPlan) -> dict:
    result: dict = {}
    torch.set_num_threads(1)
    ring = full_ring(models, plan)
    progress(f"single session, 1 thread, {plan.single_steps} micro-turns")
    engine, feeder = new_engine(models, 1, ring=ring, plan=plan)
    run_steps(engine, feeder, 5, "warm-up")
    single = run_steps(engine, feeder, plan.single_steps, "single session")
    result["step_ms_p50"] = ms(single.wall_ms, 0.5)
    result["step_ms_p99"] = ms(single.wall_ms, 0.99)
    result["realtime_factor"] = round(result["step_ms_p50"] / (engine.turn_s * 1000.0), 4)
    result["step_cpu_ms_p50"] = ms(single.cpu_ms, 0.5)
    result["step_cpu_ms_p99"] = ms(single.cpu_ms, 0.99)
    result["speaking_fraction"] = round(single.speaking, 3)
    # the two kinds of step the p50 falls between: speaking (text decoder, flow head, vocoder) and listening
    for kind, steps in (("speaking", single.spoke > 0), ("listening", single.spoke == 0)):
        result[f"step_ms_p50_{kind}"] = ms(single.wall_ms[steps], 0.5) if steps.any() else None
        result[f"step_cpu_ms_p50_{kind}"] = ms(single.cpu_ms[steps], 0.5) if steps.any() else None
    progress(f"single session: p50 {result['step_ms_p50']} ms, p99 {result['step_ms_p99']} ms")

    # One engine, `plan.threads` for every batch: wall time, and the stepping thread's CPU time (what an
    # otherwise idle machine would give); then the machine: `plan.engines` single-threaded engine
    # processes stepping at once, the sessions split between them.
    fits, p99s = capacity_sweep(models, plan, ring, plan.threads, ("wall", "cpu"))
    result["max_realtime_sessions_fixed"] = fits["wall"]
    result["max_realtime_sessions_cpu"] = fits["cpu"]
    result["batch_p99_ms"] = p99s
    if plan.engines > 1:
        fits, p99s = engines_sweep(models, plan, ring)
    else:
        p99s = {n: {kind: [p[kind]] for kind in p} for n, p in p99s.items()}
    result["max_realtime_sessions"] = fits["wall"]
    result["max_realtime_sessions_engines_cpu"] = fits["cpu"]
    result["batch_p99_ms_machine"] = p99s
    result["engines"] = plan.engines

    n = plan.batch_invariant_sessions
    costs = {}
    for invariant in (False, True):
        engine, feeder = new_engine(models, n, batch_invariant=invariant, ring=ring, plan=plan)
        run_steps(engine, feeder, 2, "warm-up")
        costs[invariant] = ms(
            run_steps(engine, feeder, plan.batch_steps, f"invariant={invariant}").wall_ms, 0.5
        )
    result["batch_invariant_cost"] = {
        "sessions": n,
        "batched_ms_p50": round(costs[False], 2),
        "invariant_ms_p50": round(costs[True], 2),
        "slowdown": round(costs[True] / costs[False], 2),
    }
    progress(
        f"batch-invariant mode at {n} sessions: {result['batch_invariant_cost']['slowdown']}x the batched"
    )

    torch.set_num_threads(1)
    progress(
        f"simulated session of {plan.hour_steps} micro-turns ({plan.hour_steps * engine.turn_s / 60:.0f} min)"
    )
    engine, feeder = new_engine(models, 1, plan=plan)
    rss_before = rss_mb()
    hour = run_steps(engine, feeder, plan.hour_steps, "long session")
    w = min(plan.window_steps, plan.hour_steps // 2)
    times = hour.wall_ms
    result["step_drift"] = round(float(np.median(times[-w:]) / np.median(times[:w])), 4)
    result["step_drift_cpu"] = round(float(np.median(hour.cpu_ms[-w:]) / np.median(hour.cpu_ms[:w])), 4)
    session = engine.sessions[0]
    result["session_mb"] = round(state_bytes(engine.state) / 2**20, 3)
    result["long_session"] = {
        "micro_turns": plan.hour_steps,
        "first_window_ms_p50": ms(times[:w], 0.5),
        "last_window_ms_p50": ms(times[-w:], 0.5),
        "transcript_words": len(session.transcript),
        "rss_growth_mb": round(rss_mb() - rss_before, 1),
    }
    progress(f"long session: drift {result['step_drift']}, session state {result['session_mb']} MB")
    cfg = models.model.cfg
    result["setup"] = {
        "checkpoint": str(models.checkpoint),
        "vocoder": str(models.vocoder_checkpoint),
        "model": {
            "d_model": cfg.d_model,
            "n_layers": cfg.n_layers,
            "window": cfg.window,
            "params_m": round(sum(p.numel() for p in models.model.parameters()) / 1e6, 2),
        },
        "int8": models.int8,
        "threads_batched": plan.threads,
        "engines": plan.engines,
        "flow_steps": plan.flow_steps or cfg.flow_steps,
        "voice": plan.voice,
        "budget_ms": plan.budget_ms,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return result
