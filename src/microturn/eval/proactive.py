"""`microturn eval proactive`: does a system speak because something happened on video, because time passed,
or because the user said a cue word? Scored on held-out proactive episodes (data/proactive.py).

Each episode's user channel streams through the system exactly as live (`runtime.stream_loop.run_stream`,
the loop of `simulate` and `eval fdbench`), and, for video episodes, micro-turn t's frame (the scene at
`data.video.frame_time(t)`, rendered from the episode's `video.json`) is pushed to the model's session
before that micro-turn's audio, as a camera would have delivered it. The harness baseline runs through
the same loop (it hears only turn ends, sees no video and has no clock; these episodes have no background
text, so it has nothing to say).

Metrics (docs/evaluation.md), from timed words, each the mean over episodes (or events) of one kind:
  rep counting accuracy within one    the last number said after the instruction is the rep count +-1
  start/stop mean IoU                 [first "start", next "stop"] against the action's [begin, end]
  time macro-accuracy                 mean over every / after / elapsed of: the right content inside the
                                      window around its due time (every: per reminder)
  cue macro-accuracy                  mean over standalone / inline of: the reply inside 2 s of the cue
  visual-cue macro-accuracy           mean over light / ball / hand: the first mention after the
                                      instruction falls inside 3 s of the change
Primary: the words of the system's output audio transcribed by Whisper tiny.en (`eval.transcribe`).
Secondary, clearly labelled `text`: the same metrics on the words the system emitted as text with the
times they played (the model's inner monologue; its speech is not yet intelligible).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from microturn.data import video as scenes
from microturn.data.corpus import PROACTIVE_EVENT_TYPES, Conversation, Event, load_conversation, load_manifest
from microturn.data.proactive import PLANNED_EPISODE_S, PROACTIVE_SHAPES, number_words
from microturn.runtime.cli import add_voice_argument
from microturn.runtime.system import BackgroundText, DuplexSystem, StepResult

SYSTEMS = ("model", "harness")
SOURCES = ("speech", "text")  # transcribed output audio (primary) | the emitted text timeline (secondary)
DEFAULT_CACHE = Path(__file__).resolve().parents[3] / "cache" / "proactive_eval"
DEFAULT_DATA_SEED = 9000  # the generated held-out set: test split, this seed + shape index
# Windows in seconds around each event; the lower bounds include 0.3 s of slack for Whisper's word
# starts, which come up to ~0.25 s early on short padded clips (the same slack applies to the text source).
ASR_SLACK_S = 0.3
VISUAL_WINDOW = (-ASR_SLACK_S, 3.0)  # after the change
TIMER_WINDOW = (-1.0, 2.0)  # around a reminder's / timer's due time
ELAPSED_WINDOW = (-ASR_SLACK_S, 3.0)  # after the question "how long did that take?" ends
CUE_WINDOW = (-ASR_SLACK_S, 2.0)  # after the cue word ends
KEYWORDS = {  # visual_cue: words that name the change (any one counts)
    "light": {"green"},
    "ball": {"stopped", "stop", "stops"},
    "hand": {"hand", "up"},
}
_STOPWORDS = {"the", "a", "to", "your", "from", "at", "time", "it's", "it", "is", "now", "that", "that's"}
_NUMBER = {w: i for i, w in enumerate(number_words(n) for n in range(20))}
_TENS = {number_words(n): n for n in range(20, 100, 10)}


@dataclass(frozen=True)
class TimedWord:
    text: str
    start: float
    end: float


def tokens(words: list[TimedWord]) -> list[tuple[str, float]]:
    """Lowercase tokens with their start times: punctuation dropped (apostrophes kept), hyphenated
    words split ("twenty-three" -> "twenty", "three")."""
    out = []
    for w in sorted(words, key=lambda w: w.start):
        for part in re.split(r"[\s\-]+", w.text.lower()):
            part = re.sub(r"[^a-z0-9']", "", part).strip("'")
            if part:
                out.append((part, w.start))
    return out


def numbers(toks: list[tuple[str, float]]) -> list[tuple[int, float]]:
    """Numbers said, as digits or words ("23", "twenty three"), with their start times."""
    out: list[tuple[int, float]] = []
    i = 0
    while i < len(toks):
        text, start = toks[i]
        if text.isdigit():
            out.append((int(text), start))
        elif text in _TENS:
            value = _TENS[text]
            if i + 1 < len(toks) and toks[i + 1][0] in _NUMBER and 0 < _NUMBER[toks[i + 1][0]] < 10:
                value += _NUMBER[toks[i + 1][0]]
                i += 1
            out.append((value, start))
        elif text in _NUMBER:
            out.append((_NUMBER[text], start))
        i += 1
    return out


def _inside(t: float, anchor: float, window: tuple[float, float]) -> bool:
    return anchor + window[0] - 1e-6 <= t <= anchor + window[1] + 1e-6


def _mentions(toks: list[tuple[str, float]], keys: set[str], after: float) -> list[float]:
    return [t for w, t in toks if t >= after - 1e-6 and (w in keys or w.rstrip("s") in keys)]


def instruction_end(conv: Conversation) -> float:
    """End of the user's first turn: the instruction."""
    turns = [u for u in conv.utterances if u.speaker == "user" and u.kind == "turn"]
    return turns[0].end if turns else 0.0


