"""Run one duplex system over Full-Duplex-Bench sample folders and score it.

For every sample: stream input.wav through the system (with the runtime's real-time loop, passed in as
`stream`), write output.wav and output.json (transcribed offline) into the output folder (the data
folder is never written to), and compute the sample's metrics. The flat aggregate is in `BenchRun.metrics`.
When the loop reports the words the system said (`run_stream` does), the sample also gets the speech word
error rate of its output against them. With `echo`, the system's own output leaks back into its input
through the loop's causal feedback path (a loudspeaker echo at a level and a delay drawn per sample).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from microturn.audio import SAMPLE_RATE, write_wav
from microturn.data.effects import EchoPath
from microturn.eval import fdbench, overlap
from microturn.eval.activity import speech_segments
from microturn.eval.samples import Sample, check_sample, find_sample_dirs, read_sample
from microturn.eval.transcribe import transcribe
from microturn.runtime.stream_loop import StreamRun
from microturn.runtime.system import DuplexSystem

# stream(system, input samples, background[, feedback=]) -> the system's output, 16 kHz, sample 0 aligned
# with the input, or the loop's StreamRun (`runtime.stream_loop.run_stream`: the output, the words said
# with their play times, and the input heard); `feedback=` is passed only when the run has an echo
StreamFn = Callable[..., np.ndarray | StreamRun]
# where the content comes from: the sample's background.json at its times, or a real background model on
# the loop's simulated clock (`background.offline`): the embedded SmolLM2 or an OpenAI-compatible URL
BACKGROUND_MODES = ("oracle", "embedded", "URL")


def check_background_mode(mode: str) -> str:
    """`oracle`, `embedded` or an http(s):// base URL (optionally `URL#model`); ValueError otherwise."""
    if mode in ("oracle", "embedded") or mode.startswith(("http://", "https://")):
        return mode
    raise ValueError(f"background mode {mode!r}: expected oracle, embedded or an http(s):// URL")


@dataclass(frozen=True)
class EchoSpec:
    """The system's own output leaking into its input: a loudspeaker echo (`data.effects.echo`: band
    300-3,400 Hz, a room tail) at `level_db`, delayed by a per-sample draw from `delay_ms` (low, high)."""

    level_db: float
    delay_ms: tuple[float, float]
    seed: int = 0

    def path(self, sample: str) -> EchoPath:
        """The echo of one sample (its delay and room drawn from the seed and the sample's path)."""
        digest = hashlib.sha256(f"{self.seed}/{sample}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        delay_ms = float(rng.uniform(*self.delay_ms))
        return EchoPath(delay_ms / 1000.0, self.level_db, rng)

    def describe(self) -> str:
        low, high = self.delay_ms
        delay = f"{low:g} ms" if low == high else f"{low:g}-{high:g} ms"
        return f"echo {self.level_db:g} dB, {delay}"

    def as_dict(self) -> dict:
        return {"level_db": self.level_db, "delay_ms": list(self.delay_ms), "seed": self.seed}


def parse_delay_ms(text: str) -> tuple[float, float]:
    """ "100" or "50-150" (milliseconds) -> (low, high)."""
    parts = text.split("-")
    try:
        low, high = (float(parts[0]), float(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or high is None or not 0 <= low <= high:
        raise ValueError(f"echo delay {text!r}: expected milliseconds as N or LOW-HIGH, 0 <= LOW <= HIGH")
    return low, high


@dataclass
class BenchRun:
    system: str
    background: str
    metrics: dict  # flat keys, see fdbench.aggregate
    records: list[dict] = field(default_factory=list)  # one per sample
    out_dir: Path | None = None
    echo: EchoSpec | None = None  # the input condition: clean, or the system's own echo leaking in


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
    echo: EchoSpec | None = None,
    per_folder: int | None = None,
) -> BenchRun:
    """Run and score `system_factory()` (a fresh system per sample) on every sample folder under
    `data_dir`. Outputs go to out_dir/<system_name>/<sample path relative to data_dir>/, per-sample records
    to out_dir/<system_name>/samples.jsonl. `task` restricts the run to folders of that task (others
    raise). `echo` feeds the system's played output back into its input (then `heard.wav` beside
    output.wav is the input it heard); it needs a `stream` that takes `feedback=`, as `run_stream` does.
    `per_folder` keeps only the first N samples (sorted) of each folder of samples (a task folder), for
    quick subsets."""
    check_background_mode(background_mode)
    data_dir = Path(data_dir)
    folders = find_sample_dirs(data_dir)
    if per_folder is not None:
        groups: dict[Path, list[Path]] = {}
        for folder in folders:
            groups.setdefault(folder.parent, []).append(folder)
        folders = sorted(f for group in groups.values() for f in group[:per_folder])
    for folder in folders:  # every folder checked before any is run: a bad one fails in seconds
        check_sample(folder, task)
    run_dir = Path(out_dir) / system_name
    records = []
    for folder in tqdm(folders, desc=f"fdbench {system_name}", unit="sample"):
        sample = read_sample(folder, task)
        rel = sample.path.relative_to(data_dir)
        sample_out = run_dir / rel
        sample_out.mkdir(parents=True, exist_ok=True)
        extra: dict = {}
        feedback = {}
        if echo is not None:
            feedback["feedback"] = path = echo.path(str(rel))
            extra["echo_delay_ms"] = round(path.delay_s * 1000.0, 1)
        system = system_factory()
        if background_mode == "oracle":
            background = sample.background
        elif getattr(system, "background_model", None) is None:
            raise ValueError(f"{system_name}: background mode {background_mode!r} needs a background_model")
        else:
            background = []  # the real background model's answers, never the held-out text
        result = stream(system, sample.input, background, **feedback)
        if (tasks := getattr(system, "background_log", None)) is not None:
            extra["background"] = list(tasks)  # trigger times, latencies, the text delivered
        said = None
        if isinstance(result, StreamRun):
            said = result.words
            (sample_out / "said.json").write_text(json.dumps(said, indent=1))
            if result.heard is not None:
                write_wav(sample_out / "heard.wav", np.clip(result.heard, -1.0, 1.0))
            result = result.output
        output = np.asarray(result, dtype=np.float32)
        output = np.pad(output[: len(sample.input)], (0, max(0, len(sample.input) - len(output))))
        write_wav(sample_out / "output.wav", output)
        transcript = transcribe(output)
        (sample_out / "output.json").write_text(json.dumps(transcript, indent=1))
        if said is not None:  # the words said whose audio played to its end, against Whisper's text
            end_s = len(output) / SAMPLE_RATE
            spoken = [w["text"] for w in said if w["end"] <= end_s + 1e-6]
            extra.update(fdbench.speech_errors(spoken, transcript["text"].split()))
        record = {
            "sample": str(rel),
            "task": sample.task,
            "input": str(sample.path),
            "output": str(sample_out),
            **score_sample(sample, output, transcript),
            **extra,
        }
        records.append(record)
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = fdbench.aggregate(records)
    if background_mode != "oracle":
        from microturn.background.offline import background_stats

        metrics.update(background_stats([t for r in records for t in r.get("background", [])]))
    return BenchRun(system_name, background_mode, metrics, records, run_dir, echo)
