"""`data real-fdbench`: Full-Duplex-Bench samples spoken by real human voices.

The synthetic corpus's users are espeak-ng and piper voices; these samples are made of the read-speech
recordings shipped in the `moonshine-voice` wheel (`moonshine_voice/assets/`): a Beckett line
(`beckett.wav`, one voice, 10 s), a voice-cloning test sentence (`clone-test.wav`, one voice, 4 s), a
dialogue from Endgame (`endgame_nagg_nell.wav`, two voices alternating, 28 s) and the opening of A Tale of
Two Cities (`two_cities.wav`, one voice, 44 s). Every clip is resampled to 16 kHz and cut and spliced only
at word boundaries, in its own quiet:

- Whisper tiny.en (`eval.transcribe`) gives the words with times, and with its punctuation the sentences
  (an unfinished last sentence is dropped);
- a 10 ms energy gate set per clip (15 dB over its noise floor, or 35 dB under its loud frames when the
  floor is digital silence) finds where speech really starts and stops: a sentence's speech is the gated
  frames between the word boundaries around it, and a word boundary's quiet is the longest ungated run
  near the Whisper boundary (its middle is where it is cut; the quietest frame when the words run on);
- silence added to a clip is its own room tone (its quietest frames), not digital zeros.

A turn is a sentence or a run of consecutive sentences (at least 2.5 s and 4 words; one sentence of at
least 3 words and 1 s in a clip of two voices, whose lines alternate). Natural gaps inside a turn longer
than 1 s are shortened to 0.8 s (the benchmark's pauses are 0.4-1 s; longer ones invite a takeover).
Tasks, written as `data export-fdbench` writes them (same files, so `eval fdbench` runs them unchanged):
  pause         a turn with 1 (2 from 8 words on) pauses inserted at word boundaries inside it, each made
                0.4-1.0 s long with room tone; pause.json lists them and the turn's natural gaps of 0.4 s
                or more; the input ends 0.1 s after the turn.
  turn_taking   a turn followed by 5 s of room tone; turn_taking.json holds [turn end, reply arrival].
  interruption  a turn (the question), room tone while the system answers, then another sentence of the
                clip 3-6 s after the reply text arrived, then 15 s of room tone.
  backchannel   one voice for 8-30 s (consecutive sentences); the reference backchannel times are the
                speaker's clause-final gaps of 0.3 s or more (where listeners backchannel), not a real
                listener's: its JSD is against that stand-in.
background.json: the reply text (a chitchat test-split turn of 8-40 words) at the turn end plus the
corpus's arrival delay (lognormal, median 0.6 s, sigma 0.5, clipped to 0.2-2 s, as `synth` draws it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from microturn.audio import SAMPLE_RATE, read_wav, resample
from microturn.data.export import TAIL_SILENCE_S, TASKS, write_sample_folder

CLIPS = {"beckett": 1, "clone-test": 1, "endgame_nagg_nell": 2, "two_cities": 1}  # name -> voices
FRAME_S = 0.01
GATE_OVER_FLOOR_DB = 15.0
GATE_UNDER_LOUD_DB = 35.0
MIN_TURN_S, MIN_TURN_WORDS = 2.5, 4
MIN_LINE_S, MIN_LINE_WORDS = 1.0, 3
MAX_GAP_S, SHORTENED_GAP_S = 1.0, 0.8
PAUSE_S = (0.4, 1.0)
LEAD_S = 1.0  # speech-free lead-in kept before the turn (at most)
INTERRUPT_AFTER_S = (3.0, 6.0)  # after the reply text arrived
BACKCHANNEL_S = (8.0, 30.0)
REFERENCE_GAP_S = 0.3
REPLY_WORDS = (8, 40)
SENTENCE_END = (".", "?", "!")


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Boundary:
    """Between two words: where to cut, and the quiet around it (empty when the words run on)."""

    cut: float
    gap_start: float
    gap_end: float

    @property
    def gap(self) -> float:
        return self.gap_end - self.gap_start


@dataclass(frozen=True)
class Sentence:
    first: int  # word indices
    last: int
    start: float  # speech, from the energy gate
    end: float
    text: str

    @property
    def words(self) -> int:
        return self.last - self.first + 1


@dataclass
class Clip:
    name: str
    audio: np.ndarray  # 16 kHz mono float32
    words: list[Word]
    voices: int = 1
    active: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per 10 ms frame
    level_db: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tone: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # room tone pool
    boundaries: list[Boundary] = field(default_factory=list)  # len(words) - 1
    sentences: list[Sentence] = field(default_factory=list)


def assets_dir() -> Path:
    """The `moonshine_voice/assets` folder of the installed wheel (located without importing it)."""
    spec = importlib.util.find_spec("moonshine_voice")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the moonshine-voice package is not installed: pip install --no-deps moonshine-voice==0.1.5 "
            "(make setup does)"
        )
    return Path(spec.origin).parent / "assets"


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs where mask is True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _gate(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per 10 ms frame: speech or not, the level (dB), and the threshold."""
    from microturn.eval.activity import frame_rms

    level = 20 * np.log10(frame_rms(audio, FRAME_S) + 1e-9)
    threshold = max(
        float(np.percentile(level, 10)) + GATE_OVER_FLOOR_DB,
        float(np.percentile(level, 99)) - GATE_UNDER_LOUD_DB,
    )
    active = level > threshold
    for a, b in _runs(~active):  # stop closures inside words are not gaps
        if b - a < 5 and a > 0 and b < len(active):
            active[a:b] = True
    for a, b in _runs(active):  # nor are clicks speech
        if b - a < 3:
            active[a:b] = False
    return active, level, threshold