def score_episode(shape: str, events: list[Event], asked_at: float, words: list[TimedWord]) -> list[dict]:
    """Per-item records {"metric", "kind", "value"} of one episode from a system's timed words.
    `asked_at` is when the user's instruction ended; `events` are the episode's ground truth."""
    toks = tokens(words)
    truth = [e for e in events if e.type in PROACTIVE_EVENT_TYPES]
    records = []
    if shape == "reps":
        reps = [e for e in truth if e.type == "rep"]
        said = [n for n, t in numbers(toks) if t >= asked_at]
        count = said[-1] if said else 0
        records.append(
            {
                "metric": "rep_within_one",
                "kind": reps[0].detail.get("kind", ""),
                "value": float(abs(count - len(reps)) <= 1),
                "count": count,
                "reps": len(reps),
            }
        )
    elif shape == "start_stop":
        for e in (e for e in truth if e.type == "action"):
            starts = [t for w, t in toks if t >= asked_at and w.startswith("start")]
            iou, span = 0.0, None
            if starts:
                s = starts[0]
                stops = [t for w, t in toks if t > s and w.startswith("stop")]
                end = stops[0] if stops else max([t for _, t in toks] + [e.end, s])
                span = (s, end)
                inter = max(0.0, min(end, e.end) - max(s, e.start))
                union = max(end, e.end) - min(s, e.start)
                iou = inter / union if union > 0 else 0.0
            records.append(
                {"metric": "start_stop_iou", "kind": e.detail.get("kind", ""), "value": iou, "said": span}
            )
    elif shape == "visual_cue":
        for e in (e for e in truth if e.type == "visual_change"):
            kind = e.detail.get("kind", "")
            first = _mentions(toks, KEYWORDS.get(kind, set()), asked_at)
            hit = bool(first) and _inside(first[0], e.start, VISUAL_WINDOW)
            records.append({"metric": "visual", "kind": kind, "value": float(hit)})
    elif shape == "time":
        for e in (e for e in truth if e.type == "timer"):
            kind = e.detail.get("kind", "")
            n = int(e.detail.get("seconds", 0))
            if kind == "every":  # the reminder's task words, in the window around its due time
                keys = {w for w, _ in tokens([TimedWord(e.text or "", 0, 0)])} - _STOPWORDS
                hit = any(_inside(t, e.end, TIMER_WINDOW) for t in _mentions(toks, keys, asked_at))
            elif kind == "after":  # "N seconds" or "time's up", first said inside the window
                said = sorted(
                    [t for v, t in numbers(toks) if v == n and t >= asked_at]
                    + [t for w, t in toks if w in ("up", "time's") and t >= asked_at]
                )
                hit = bool(said) and _inside(said[0], e.end, TIMER_WINDOW)
            else:  # elapsed: a number within max(1, 10%) of the truth, soon after the question
                asked = float(e.detail.get("asked", e.end))
                hit = any(
                    _inside(t, asked, ELAPSED_WINDOW) and abs(v - n) <= max(1.0, 0.1 * n)
                    for v, t in numbers(toks)
                )
            records.append({"metric": "time", "kind": kind, "value": float(hit)})
    elif shape == "cue_word":
        for e in (e for e in truth if e.type == "cue"):
            keys = {w for w, _ in tokens([TimedWord(e.text or "", 0, 0)])}
            hit = any(_inside(t, e.end, CUE_WINDOW) for t in _mentions(toks, keys, e.end + CUE_WINDOW[0]))
            records.append({"metric": "cue", "kind": e.detail.get("kind", ""), "value": float(hit)})
    return records


