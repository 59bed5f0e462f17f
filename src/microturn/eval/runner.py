"""Run one duplex system over Full-Duplex-Bench sample folders and score it.

For every sample: stream input.wav through the system (with the runtime's real-time loop, passed in as
`stream`), write output.wav and output.json (transcribed offline) into the output folder (the data
folder is never written to), and compute the sample's metrics. The flat aggregate is in `BenchRun.metrics`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from microturn.audio import write_wav
from microturn.eval import fdbench, overlap
from microturn.eval.activity import speech_segments
from microturn.eval.samples import Sample, check_sample, find_sample_dirs, read_sample
from microturn.eval.transcribe import transcribe
from microturn.runtime.system import BackgroundText, DuplexSystem

# stream(system, input samples, background) -> the system's output, 16 kHz, sample 0 aligned with the input
StreamFn = Callable[[DuplexSystem, np.ndarray, list[BackgroundText]], np.ndarray]
BACKGROUND_MODES = ("oracle",)  # `embedded` and a URL come with the background model


@dataclass
class BenchRun:
    system: str
    background: str
    metrics: dict  # flat keys, see fdbench.aggregate
    records: list[dict] = field(default_factory=list)  # one per sample
    out_dir: Path | None = None


def score_sample(sample: Sample, output: np.ndarray, transcript: dict) -> dict:
    """The per-sample record of `sample`'s task, from the system's output audio and its transcript."""
    words = fdbench.words_from_transcript(transcript)
    first = sample.annotations[0] if sample.annotations else None
    if sample.task == "pause":
        return fdbench.pause_metrics(words)
    if sample.task == "turn_taking":
        return fdbench.turn_taking_metrics(words, first.start)
    if sample.task == "interruption":
        return fdbench.interruption_metrics(words, first.start, first.end, output)
    if sample.task == "backchannel":
        segments = speech_segments(output)
        reference = [a.start for a in sample.annotations]
        return fdbench.backchannel_metrics(segments, words, sample.duration_s, reference)
    if sample.task == "overlap":
        behaviour = overlap.classify_overlap(output, words, first.start, first.end, first.extra["reply"])
        return overlap.overlap_record(first.extra["scenario"], behaviour)
    raise AssertionError(sample.task)


def run_fdbench(
    data_dir: str | Path,
    system_factory: Callable[[], DuplexSystem],
    stream: StreamFn,
    out_dir: str | Path,
    background_mode: str = "oracle",
    system_name: str = "system",
    task: str | None = None,
) -> BenchRun:
    """Run and score `system_factory()` (a fresh system per sample) on every sample folder under
    `data_dir`. Outputs go to out_dir/<system_name>/<sample path relative to data_dir>/, per-sample records
    to out_dir/<system_name>/samples.jsonl. `task` restricts the run to folders of that task (others
    raise)."""
    if background_mode not in BACKGROUND_MODES:
        raise ValueError(
            f"background mode {background_mode!r} is not available yet (only {', '.join(BACKGROUND_MODES)})"
        )
    data_dir = Path(data_dir)
    folders = find_sample_dirs(data_dir)
    for folder in folders:  # every folder checked before any is run: a bad one fails in seconds
        check_sample(folder, task)
    run_dir = Path(out_dir) / system_name
    records = []
    for folder in tqdm(folders, desc=f"fdbench {system_name}", unit="sample"):
        sample = read_sample(folder, task)
        rel = sample.path.relative_to(data_dir)
        sample_out = run_dir / rel
        sample_out.mkdir(parents=True, exist_ok=True)
        output = np.asarray(stream(system_factory(), sample.input, sample.background), dtype=np.float32)
        output = np.pad(output[: len(sample.input)], (0, max(0, len(sample.input) - len(output))))
        write_wav(sample_out / "output.wav", output)
        transcript = transcribe(output)
        (sample_out / "output.json").write_text(json.dumps(transcript, indent=1))
        record = {
            "sample": str(rel),
            "task": sample.task,
            "input": str(sample.path),
            "output": str(sample_out),
            **score_sample(sample, output, transcript),
        }
        records.append(record)
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return BenchRun(system_name, background_mode, fdbench.aggregate(records), records, run_dir)