def _boundary(clip: Clip, left: Word, right: Word, floor: float) -> Boundary:
    lo = max(min(left.end, right.start) - 0.15, left.start + 0.05, floor)
    hi = min(max(left.end, right.start) + 0.15, max(right.end - 0.05, lo + FRAME_S))
    a, b = int(lo / FRAME_S), max(int(np.ceil(hi / FRAME_S)), int(lo / FRAME_S) + 1)
    quiet = _runs(~clip.active[a:b])
    if quiet:
        s, e = max(quiet, key=lambda r: r[1] - r[0])
        start, end = (a + s) * FRAME_S, (a + e) * FRAME_S
        return Boundary(round((start + end) / 2, 3), round(start, 3), round(end, 3))
    i = a + int(np.argmin(clip.level_db[a:b]))
    cut = round((i + 0.5) * FRAME_S, 3)
    return Boundary(cut, cut, cut)


def _speech_between(clip: Clip, lo: float, hi: float) -> tuple[float, float] | None:
    a, b = int(round(lo / FRAME_S)), int(round(hi / FRAME_S))
    on = np.flatnonzero(clip.active[a:b])
    return None if len(on) == 0 else ((a + on[0]) * FRAME_S, (a + on[-1] + 1) * FRAME_S)


def analyse(clip: Clip) -> Clip:
    """Fill in the gate, room tone, word boundaries and complete sentences of a clip with words."""
    clip.active, clip.level_db, threshold = _gate(clip.audio)
    n = int(round(FRAME_S * SAMPLE_RATE))
    quiet = np.flatnonzero(clip.level_db[: len(clip.audio) // n] < threshold - 6)
    pool = np.concatenate([clip.audio[i * n : (i + 1) * n] for i in quiet]) if len(quiet) else np.zeros(0)
    clip.tone = pool.astype(np.float32) if len(pool) >= 0.2 * SAMPLE_RATE else np.zeros(n, np.float32)
    clip.boundaries = []
    floor = 0.0
    for left, right in zip(clip.words, clip.words[1:], strict=False):
        b = _boundary(clip, left, right, floor)
        clip.boundaries.append(b)
        floor = b.cut
    clip.sentences = []
    first = 0
    duration = len(clip.audio) / SAMPLE_RATE
    for i, word in enumerate(clip.words):
        if not word.text.endswith(SENTENCE_END):
            continue
        lo = clip.boundaries[first - 1].cut if first > 0 else 0.0
        hi = clip.boundaries[i].cut if i < len(clip.boundaries) else duration
        span = _speech_between(clip, lo, hi)
        if span is not None:
            text = " ".join(w.text for w in clip.words[first : i + 1])
            clip.sentences.append(Sentence(first, i, round(span[0], 3), round(span[1], 3), text))
        first = i + 1
    return clip


def load_clip(name: str, folder: Path | None = None) -> Clip:
    """A clip of the wheel, at 16 kHz, transcribed by Whisper and analysed."""
    from microturn.eval.transcribe import transcribe

    audio, rate = read_wav((folder or assets_dir()) / f"{name}.wav", expect_rate=None)
    audio = resample(audio, rate, SAMPLE_RATE)
    words = [Word(c["text"], *c["timestamp"]) for c in transcribe(audio)["chunks"]]
    return analyse(Clip(name, audio, words, CLIPS.get(name, 1)))


def turns(clip: Clip) -> list[tuple[int, int]]:
    """Sentence index ranges [i, j] that make a turn (see the module docstring)."""
    out = []
    sents = clip.sentences
    for i, s in enumerate(sents):
        if clip.voices > 1:
            if s.words >= MIN_LINE_WORDS and s.end - s.start >= MIN_LINE_S:
                out.append((i, i))
            continue
        j = i
        while j + 1 < len(sents) and (
            sents[j].end - s.start < MIN_TURN_S or sum(x.words for x in sents[i : j + 1]) < MIN_TURN_WORDS
        ):
            j += 1
        if sents[j].end - s.start >= MIN_TURN_S and sum(x.words for x in sents[i : j + 1]) >= MIN_TURN_WORDS:
            if (i, j) not in out:
                out.append((i, j))
    return out


class Render:
    """A window of a clip, with edits at word boundaries (room tone inserted, or a long gap shortened),
    as one signal; `at` maps clip times to the signal's times."""

    def __init__(self, clip: Clip, start: float, end: float, edits: list[tuple[Boundary, float]], rng):
        self.clip, self.start = clip, start
        self.edits = sorted(edits, key=lambda e: e[0].cut)
        pieces, t = [], start
        for boundary, delta in self.edits:
            if delta >= 0:
                pieces += [_cut(clip.audio, t, boundary.cut), room_tone(clip, delta, rng)]
                t = boundary.cut
            else:
                pieces.append(_cut(clip.audio, t, boundary.cut + delta / 2))
                t = boundary.cut - delta / 2
        pieces.append(_cut(clip.audio, t, end))
        self.audio = np.concatenate(pieces).astype(np.float32)

    def at(self, t: float) -> float:
        shift = 0.0
        for boundary, delta in self.edits:
            if delta >= 0 and boundary.cut < t:  # the clip's time of a cut maps to where its tone starts
                shift += delta
            elif delta < 0 and t > (removed_from := boundary.cut + delta / 2):
                shift -= min(-delta, t - removed_from)
        return round(t - self.start + shift, 4)


def _cut(audio: np.ndarray, a: float, b: float) -> np.ndarray:
    return audio[int(round(a * SAMPLE_RATE)) : int(round(b * SAMPLE_RATE))]


def room_tone(clip: Clip, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """`seconds` of the clip's own quiet (its quietest frames, from a random point, repeated as needed)."""
    n = int(round(seconds * SAMPLE_RATE))
    if n <= 0:
        return np.zeros(0, np.float32)
    offset = int(rng.integers(len(clip.tone)))
    reps = -(-(n + offset) // len(clip.tone))
    return np.tile(clip.tone, reps)[offset : offset + n]


def _window_start(clip: Clip, i: int) -> float:
    first = clip.sentences[i]
    before = clip.boundaries[first.first - 1].cut if first.first > 0 else 0.0
    return max(before, first.start - LEAD_S)


def _window_end(clip: Clip, j: int) -> float:
    last = clip.sentences[j]
    return (
        clip.boundaries[last.last].cut if last.last < len(clip.boundaries) else len(clip.audio) / SAMPLE_RATE
    )


def _inner(clip: Clip, i: int, j: int) -> list[Boundary]:
    return clip.boundaries[clip.sentences[i].first : clip.sentences[j].last]


def _shorten(boundaries: list[Boundary]) -> list[tuple[Boundary, float]]:
    return [(b, SHORTENED_GAP_S - b.gap) for b in boundaries if b.gap > MAX_GAP_S]


def _arrival(rng: np.random.Generator) -> float:
    return float(np.clip(rng.lognormal(np.log(0.6), 0.5), 0.2, 2.0))


def reply_texts() -> list[str]:
    """Held-out (test split) chitchat turns of 8-40 words: what the oracle background says."""
    from microturn.data.chitchat import load_chats

    lo, hi = REPLY_WORDS
    return [t.text for chat in load_chats("test") for t in chat.turns if lo <= len(t.text.split()) <= hi]


def _rng(seed: int, *key: object) -> np.random.Generator:
    digest = hashlib.sha256("/".join(map(str, (seed, *key))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass
class RealSample:
    audio: np.ndarray
    annotation: list[dict[str, Any]]
    background: list[dict[str, Any]]
    info: dict[str, Any]


def _text(clip: Clip, i: int, j: int) -> str:
    return " ".join(s.text for s in clip.sentences[i : j + 1])


def build_samples(clip: Clip, task: str, replies: list[str], seed: int = 0) -> list[RealSample]:
    """Every sample of `task` that the clip gives (see the module docstring)."""
    out = []
    if task == "backchannel":
        windows, i = [], 0
        while clip.voices == 1 and i < len(clip.sentences):
            j = i
            while (
                j + 1 < len(clip.sentences)
                and clip.sentences[j].end - clip.sentences[i].start < BACKCHANNEL_S[0]
            ):
                j += 1
            if BACKCHANNEL_S[0] <= clip.sentences[j].end - clip.sentences[i].start <= BACKCHANNEL_S[1]:
                windows.append((i, j))
            i = j + 1
    else:
        windows = turns(clip)
    for i, j in windows:
        rng = _rng(seed, task, clip.name, i, j)
        inner = _inner(clip, i, j)
        edits = _shorten(inner)
        sent_i, sent_j = clip.sentences[i], clip.sentences[j]
        start, turn_end = _window_start(clip, i), sent_j.end
        info: dict[str, Any] = {"clip": clip.name, "sentences": [i, j], "text": _text(clip, i, j)}
        reply = str(rng.choice(replies))
        if task == "pause":
            candidates = [b for b in inner if b.gap < PAUSE_S[0]]
            if not candidates:
                continue
            k = min(len(candidates), 1 if sent_j.last - sent_i.first + 1 < 8 else 2)
            chosen = [candidates[x] for x in sorted(rng.choice(len(candidates), k, replace=False))]
            lengths = {b: float(rng.uniform(*PAUSE_S)) for b in chosen}
            edits += [(b, lengths[b] - b.gap) for b in chosen]
            render = Render(clip, start, min(turn_end + 0.1, _window_end(clip, j)), edits, rng)
            pauses = [(b, lengths[b]) for b in chosen]
            pauses += [
                (b, min(b.gap, SHORTENED_GAP_S)) for b in inner if b not in lengths and b.gap >= PAUSE_S[0]
            ]
            annotation = [
                {
                    "text": "[PAUSE]",
                    "timestamp": [render.at(b.gap_start), round(render.at(b.gap_start) + d, 4)],
                }
                for b, d in sorted(pauses, key=lambda p: p[0].cut)
            ]
            audio = render.audio
            end_out = render.at(turn_end)
            info["inserted_pauses_s"] = [round(lengths[b], 3) for b in chosen]
            background = [{"time": round(end_out + _arrival(rng), 4), "text": reply}]
        elif task in ("turn_taking", "backchannel"):
            render = Render(clip, start, turn_end, edits, rng)
            end_out = render.at(turn_end)
            arrival = round(end_out + _arrival(rng), 4)
            if task == "turn_taking":
                annotation = [{"text": "[TURN-TAKING]", "timestamp": [end_out, arrival]}]
                tail = room_tone(clip, TAIL_SILENCE_S["turn_taking"], rng)
            else:
                annotation = [
                    {
                        "text": "[CLAUSE-END]",
                        "timestamp": [render.at(b.gap_start), render.at(b.gap_start) + 0.2],
                    }
                    for b, w in zip(inner, clip.words[sent_i.first : sent_j.last], strict=True)
                    if b.gap >= REFERENCE_GAP_S and w.text.endswith((",", *SENTENCE_END))
                ]
                tail = room_tone(clip, 0.5, rng)
            audio = np.concatenate([render.audio, tail])
            background = [{"time": arrival, "text": reply}]
        elif task == "interruption":
            later = [
                k for k in range(len(clip.sentences)) if k > j and clip.sentences[k].words >= MIN_LINE_WORDS
            ]
            earlier = [k for k in range(i) if clip.sentences[k].words >= MIN_LINE_WORDS]
            if not later + earlier:
                continue
            k = (later + earlier)[0]
            question = Render(clip, start, turn_end, edits, rng)
            end_out = question.at(turn_end)
            arrival = end_out + _arrival(rng)
            gap = arrival + float(rng.uniform(*INTERRUPT_AFTER_S)) - end_out
            sent_k = clip.sentences[k]
            line = Render(clip, sent_k.start, sent_k.end, _shorten(_inner(clip, k, k)), rng)
            int_start = len(question.audio) / SAMPLE_RATE + gap
            int_end = round(int_start + len(line.audio) / SAMPLE_RATE, 4)
            audio = np.concatenate(
                [
                    question.audio,
                    room_tone(clip, gap, rng),
                    line.audio,
                    room_tone(clip, TAIL_SILENCE_S["interruption"], rng),
                ]
            )
            annotation = [
                {
                    "text": sent_k.text,
                    "context": _text(clip, i, j),
                    "interrupt": sent_k.text,
                    "timestamp": [round(int_start, 4), int_end],
                }
            ]
            background = [
                {"time": round(arrival, 4), "text": reply},
                {"time": round(int_end + _arrival(rng), 4), "text": str(rng.choice(replies))},
            ]
            info["interrupt_sentence"] = k
        else:
            raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
        out.append(RealSample(audio, annotation, background, info))
    return out


def export_real_fdbench(
    out: str | Path,
    tasks: tuple[str, ...] = TASKS,
    n: int | None = None,
    seed: int = 0,
    clips: tuple[str, ...] | None = None,
    folder: Path | None = None,
) -> dict[str, Any]:
    """Write out/<task>/<NNNN>/ sample folders (at most n per task) from the real clips; out must be new
    or empty. Returns {task: samples written}."""
    out = Path(out)
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: already exists and is not empty; choose a new --out (nothing was changed)")
    loaded = [load_clip(name, folder) for name in (clips or tuple(CLIPS))]
    replies = reply_texts()
    summary: dict[str, Any] = {"out": str(out), "clips": [c.name for c in loaded]}
    for task in tasks:
        task_dir = out / task
        task_dir.mkdir(parents=True, exist_ok=True)
        index = []
        for clip in loaded:
            for sample in build_samples(clip, task, replies, seed):
                if n is not None and len(index) >= n:
                    break
                name = f"{len(index) + 1:04d}"
                write_sample_folder(task_dir / name, sample.audio, task, sample.annotation, sample.background)
                index.append({"sample": name, **sample.info})
        source = {"package": "moonshine-voice", "assets": str(folder or assets_dir())}
        (task_dir / "export.json").write_text(
            json.dumps({"task": task, "source": source, "seed": seed, "samples": index}, indent=1) + "\n"
        )
        summary[task] = len(index)
    return summary