def aggregate(records: list[dict]) -> dict:
    """Flat metrics from per-item records: per metric, each kind's mean and the macro mean over kinds
    (accuracies in percent, IoU in [0, 1]); counts of episodes / items per metric."""
    out: dict = {}
    names = {
        "rep_within_one": "rep_within_one",
        "start_stop_iou": "start_stop_miou",
        "time": "time_macro",
        "cue": "cue_macro",
        "visual": "visual_macro",
    }
    for metric, name in names.items():
        items = [r for r in records if r["metric"] == metric]
        if not items:
            continue
        scale = 1.0 if metric == "start_stop_iou" else 100.0
        kinds = sorted({r["kind"] for r in items})
        per_kind = {k: float(np.mean([r["value"] for r in items if r["kind"] == k])) * scale for k in kinds}
        out[name] = round(float(np.mean(list(per_kind.values()))), 4)
        if metric in ("time", "cue", "visual"):
            for k, v in per_kind.items():
                out[f"{metric}_{k}"] = round(v, 4)
        out[f"n_{metric}"] = len(items)
    return out


# --- transcription ------------------------------------------------------------------------------------------
SEGMENT_BRIDGE_S = 0.4  # non-quiet stretches closer than this are one segment
SEGMENT_PAD_S = 0.25
SEGMENT_MAX_S = 25.0  # Whisper reads 30 s windows


def sounding_segments(samples: np.ndarray) -> list[tuple[float, float]]:
    """Stretches of non-quiet output (the energy gate of `eval.activity`), bridged over short gaps, padded,
    and cut to at most SEGMENT_MAX_S."""
    from microturn.audio import SAMPLE_RATE
    from microturn.eval.activity import FRAME_S, QUIET_RMS, frame_rms

    loud = np.flatnonzero(frame_rms(samples) >= QUIET_RMS)
    if len(loud) == 0:
        return []
    spans: list[list[float]] = []
    for f in loud:
        t0, t1 = f * FRAME_S, (f + 1) * FRAME_S
        if spans and t0 - spans[-1][1] <= SEGMENT_BRIDGE_S:
            spans[-1][1] = t1
        else:
            spans.append([t0, t1])
    end = len(samples) / SAMPLE_RATE
    out = []
    for a, b in spans:
        a, b = max(0.0, a - SEGMENT_PAD_S), min(end, b + SEGMENT_PAD_S)
        while b - a > SEGMENT_MAX_S:
            out.append((a, a + SEGMENT_MAX_S))
            a += SEGMENT_MAX_S
        out.append((a, b))
    return out


def transcribe_segments(samples: np.ndarray) -> dict:
    """Whisper tiny.en (`eval.transcribe`) on each sounding segment on its own, words shifted to episode
    time, in the output.json schema. Short isolated words ("two.", "bingo.") in a long, mostly silent
    output are missed or mistimed when the whole file is transcribed at once; segment by segment the
    reference assistant of the held-out episodes scores near its text score."""
    from microturn.audio import SAMPLE_RATE
    from microturn.eval.transcribe import transcribe

    chunks, texts = [], []
    for a, b in sounding_segments(samples):
        part = transcribe(samples[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)])
        texts.append(part["text"])
        for c in part["chunks"]:
            t0, t1 = c["timestamp"]
            chunks.append({"text": c["text"], "timestamp": [round(a + t0, 3), round(a + t1, 3)]})
    return {"text": " ".join(t for t in texts if t), "chunks": chunks}


