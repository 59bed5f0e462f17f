"""`microturn simulate`: stream a wav (or every Full-Duplex-Bench sample folder under a folder) through the
interaction model exactly as live audio would arrive, and write what a live user would have heard.

For one file: DIR/output.wav (16 kHz mono, the input's length, sample-aligned), DIR/timeline.json (the
model's words and floor state with the times they play at, each step's compute) and DIR/timeline.png.
For a folder: output.wav and timeline.json into each sample folder, each sample's background.json (if
present) fed as the background-model text. Every input is read and checked before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from microturn.audio import SAMPLE_RATE, AudioError, read_wav, resample, write_wav
from microturn.files import atomic_write_text
from microturn.runtime.input import SUPPORTED_RATES
from microturn.runtime.model_system import ModelSystem
from microturn.runtime.stream_loop import StreamRun, run_stream
from microturn.runtime.system import BackgroundText


@dataclass
class SimulationInput:
    path: Path
    samples: np.ndarray  # 16 kHz mono float32
    rate: int  # the file's own rate
    background: list[BackgroundText]


def read_input(path: str | Path, background_file: Path | None = None) -> SimulationInput:
    """A wav at any supported rate, resampled to 16 kHz, and its background text (a list of
    {"time", "text"}; by default the background.json next to it, if any)."""
    from microturn.eval.samples import read_background  # the FDB folder format lives with evaluation

    path = Path(path)
    samples, rate = read_wav(path, expect_rate=None)
    if rate not in SUPPORTED_RATES:
        raise AudioError(
            f"{path}: sample rate {rate} Hz is not supported (use {', '.join(map(str, SUPPORTED_RATES))})"
        )
    if background_file is None:
        background_file = path.with_name("background.json")
    return SimulationInput(path, resample(samples, rate, SAMPLE_RATE), rate, read_background(background_file))


def find_inputs(folder: Path) -> list[Path]:
    """input.wav of every sample folder under `folder` (the folder itself included)."""
    from microturn.eval.samples import find_sample_dirs

    inputs = [d / "input.wav" for d in find_sample_dirs(folder) if (d / "input.wav").is_file()]
    if not inputs:
        raise ValueError(f"{folder}: no sample folder with an input.wav")
    return inputs


def timeline(run: StreamRun, source: SimulationInput, checkpoint: str) -> dict:
    """The JSON record of one simulated session (times in seconds from the input's sample 0)."""
    turn = run.turn_s
    return {
        "input": str(source.path),
        "checkpoint": checkpoint,
        "sample_rate": SAMPLE_RATE,
        "input_sample_rate": source.rate,
        "samples": len(source.samples),
        "duration_s": round(len(source.samples) / SAMPLE_RATE, 4),
        "micro_turn_s": turn,
        "words": [{"speaker": "assistant", **w} for w in run.words],
        "floor": [
            {"start": round(s.play_s, 4), "end": round(s.play_s + turn, 4), "state": s.floor}
            for s in run.steps
        ],
        "steps": [
            {
                "index": s.index,
                "compute_ms": round(s.compute_ms, 3),
                "done_s": round(s.done_s, 4),
                "play_s": round(s.play_s, 4),
            }
            for s in run.steps
        ],
        "compute_ms": {
            "p50": round(run.compute_ms(0.5), 3),
            "p99": round(run.compute_ms(0.99), 3),
            "max": round(run.compute_ms(1.0), 3),
        },
    }


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def plot_timeline(path: Path, run: StreamRun, source: SimulationInput) -> None:
    from microturn.eval.activity import speech_segments
    from microturn.eval.plots import timeline_plot

    turn = run.turn_s
    talking = [(s.play_s, s.play_s + turn) for s in run.steps if s.floor in ("speaking", "backchannel")]
    # the floor row is drawn on the micro-turn grid: step t's state shown where its audio plays
    floor = (
        ["listening"] * round(run.steps[0].play_s / turn) + [s.floor for s in run.steps] if run.steps else []
    )
    timeline_plot(
        path,
        user_segments=[(seg.start, seg.end) for seg in speech_segments(source.samples)],
        system_words=[(w["text"], w["start"], w["end"]) for w in run.words],
        system_segments=talking,
        floor=floor,
        floor_step_s=turn,
        duration_s=len(source.samples) / SAMPLE_RATE,
        title=f"microturn simulate: {source.path.name}",
    )


def simulate_one(
    system: ModelSystem, source: SimulationInput, out_dir: Path, checkpoint: str, plot: bool = True
) -> StreamRun:
    run = run_stream(system, source.samples, source.background)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_wav(out_dir / "output.wav", run.output)
    write_json(out_dir / "timeline.json", timeline(run, source, checkpoint))
    if plot:
        plot_timeline(out_dir / "timeline.png", run, source)
    return run
