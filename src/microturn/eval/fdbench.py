"""Full-Duplex-Bench v1 metrics, as pure functions on timelines.

A sample's timeline is the system's output words (from `output.json`), for some tasks its output audio
(stop latency) or voice-activity segments (backchannel), and the sample's annotation times. The
definitions follow the benchmark paper (see docs/evaluation.md); the stop latency and the speech word
error rate (the words the system meant to say against what Whisper heard in its output) are ours.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import jiwer
import numpy as np
from scipy.spatial.distance import jensenshannon

from microturn.eval.activity import FRAME_S, SPEAKING_BEFORE_S, Segment, active_at, quiet_start_after

TAKEOVER_SPAN_S = 1.0
TAKEOVER_WORDS = 3
BACKCHANNEL_TAKEOVER_S = 3.0
BACKCHANNEL_MAX_S = 1.0
BACKCHANNEL_MAX_WORDS = 2
JSD_BIN_S = 0.2


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


def words_from_transcript(transcript: dict) -> list[Word]:
    """The words of an output.json transcript, sorted by start time."""
    words = [
        Word(c["text"], float(c["timestamp"][0]), float(c["timestamp"][1])) for c in transcript["chunks"]
    ]
    return sorted(words, key=lambda w: w.start)


def takeover(words: list[Word]) -> int:
    """TO of one sample: 1 if the words span >= 1 s or number more than 3; 0 without words."""
    if not words:
        return 0
    span = max(w.end for w in words) - min(w.start for w in words)
    return int(span >= TAKEOVER_SPAN_S or len(words) > TAKEOVER_WORDS)


def pause_metrics(words: list[Word]) -> dict:
    """Pause handling: any takeover of the output is a barge-in on the paused user (lower is better)."""
    return {"to": takeover(words)}


def turn_taking_metrics(words: list[Word], user_end_s: float) -> dict:
    """Smooth turn-taking: TO; latency = first word start - end of the user's speech, clipped at 0,
    defined only when TO = 1."""
    to = takeover(words)
    latency = max(0.0, words[0].start - user_end_s) if to else None
    return {"to": to, "latency_s": latency}


def interruption_metrics(words: list[Word], start_s: float, end_s: float, output: np.ndarray) -> dict:
    """User interruption: TO on the words that start after the interruption ends; latency = first such
    word - interruption end (clipped at 0, defined when TO = 1); stop latency = start of the first
    >= 500 ms quiet stretch of the output at or after the interruption's start - that start, defined when
    the system was speaking in the 200 ms before the interruption began."""
    after = [w for w in words if w.start >= end_s]
    to = takeover(after)
    latency = max(0.0, after[0].start - end_s) if to else None
    speaking = active_at(output, start_s - SPEAKING_BEFORE_S, start_s + FRAME_S)
    stop = quiet_start_after(output, start_s) - start_s if speaking else None
    return {"to": to, "latency_s": latency, "stop_s": stop, "speaking_at_interruption": speaking}


def words_in(segment: Segment, words: list[Word]) -> int:
    """Words whose midpoint falls inside the segment."""
    return sum(segment.start <= (w.start + w.end) / 2 <= segment.end for w in words)


def is_backchannel(segment: Segment, words: list[Word]) -> bool:
    return segment.duration < BACKCHANNEL_MAX_S and words_in(segment, words) <= BACKCHANNEL_MAX_WORDS


def backchannel_jsd(times: list[float], reference_times: list[float], duration_s: float) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between 0.2 s-bin histograms of the system's
    backchannel times and the reference times; 1 when either has none."""
    if not times or not reference_times:
        return 1.0
    n_bins = max(1, int(np.ceil(max(duration_s, *times, *reference_times) / JSD_BIN_S + 1e-9)))
    edges = np.arange(n_bins + 1) * JSD_BIN_S
    p, _ = np.histogram(times, bins=edges)
    q, _ = np.histogram(reference_times, bins=edges)
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2))