# --- episodes ---------------------------------------------------------------------------------------------
def find_episodes(data_dir: str | Path) -> list[Path]:
    """Conversation folders of proactive episodes: `data_dir` is a corpus (manifest.jsonl) or a folder of
    corpora."""
    data_dir = Path(data_dir)
    corpora = (
        [data_dir]
        if (data_dir / "manifest.jsonl").exists()
        else sorted(p.parent for p in data_dir.glob("*/manifest.jsonl"))
    )
    if not corpora:
        raise ValueError(f"{data_dir}: no corpus (manifest.jsonl) here or in its subfolders")
    folders = []
    for corpus in corpora:
        for entry in load_manifest(corpus):
            if any(t in PROACTIVE_EVENT_TYPES for t in entry.get("phenomena", {})):
                folders.append(corpus / entry["path"])
    if not folders:
        raise ValueError(
            f"{data_dir}: no proactive episodes (no events of {', '.join(PROACTIVE_EVENT_TYPES)})"
        )
    return folders


def generate_heldout(
    cache_dir: str | Path = DEFAULT_CACHE,
    per_shape: int = 6,
    seed: int = DEFAULT_DATA_SEED,
    tts_cache: str | Path | None = None,
    shapes: tuple[str, ...] = PROACTIVE_SHAPES,
) -> Path:
    """A held-out set (test split) of `per_shape` episodes per shape under cache_dir/seed<S>-n<N>/<shape>;
    rendered once, then reused."""
    from microturn.data.build import synth_corpus

    root = Path(cache_dir) / f"seed{seed}-n{per_shape}"
    for i, shape in enumerate(PROACTIVE_SHAPES):
        if shape in shapes:
            minutes = per_shape * PLANNED_EPISODE_S[shape] / 60
            synth_corpus(root / shape, minutes, seed + i, "test", shape, tts_cache, progress=False)
    return root


class EpisodeFeed:
    """A DuplexSystem fed the episode's side inputs: before each micro-turn's audio, that micro-turn's video
    frame and, with `heard` (the oracle transcriber: the episode's true user words, each pushed in the
    micro-turn its word ends), the heard words go to the model's session (a system without a session,
    the harness, gets neither)."""

    def __init__(
        self,
        system: DuplexSystem,
        spec: dict | None,
        heard: list[tuple[float, str]] | None = None,
        turn_s: float = 0.2,
    ):
        self.system, self.spec, self.turn_s = system, spec, turn_s
        self.heard = sorted(heard or [])
        self.turn = 0

    def reset(self, background: list[BackgroundText]) -> None:
        self.turn = 0
        self.system.reset(background)

    def step(self, chunk: np.ndarray) -> StepResult:
        session = getattr(self.system, "session", None)
        if session is not None:
            if self.spec is not None:
                session.push_video(scenes.render_frame(self.spec, scenes.frame_time(self.turn, self.turn_s)))
            now = (self.turn + 1) * self.turn_s
            words = [text for end, text in self.heard if self.turn * self.turn_s <= end < now]
            if words:
                session.push_heard(" ".join(words))
        self.turn += 1
        return self.system.step(chunk)

    def __getattr__(self, name: str):  # the loop's optional hooks (after_step, ...) reach the system
        return getattr(self.system, name)


@dataclass
class ProactiveRun:
    system: str
    metrics: dict  # {"speech": {...}, "text": {...}}
    records: list[dict] = field(default_factory=list)  # one per episode


