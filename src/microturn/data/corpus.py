"""The corpus on disk (docs/design.md, docs/corpus.md): read, validate and write conversations.

A conversation folder holds user.wav + assistant.wav (or, for real recordings, one stereo
conversation.wav: channel 0 user, channel 1 assistant) and timeline.json. Files are written to a
temporary name and renamed, timeline.json last, so a folder with a timeline is complete.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from microturn.audio import SAMPLE_RATE, AudioError, read_wav, write_wav
from microturn.files import atomic_write_text

SPEAKERS = ("user", "assistant", "other")
# proactive: an assistant act triggered by what it sees, its clock or a cue word (data/proactive.py)
UTTERANCE_KINDS = ("turn", "backchannel", "side_speech", "background_speech", "filler", "proactive")
EVENT_TYPES = (
    "turn_end",
    "pause",
    "backchannel",
    "interruption",
    "side_speech",
    "background_speech",
    "echo",
    "background_text",
    "filler",
    "self_correction",
    "silence",
    "noise",
    "overlap",
)
# ground truth of the proactive episodes (data/proactive.py, docs/corpus.md)
PROACTIVE_EVENT_TYPES = ("visual_change", "rep", "action", "timer", "cue")
MANIFEST = "manifest.jsonl"
TIMELINE = "timeline.json"
VIDEO = "video.json"  # the scene of a video episode (data/video.py), beside the timeline
_TIME_SLACK = 0.01  # seconds a label may pass the end of the audio (rounding of real recordings' labels)


@dataclass
class Word:
    speaker: str
    text: str
    start: float
    end: float
    utterance: int = -1  # index into utterances; -1 when a real recording gives words only
    truncated: bool = False  # cut off mid-word (the speaker was interrupted)
    # each espeak-ng phone symbol and its end in seconds from the word's start, where the voice gives them
    # (piper: data/tts.py); None otherwise
    phones: tuple[tuple[str, float], ...] | None = None


@dataclass
class Utterance:
    speaker: str
    text: str
    start: float
    end: float
    kind: str
    voice: str = ""
    truncated: bool = False


@dataclass
class Event:
    type: str
    speaker: str
    start: float
    end: float
    text: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # extra numbers, e.g. {"snr_db": 12.0}


@dataclass
class BackgroundText:
    time: float
    text: str
    utterance: int


@dataclass
class Conversation:
    id: str
    split: str
    source: str
    duration_s: float
    words: list[Word]
    utterances: list[Utterance]
    events: list[Event]
    background: list[BackgroundText]
    user: np.ndarray  # float32 16 kHz
    assistant: np.ndarray
    path: Path | None = None
    video: dict[str, Any] | None = None  # video.json: {"spec": scene, "frame_phase", "key_times"}

    def timeline(self) -> dict[str, Any]:
        def event(e: Event) -> dict[str, Any]:
            out = {"type": e.type, "speaker": e.speaker, "start": e.start, "end": e.end}
            if e.text is not None:
                out["text"] = e.text
            return {**out, **e.detail}

        def word(w: Word) -> dict[str, Any]:
            out = asdict(w)
            if not w.truncated:
                del out["truncated"]
            if w.phones is None:
                del out["phones"]
            else:
                out["phones"] = [[p, end] for p, end in w.phones]
            return out

        return {
            "id": self.id,
            "split": self.split,
            "sample_rate": SAMPLE_RATE,
            "duration_s": self.duration_s,
            "source": self.source,
            "words": [word(w) for w in self.words],
            "utterances": [asdict(u) for u in self.utterances],
            "events": [event(e) for e in self.events],
            "background": [asdict(b) for b in self.background],
        }

    def phenomena(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.events:
            counts[e.type] = counts.get(e.type, 0) + 1
        return dict(sorted(counts.items()))

    def manifest_entry(self, corpus_dir: Path) -> dict[str, Any]:
        path = self.path.relative_to(corpus_dir) if self.path else Path(self.id)
        entry = {
            "id": self.id,
            "split": self.split,
            "path": str(path),
            "duration_s": self.duration_s,
            "phenomena": self.phenomena(),
        }
        if self.video is not None:
            entry["video"] = True
        return entry


def write_conversation(folder: Path, conv: Conversation) -> None:
    """Write the two wavs, then timeline.json (its presence marks the folder complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_wav(folder / "user.wav", conv.user)
    write_wav(folder / "assistant.wav", conv.assistant)
    if conv.video is not None:
        atomic_write_text(folder / VIDEO, json.dumps(conv.video) + "\n")
    atomic_write_text(folder / TIMELINE, json.dumps(conv.timeline(), indent=1) + "\n")
    conv.path = folder


def is_complete(folder: Path) -> bool:
    return all((folder / name).exists() for name in ("user.wav", "assistant.wav", TIMELINE))


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {value!r}")
    return value


def _span(item: dict, where: str, duration: float) -> tuple[float, float]:
    start, end = _number(item.get("start"), f"{where}.start"), _number(item.get("end"), f"{where}.end")
    if not 0 <= start <= end <= duration + _TIME_SLACK:
        raise ValueError(f"{where}: span [{start}, {end}] is not inside the audio [0, {duration:.3f}]")
    return start, end


def _items(timeline: dict, key: str, path: Path) -> list[dict]:
    items = timeline.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"{path}: '{key}' must be a list of objects")
    return items