def backchannel_metrics(
    segments: list[Segment], words: list[Word], duration_s: float, reference_times: list[float]
) -> dict:
    """Backchannel: TO = a voice segment > 3 s; backchannels = segments < 1 s with at most 2 words;
    frequency = backchannels per second of output; JSD of their onset times against the reference."""
    backchannels = [s for s in segments if is_backchannel(s, words)]
    return {
        "to": int(any(s.duration > BACKCHANNEL_TAKEOVER_S for s in segments)),
        "n_backchannel": len(backchannels),
        "freq": len(backchannels) / duration_s if duration_s > 0 else 0.0,
        "jsd": backchannel_jsd([s.start for s in backchannels], reference_times, duration_s),
    }


# both sides of the speech WER: lowercase, punctuation removed ("Mm-hm." -> "mmhm", "I'm" -> "im")
_WER_WORDS = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def wer_words(text: str) -> list[str]:
    """The words of `text` as the speech WER compares them."""
    return _WER_WORDS(text)[0]


def speech_errors(said: list[str], heard: list[str]) -> dict:
    """Intelligibility of one sample: the word errors (substitutions + deletions + insertions of a
    minimum edit-distance alignment, by jiwer) of the words heard in the output (Whisper) against the
    words the system meant to say. Without words said, every word heard is an insertion and the
    sample's own WER is undefined (None); it still counts in the aggregate's numerator."""
    ref, hyp = wer_words(" ".join(said)), wer_words(" ".join(heard))
    if not ref:
        return {"speech_words": 0, "speech_errors": len(hyp), "speech_wer": None}
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    errors = out.substitutions + out.deletions + out.insertions
    return {"speech_words": len(ref), "speech_errors": errors, "speech_wer": errors / len(ref)}


def pooled_wer(records: list[dict]) -> float | None:
    """Corpus WER over samples: all their errors over all the words said (None without words said)."""
    words = sum(r["speech_words"] for r in records)
    return sum(r["speech_errors"] for r in records) / words if words else None


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def aggregate(records: list[dict]) -> dict:
    """Flat metrics over per-sample records ({"task", ...the task's metrics}); keys only for tasks present."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_task[record["task"]].append(record)
    out: dict[str, float | int | None] = {}
    if rows := by_task.get("pause"):
        out["pause_tor"] = _mean([r["to"] for r in rows])
    if rows := by_task.get("turn_taking"):
        out["turn_taking_tor"] = _mean([r["to"] for r in rows])
        out["turn_taking_latency_s"] = _mean([r["latency_s"] for r in rows])
    if rows := by_task.get("interruption"):
        out["interruption_tor"] = _mean([r["to"] for r in rows])
        out["interruption_latency_s"] = _mean([r["latency_s"] for r in rows])
        out["interruption_stop_s"] = _mean([r["stop_s"] for r in rows])
    if rows := by_task.get("backchannel"):
        out["backchannel_tor"] = _mean([r["to"] for r in rows])
        out["backchannel_freq"] = _mean([r["freq"] for r in rows])
        out["backchannel_jsd"] = _mean([r["jsd"] for r in rows])
    if rows := by_task.get("overlap"):
        scores = {}
        for scenario in sorted({r["scenario"] for r in rows}):
            hits = [r["expected"] for r in rows if r["scenario"] == scenario]
            scores[scenario] = 100.0 * float(np.mean(hits))
            out[f"v15_{scenario}"] = scores[scenario]
        out["v15_average"] = float(np.mean(list(scores.values())))
    spoken = [r for r in records if "speech_words" in r]
    if spoken:
        out["speech_wer"] = pooled_wer(spoken)
        out["speech_words"] = sum(r["speech_words"] for r in spoken)
        for task, rows in sorted(by_task.items()):
            if rows := [r for r in rows if "speech_words" in r]:
                out[f"speech_wer_{task}"] = pooled_wer(rows)
    for task, rows in sorted(by_task.items()):
        out[f"n_{task}"] = len(rows)
    return out