def run_proactive(
    folders: list[Path],
    system_factory: Callable[[], DuplexSystem],
    out_dir: str | Path,
    system_name: str,
    transcribe_output: Callable[[np.ndarray], dict] | None = None,
    oracle_heard: bool = False,
) -> ProactiveRun:
    """Stream every episode through a fresh system, transcribe its output, score speech and text.
    `oracle_heard`: the model's heard-words memory gets the episode's true user words (a ceiling for a
    transcriber feeding it), not its transcript head's (or a Whisper-fed system's, see `_factories`)."""
    from tqdm import tqdm

    from microturn.audio import write_wav
    from microturn.eval.fdbench import words_from_transcript
    from microturn.runtime.stream_loop import run_stream

    transcribe_output = transcribe_output or transcribe_segments
    run_dir = Path(out_dir) / system_name
    records, per_source = [], {s: [] for s in SOURCES}
    for folder in tqdm(folders, desc=f"proactive {system_name}", unit="episode"):
        conv = load_conversation(folder)
        shape = conv.id.split("-", 1)[0]
        spec = conv.video["spec"] if conv.video else None
        heard = [(w.end, w.text) for w in conv.words if w.speaker == "user"] if oracle_heard else None
        system = EpisodeFeed(system_factory(), spec, heard)
        run = run_stream(system, conv.user, [])
        transcript = transcribe_output(run.output)
        episode_out = run_dir / conv.id
        episode_out.mkdir(parents=True, exist_ok=True)
        write_wav(episode_out / "output.wav", run.output)
        spoken = [TimedWord(w.text, w.start, w.end) for w in words_from_transcript(transcript)]
        text = [TimedWord(w["text"], w["start"], w["end"]) for w in run.words]
        (episode_out / "output.json").write_text(json.dumps(transcript, indent=1))
        (episode_out / "text.json").write_text(json.dumps(run.words, indent=1))
        asked = instruction_end(conv)
        record = {"episode": conv.id, "shape": shape, "input": str(folder), "output": str(episode_out)}
        for source, words in (("speech", spoken), ("text", text)):
            items = score_episode(shape, conv.events, asked, words)
            per_source[source] += items
            record[source] = items
        records.append(record)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return ProactiveRun(system_name, {s: aggregate(per_source[s]) for s in SOURCES}, records)


# --- report -----------------------------------------------------------------------------------------------
COLUMNS = [
    ("rep_within_one", "reps within one % ↑"),
    ("start_stop_miou", "start/stop mIoU ↑"),
    ("time_macro", "time macro % ↑"),
    ("cue_macro", "cue macro % ↑"),
    ("visual_macro", "visual cue macro % ↑"),
]
TARGETS = {"rep_within_one": 80.0, "start_stop_miou": 0.6, "time_macro": 80.0, "cue_macro": 85.0}


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def episode_timeline(record: dict, path: Path, title: str) -> None:
    from microturn.audio import read_wav
    from microturn.eval.activity import speech_segments
    from microturn.eval.plots import timeline_plot

    conv = load_conversation(record["input"])
    output, _ = read_wav(Path(record["output"]) / "output.wav")
    text = json.loads((Path(record["output"]) / "text.json").read_text())
    marks = []
    for e in conv.events:
        if e.type in PROACTIVE_EVENT_TYPES:  # timers are marked at their due time, points widened to 0.2 s
            start = e.end if e.type == "timer" else e.start
            marks.append((e.text or e.type, start, max(e.end, start + 0.2)))
    timeline_plot(
        path,
        user_words=[(w.text, w.start, w.end) for w in conv.words if w.speaker == "user"],
        system_words=[(w["text"], w["start"], w["end"]) for w in text],
        system_segments=[(s.start, s.end) for s in speech_segments(output)],
        marks=marks,
        duration_s=conv.duration_s,
        title=title + " (system words: emitted text; bars: its audio; shaded: ground truth)",
    )