def _phones(value: Any, where: str, duration: float) -> tuple[tuple[str, float], ...] | None:
    """A word's [[symbol, end_s], ...] (ends rising, within the word) or None."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], int | float)
        for x in value
    ):
        raise ValueError(f"{where}: expected [[symbol, end_s], ...], got {value!r}")
    ends = [float(end) for _, end in value]
    if any(b < a for a, b in zip(ends, ends[1:], strict=False)) or (
        ends and (ends[0] < 0.0 or ends[-1] > duration + 1e-3)
    ):
        raise ValueError(f"{where}: phone ends must rise within the word's {duration:.3f} s, got {ends}")
    return tuple((p, end) for (p, _), end in zip(value, ends, strict=True))


def parse_timeline(timeline: Any, path: Path, duration: float) -> tuple[list, list, list, list]:
    """Validated words, utterances, events, background of a timeline (only words are required)."""
    if not isinstance(timeline, dict) or "words" not in timeline:
        raise ValueError(f"{path}: timeline must be a JSON object with a 'words' list")
    rate = timeline.get("sample_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: sample_rate {rate}, expected {SAMPLE_RATE}")
    utterances = []
    for i, u in enumerate(_items(timeline, "utterances", path)):
        where = f"{path}: utterances[{i}]"
        start, end = _span(u, where, duration)
        if u.get("speaker") not in SPEAKERS or u.get("kind") not in UTTERANCE_KINDS:
            raise ValueError(f"{where}: speaker must be one of {SPEAKERS} and kind one of {UTTERANCE_KINDS}")
        utterances.append(
            Utterance(
                u["speaker"],
                _text(u.get("text", ""), f"{where}.text"),
                start,
                end,
                u["kind"],
                _text(u.get("voice", ""), f"{where}.voice"),
                bool(u.get("truncated", False)),
            )
        )
    words = []
    for i, w in enumerate(_items(timeline, "words", path)):
        where = f"{path}: words[{i}]"
        start, end = _span(w, where, duration)
        if w.get("speaker") not in SPEAKERS:
            raise ValueError(f"{where}: speaker {w.get('speaker')!r} is not one of {SPEAKERS}")
        utt = w.get("utterance", -1)
        if not isinstance(utt, int) or utt >= len(utterances) or (utterances and utt < 0):
            raise ValueError(f"{where}: utterance {utt!r} does not name one of {len(utterances)} utterances")
        words.append(
            Word(
                w["speaker"],
                _text(w.get("text"), f"{where}.text"),
                start,
                end,
                utt,
                bool(w.get("truncated", False)),
                _phones(w.get("phones"), f"{where}.phones", end - start),
            )
        )
    if any(a.start > b.start for a, b in zip(words, words[1:], strict=False)):
        raise ValueError(f"{path}: words are not sorted by start")
    events = []
    for i, e in enumerate(_items(timeline, "events", path)):
        where = f"{path}: events[{i}]"
        start, end = _span(e, where, duration)
        if e.get("type") not in EVENT_TYPES + PROACTIVE_EVENT_TYPES:
            raise ValueError(f"{where}: unknown event type {e.get('type')!r}")
        detail = {k: v for k, v in e.items() if k not in ("type", "speaker", "start", "end", "text")}
        text = _text(e["text"], f"{where}.text") if "text" in e else None
        events.append(
            Event(e["type"], _text(e.get("speaker", ""), f"{where}.speaker"), start, end, text, detail)
        )
    background = []
    for i, b in enumerate(_items(timeline, "background", path)):
        where = f"{path}: background[{i}]"
        time = _number(b.get("time"), f"{where}.time")
        utt = b.get("utterance")
        if not isinstance(utt, int) or not 0 <= utt < len(utterances):
            raise ValueError(f"{where}: utterance {utt!r} does not name one of {len(utterances)} utterances")
        background.append(BackgroundText(time, _text(b.get("text"), f"{where}.text"), utt))
    return words, utterances, events, background


def _read_channels(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    stereo = folder / "conversation.wav"
    if (folder / "user.wav").exists() or not stereo.exists():
        user, _ = read_wav(folder / "user.wav")
        assistant, _ = read_wav(folder / "assistant.wav")
    else:
        try:
            data, rate = sf.read(str(stereo), dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(f"{stereo}: not a readable audio file ({exc})") from exc
        if rate != SAMPLE_RATE:
            raise AudioError(f"{stereo}: sample rate {rate} Hz, expected {SAMPLE_RATE} Hz")
        if data.shape[1] != 2 or data.shape[0] == 0:
            raise AudioError(f"{stereo}: expected 2 channels (user, assistant), got {data.shape[1]}")
        user, assistant = data[:, 0].copy(), data[:, 1].copy()
    n = max(len(user), len(assistant))  # real recordings may differ by a few samples
    return np.pad(user, (0, n - len(user))), np.pad(assistant, (0, n - len(assistant)))


def load_conversation(path: str | Path) -> Conversation:
    """A conversation folder: synthetic (full timeline) or a real recording (timeline with words)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: conversation folder not found")
    user, assistant = _read_channels(folder)
    duration = len(user) / SAMPLE_RATE
    timeline_path = folder / TIMELINE
    if not timeline_path.exists():
        raise FileNotFoundError(f"{timeline_path}: file not found")
    try:
        timeline = json.loads(timeline_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{timeline_path}: not valid JSON ({exc})") from exc
    words, utterances, events, background = parse_timeline(timeline, timeline_path, duration)
    return Conversation(
        id=str(timeline.get("id", folder.name)),
        split=str(timeline.get("split", "train")),
        source=str(timeline.get("source", "real")),
        duration_s=round(duration, 5),
        words=words,
        utterances=utterances,
        events=events,
        background=background,
        user=user,
        assistant=assistant,
        path=folder,
        video=read_video(folder),
    )


def read_video(folder: Path) -> dict[str, Any] | None:
    """The folder's video.json (None without one), checked."""
    from microturn.data.video import validate_spec

    path = Path(folder) / VIDEO
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object with a 'spec'")
    validate_spec(data.get("spec"), str(path))
    return data


def write_manifest(corpus_dir: Path, entries: list[dict[str, Any]]) -> None:
    atomic_write_text(corpus_dir / MANIFEST, "".join(json.dumps(e) + "\n" for e in entries))


def load_manifest(corpus_dir: str | Path) -> list[dict[str, Any]]:
    """Manifest entries, each checked for its fields and that its folder exists."""
    corpus_dir = Path(corpus_dir)
    path = corpus_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found (is {corpus_dir} a corpus?)")
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {n} is not valid JSON ({exc})") from exc
        missing = (
            [k for k in ("id", "split", "path", "duration_s") if k not in entry]
            if isinstance(entry, dict)
            else ["an object"]
        )
        if missing:
            raise ValueError(f"{path}: line {n} lacks {', '.join(missing)}")
        if not (corpus_dir / entry["path"]).is_dir():
            raise ValueError(
                f"{path}: line {n}: conversation folder {corpus_dir / entry['path']} does not exist"
            )
        entries.append(entry)
    return entries


def load_corpus(corpus_dir: str | Path) -> list[Conversation]:
    corpus_dir = Path(corpus_dir)
    return [load_conversation(corpus_dir / e["path"]) for e in load_manifest(corpus_dir)]
