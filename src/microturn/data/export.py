"""`data export-fdbench`: Full-Duplex-Bench v1 sample folders cut from held-out conversations.

Each sample is a window of a conversation's user channel (`input.wav`, the user stream the system under
test hears) with the task's annotation file, as the benchmark builds them (reference:
/work/shared/reference/full-duplex-bench.md):
  pause         a user turn of >= 5 s with pauses of 0.4-1.0 s inside; the input ends with the turn.
  turn_taking   a complete user turn, then 5 s of silence appended.
  interruption  the user's question, silence while the assistant answered, the interruption about
                3-7 s into the answer, then 15 s of silence appended.
  backchannel   a long user turn; backchannel.json holds the listener's (assistant's) backchannels in the
                source conversation, the reference distribution of backchannel times.
Our extension background.json lists the assistant's reply content at the corpus's arrival times,
relative to the sample's start. Windows with the corpus assistant's echo, other voices, user
backchannels, or loud noise are skipped: the input must carry only what the task is about.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from microturn.audio import SAMPLE_RATE, write_wav
from microturn.data.corpus import Conversation, Utterance, load_conversation, load_manifest

TASKS = ("pause", "turn_taking", "interruption", "backchannel")
ANNOTATION = {
    "pause": "pause.json",
    "turn_taking": "turn_taking.json",
    "interruption": "interrupt.json",
    "backchannel": "backchannel.json",
}
MIN_SNR_DB = 20.0
LEAD_S = 1.0  # silence kept before the first user word (at most)
TAIL_SILENCE_S = {"turn_taking": 5.0, "interruption": 15.0}


@dataclass
class Sample:
    conversation: Conversation
    start: float  # window in the conversation, seconds
    end: float
    annotation: list[dict[str, Any]]  # times relative to the conversation; shifted when written
    background_utterances: list[int]


def _usable(conv: Conversation) -> bool:
    for e in conv.events:
        if e.type == "echo" or (e.type == "noise" and e.detail.get("snr_db", 99.0) < MIN_SNR_DB):
            return False
    return True


def _user_channel_clear(conv: Conversation, start: float, end: float, allowed: set[int]) -> bool:
    """Nothing but the allowed utterances (and user fillers) sounds in the user channel in [start, end)."""
    for w in conv.words:
        if w.speaker == "assistant" or w.end <= start or w.start >= end:
            continue
        utt = conv.utterances[w.utterance]
        if w.utterance not in allowed and not (utt.kind == "filler" and w.speaker == "user"):
            return False
    return True


def _window_start(conv: Conversation, first: float) -> float:
    earlier = [w.end for w in conv.words if w.speaker != "assistant" and w.end <= first]
    return max(first - LEAD_S, max(earlier, default=0.0))


def _next_turn(conv: Conversation, k: int, speaker: str) -> tuple[int, Utterance] | None:
    for j in range(k + 1, len(conv.utterances)):
        u = conv.utterances[j]
        if u.kind == "turn" and u.speaker in ("user", "assistant"):
            return (j, u) if u.speaker == speaker else None
    return None


def _pauses_in(conv: Conversation, u: Utterance) -> list[tuple[float, float]]:
    return [
        (e.start, e.end)
        for e in conv.events
        if e.type == "pause" and e.speaker == "user" and u.start <= e.start and e.end <= u.end
    ]


def _samples(conv: Conversation, task: str) -> list[Sample]:
    out = []
    for k, u in enumerate(conv.utterances):
        if u.kind != "turn" or u.speaker != "user":
            continue
        start = _window_start(conv, u.start)
        reply = _next_turn(conv, k, "assistant")
        replies = [reply[0]] if reply else []
        if task == "pause":
            pauses = _pauses_in(conv, u)
            if (
                u.end - u.start >= 5.0
                and pauses
                and all(b - a <= 1.0 for a, b in pauses)
                and any(b - a >= 0.4 for a, b in pauses)
                and _user_channel_clear(conv, start, u.end, {k})
            ):
                out.append(
                    Sample(
                        conv,
                        start,
                        u.end + 0.1,
                        [{"text": "[PAUSE]", "timestamp": [a, b]} for a, b in pauses],
                        replies,
                    )
                )
        elif task == "turn_taking":
            if reply and not u.truncated and _user_channel_clear(conv, start, u.end, {k}):
                out.append(
                    Sample(
                        conv,
                        start,
                        u.end,
                        [{"text": "[TURN-TAKING]", "timestamp": [u.end, reply[1].start]}],
                        replies,
                    )
                )
        elif task == "backchannel":
            bcs = [
                b
                for b in conv.utterances
                if b.kind == "backchannel" and b.speaker == "assistant" and u.start <= b.start < u.end
            ]
            if u.end - u.start >= 10.0 and bcs and _user_channel_clear(conv, start, u.end, {k}):
                out.append(
                    Sample(
                        conv,
                        start,
                        u.end + 0.5,
                        [{"text": b.text, "timestamp": [b.start, b.end]} for b in bcs],
                        replies,
                    )
                )
        elif task == "interruption" and reply:
            j, answer = reply
            interruption = next(
                (
                    e
                    for e in conv.events
                    if e.type == "interruption" and answer.start < e.start < answer.end + 0.5
                ),
                None,
            )
            if interruption is None or not answer.truncated:
                continue
            k_int = next(
                i
                for i, v in enumerate(conv.utterances)
                # the interrupting turn (it may open with a filler, which starts the event)
                if v.kind == "turn" and v.speaker == "user" and v.start >= interruption.start - 1e-4
            )
            follow = _next_turn(conv, k_int, "assistant")
            if _user_channel_clear(conv, start, interruption.end, {k, k_int}):
                out.append(
                    Sample(
                        conv,
                        start,
                        interruption.end,
                        [
                            {
                                "text": conv.utterances[k_int].text,
                                "context": u.text,
                                "interrupt": conv.utterances[k_int].text,
                                "timestamp": [interruption.start, interruption.end],
                            }
                        ],
                        [j] + ([follow[0]] if follow else []),
                    )
                )
    return out


def _shift(annotation: list[dict[str, Any]], origin: float) -> list[dict[str, Any]]:
    return [{**a, "timestamp": [round(t - origin, 5) for t in a["timestamp"]]} for a in annotation]


def write_sample_folder(
    folder: Path, audio: np.ndarray, task: str, annotation: list[dict[str, Any]], background: list[dict]
) -> None:
    """One sample folder (input.wav, the task's annotation file, background.json), written under a
    temporary name and renamed, so an interrupted export never leaves a half-written sample."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_wav(tmp / "input.wav", audio)
    (tmp / ANNOTATION[task]).write_text(json.dumps(annotation, indent=1) + "\n")
    (tmp / "background.json").write_text(json.dumps(background, indent=1) + "\n")
    tmp.rename(folder)


def _write_sample(folder: Path, sample: Sample, task: str) -> None:
    conv = sample.conversation
    a, b = int(round(sample.start * SAMPLE_RATE)), int(round(sample.end * SAMPLE_RATE))
    tail = np.zeros(int(TAIL_SILENCE_S.get(task, 0.0) * SAMPLE_RATE), np.float32)
    background = [
        {"time": round(max(0.0, bg.time - sample.start), 5), "text": bg.text}
        for bg in conv.background
        if bg.utterance in sample.background_utterances
    ]
    audio = np.concatenate([conv.user[a:b], tail])
    write_sample_folder(folder, audio, task, _shift(sample.annotation, sample.start), background)


def export_fdbench(
    corpus_dir: str | Path, out: str | Path, task: str, n: int | None = None
) -> dict[str, Any]:
    """Write up to n samples of `task` into `out` (which must be new or empty)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    corpus_dir, out = Path(corpus_dir), Path(out)
    entries = load_manifest(corpus_dir)
    train = [e["id"] for e in entries if e["split"] == "train"]
    if train:
        raise ValueError(
            f"{corpus_dir}: holds train-split conversations ({train[0]}, ...); "
            "Full-Duplex-Bench samples come only from held-out (valid/test) conversations"
        )
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: already exists and is not empty; choose a new --out (nothing was changed)")
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for entry in entries:
        conv = load_conversation(corpus_dir / entry["path"])
        if conv.split == "train":
            raise ValueError(f"{conv.path}: a train-split conversation; export only held-out conversations")
        if not _usable(conv):
            continue
        for sample in _samples(conv, task):
            if n is not None and len(index) >= n:
                break
            name = f"{len(index) + 1:04d}"
            _write_sample(out / name, sample, task)
            index.append({"sample": name, "conversation": conv.id, "window_s": [sample.start, sample.end]})
    (out / "export.json").write_text(
        json.dumps({"task": task, "corpus": str(corpus_dir), "samples": index}, indent=1) + "\n"
    )
    return {"task": task, "out": str(out), "samples": len(index)}