def write_report(out_dir: str | Path, runs: list[ProactiveRun]) -> Path:
    """report.md, metrics.json ({system: {speech: {...}, text: {...}}}) and one timeline per shape and
    system (the first episode of the shape)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {r.system: r.metrics for r in runs}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plots = []
    for run in runs:
        for shape in PROACTIVE_SHAPES:
            record = next((r for r in run.records if r["shape"] == shape), None)
            if record is not None:
                name = f"timeline_{run.system}_{shape}.png"
                episode_timeline(record, out_dir / name, f"{run.system} {shape}: {record['episode']}")
                plots.append(name)
    lines = [
        "# Proactive evaluation: eyes, a clock and cue words",
        "",
        "Held-out proactive episodes (docs/corpus.md) streamed through each system as live, with the "
        "episode's video pushed one frame per micro-turn. `speech` (primary): the output audio "
        "transcribed by Whisper tiny.en. `text` (secondary): the words the system emitted as text, at the "
        "times they played (the model's inner monologue). Definitions: docs/evaluation.md. Targets: "
        + ", ".join(f"{k} >= {v:g}" for k, v in TARGETS.items())
        + ".",
        "",
        "| system | words | " + " | ".join(t for _, t in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for run in runs:
        for source in SOURCES:
            m = run.metrics[source]
            label = "speech (Whisper)" if source == "speech" else "text (emitted, secondary)"
            lines.append(
                f"| {run.system} | {label} | " + " | ".join(_cell(m.get(k)) for k, _ in COLUMNS) + " |"
            )
    lines += ["", "## Per kind", "", "```"]
    lines += [f"{run.system} {s}: {json.dumps(run.metrics[s])}" for run in runs for s in SOURCES]
    lines += ["```", "", "## Timelines (first episode of each shape)", ""]
    lines += [f"![{p}]({p})" for p in plots]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return out_dir / "report.md"


# --- command ----------------------------------------------------------------------------------------------
def _factories(args: argparse.Namespace) -> dict[str, Callable[[], Callable[[], DuplexSystem]]]:
    def model():
        from microturn.background.offline import SimulatedHearing
        from microturn.runtime.model_system import model_system_factory

        hearing = None
        if args.heard == "whisper":  # as `serve --background`: Whisper fills the memory, as late as live
            hearing = SimulatedHearing()
            hearing.warm_up()
        return model_system_factory(args.checkpoint, args.seed, hearing, args.voice)

    def harness():
        from microturn.eval.harness import CascadeHarness

        system = CascadeHarness()
        return lambda: system

    return {"model": model, "harness": harness}


def cmd_proactive(args: argparse.Namespace) -> int:
    shapes = tuple(args.shapes.split(",")) if args.shapes else PROACTIVE_SHAPES
    unknown = set(shapes) - set(PROACTIVE_SHAPES)
    if unknown:
        raise ValueError(f"--shapes: unknown {sorted(unknown)}; choose from {', '.join(PROACTIVE_SHAPES)}")
    if args.dir:
        data = Path(args.dir)
    else:
        data = generate_heldout(args.cache, args.episodes or 6, args.data_seed, shapes=shapes)
    folders = [f for f in find_episodes(data) if f.name.split("-", 1)[0] in shapes]
    if args.dir and args.episodes:  # at most N per shape from a given folder too
        kept, seen = [], {}
        for f in folders:
            shape = f.name.split("-", 1)[0]
            if seen.get(shape, 0) < args.episodes:
                kept.append(f)
                seen[shape] = seen.get(shape, 0) + 1
        folders = kept
    if not folders:
        raise ValueError(f"{data}: no episodes of {', '.join(shapes)}")
    systems = list(SYSTEMS) if args.system == "both" else [args.system]
    factories = _factories(args)
    runs = []
    for name in systems:
        run = run_proactive(folders, factories[name](), args.out, name, oracle_heard=args.heard == "oracle")
        runs.append(run)
        print(f"{name}: " + json.dumps(run.metrics))
    report = write_report(args.out, runs)
    if args.json:
        Path(args.json).write_text(json.dumps({r.system: r.metrics for r in runs}, indent=1))
    print(f"report: {report}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("proactive", help="visual cues, rep counting, start/stop, time and cue words")
    p.add_argument(
        "dir", nargs="?", default=None, help="corpus or folder of corpora (default: generate a held-out set)"
    )
    p.add_argument("--system", choices=[*SYSTEMS, "both"], default="both")
    p.add_argument("--checkpoint", default=None, help="model checkpoint folder (default: the embedded one)")
    add_voice_argument(p)
    p.add_argument("--out", default="out/proactive", help="where outputs, report.md and plots go")
    p.add_argument("--json", default=None, help="also write the metrics here")
    p.add_argument(
        "--episodes", type=int, default=None, help="episodes per shape (generated set: default 6; DIR: all)"
    )
    p.add_argument("--shapes", default=None, help="comma-separated subset of " + ",".join(PROACTIVE_SHAPES))
    p.add_argument("--data-seed", type=int, default=DEFAULT_DATA_SEED, help="seed of the generated set")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the generated set is kept")
    p.add_argument("--seed", type=int, default=0, help="the model session's seed")
    p.add_argument(
        "--heard",
        choices=("head", "whisper", "oracle"),
        default="head",
        help="what fills the model's heard-words memory: its transcript head, Whisper tiny.en on the user's "
        "speech segments (as the live background worker; each as late as its transcription took), or the "
        "episode's true words",
    )
    p.set_defaults(func=cmd_proactive)
