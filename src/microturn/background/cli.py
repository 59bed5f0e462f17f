"""`microturn eval background`: how well the interaction model delivers the background model's answers.

Held-out question episodes (the corpus's test conversations that carry background text: the user asks,
the reply's content arrives later through the background stream) are streamed in real time through one
engine session with a `BackgroundWorker` on the chosen backend (embedded SmolLM2 or an OpenAI-compatible
URL); the worker is started by the session's own user-turn ends, exactly as in the server. Measured:
- delivered: the share of answers whose content words appear in what the model then said (its output
  audio transcribed by Whisper tiny.en: word overlap with the answer >= `--overlap`); `delivered_text` is
  the same score on the words of its text head (what it meant to say), which separates content from voice;
- first_word_delay_s: from an answer's first text reaching the session to the model's first word after;
- talk_over_user_s: seconds the model's output was audible while the user was speaking (the corpus's
  user words), from an answer's arrival to the next answer's (or the episode's end), so no second counts
  twice (target 0). Read from the output audio itself (20 ms frames above -40 dBFS, `eval.activity`), not
  from Whisper's word timestamps, which on a whole recording can place a word seconds from where it
  sounded;
- backend: tasks started, failed, and the time from a turn end to the first text.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from microturn.background.backends import EmbeddedBackend, backend_from_spec
from microturn.background.worker import BackgroundWorker, WorkerConfig
from microturn.eval.activity import FRAME_S, QUIET_RMS, frame_rms
from microturn.files import atomic_write_text
from microturn.runtime.cli import add_voice_argument

CHUNK = 3200
_WORD = re.compile(r"[a-z0-9']+")
STOPWORDS = set(
    "a an the is are was were be to of and or in on at it its i you we he she they that this for".split()
)


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


def find_episodes(corpus: Path, limit: int, min_s: float) -> list[Path]:
    """Test conversations with background text of at least `min_s`, the shortest first (a small default
    run stays short)."""
    manifest = corpus / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no corpus manifest (build one with `microturn data build`)")
    found = []
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("split", "test") == "test" and entry.get("phenomena", {}).get("background_text"):
            if entry["duration_s"] < min_s:
                continue
            found.append((entry["duration_s"], corpus / entry["path"]))
    if not found:
        raise ValueError(f"{manifest}: no test conversation with background text")
    return [path for _, path in sorted(found)[:limit]]


def run_episode(
    folder: Path, engine, backend, timeout_s: float, max_s: float, tail_s: float, seed: int
) -> dict:
    """Stream one conversation's user channel in real time (the engine on its own thread) with a worker."""
    from microturn.data.corpus import load_conversation

    conversation = load_conversation(folder)
    user = np.asarray(conversation.user, dtype=np.float32)[: int(max_s * 16_000)]
    words: list[dict] = []  # the model's own text words (its text head)
    chunks: list[tuple[float, np.ndarray]] = []  # its audio, at the session time each chunk plays

    session = engine.open_session(seed=seed)
    worker = BackgroundWorker(session, backend, WorkerConfig(timeout_s=timeout_s))

    def on_output(output) -> None:
        worker.observe(output)
        words.extend(output.words)
        chunks.append((output.start, output.audio_16k))

    session.on_output = on_output
    started = time.monotonic()
    try:
        for t in range(len(user) // CHUNK):
            due = started + t * 0.2
            time.sleep(max(0.0, due - time.monotonic()))
            session.push_audio(user[t * CHUNK : (t + 1) * CHUNK], 16_000)
        # then silence (the engine fills missing input with it) while the last answer can still be said
        time.sleep(tail_s)
    finally:
        engine.close_session(session)
        worker.close()
    output = output_audio(chunks)
    spoken = transcribe_output(output)
    user_spans = [(w.start, w.end) for w in conversation.words if w.speaker == "user" and w.start < max_s]
    talk_over = talk_over_frames(output, user_spans)
    arrivals = worker.first_text_at
    result = score_episode(folder.name, worker.events, arrivals, spoken, talk_over, started)
    meant = score_episode(folder.name, worker.events, arrivals, words, talk_over, started)
    return {**result, "answers_text": meant["answers"], "model_text_words": len(words)}


def output_audio(chunks: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """The model's output at 16 kHz on the session's clock, from its micro-turn chunks."""
    if not chunks:
        return np.zeros(0, np.float32)
    end = max(start for start, _ in chunks) + 0.2
    audio = np.zeros(int(end * 16_000) + CHUNK, np.float32)
    for start, samples in chunks:
        at = int(round(start * 16_000))
        audio[at : at + len(samples)] = samples
    return audio


def transcribe_output(audio: np.ndarray) -> list[dict]:
    """The model's speech as Whisper hears it: words with session times ({"text", "start", "end"})."""
    from microturn.eval.transcribe import transcribe

    if not len(audio):
        return []
    return [
        {"text": c["text"], "start": c["timestamp"][0], "end": c["timestamp"][1]}
        for c in transcribe(audio)["chunks"]
    ]


def talk_over_frames(output: np.ndarray, user_spans: list[tuple[float, float]]) -> np.ndarray:
    """Per `activity.FRAME_S` frame: was the model audible while the user was speaking?"""
    audible = frame_rms(output) >= QUIET_RMS
    user = np.zeros(len(audible), bool)
    for start, end in user_spans:
        user[int(start / FRAME_S) : int(np.ceil(end / FRAME_S))] = True
    return audible & user


def score_episode(
    name: str,
    events: list[dict],
    arrivals: dict[str, float],
    words: list[dict],
    talk_over: np.ndarray,
    t0: float,
) -> dict:
    """Delivery, first-word delay and talk-over (`talk_over_frames`) for each answer of one episode (times
    in session seconds).
    `arrivals`: when each task's first text reached the session (`BackgroundWorker.first_text_at`, on the
    events' clock), which for an opening streamed word by word is before its first sentence's event."""
    answers = []
    tasks = [e for e in events if e["status"] == "started"]
    arrived = {task: at - t0 for task, at in arrivals.items()}
    for task in tasks:
        sentences = [
            e for e in events if e["task_id"] == task["task_id"] and e["status"] == "progress" and "text" in e
        ]
        end = next(
            (
                e
                for e in events
                if e["task_id"] == task["task_id"] and e["status"] in ("done", "failed", "cancelled")
            ),
            None,
        )
        if not sentences:
            answers.append(
                {"task": task["task_id"], "status": end["status"] if end else "unfinished", "text": ""}
            )
            continue
        arrival = arrived[task["task_id"]]
        text = " ".join(s["text"] for s in sentences)
        said_after = [w for w in words if w["start"] >= arrival]
        answer_words = content_words(text)
        said_words = content_words(" ".join(w["text"] for w in said_after))
        overlap = len(answer_words & said_words) / max(1, len(answer_words))
        until = min([t for t in arrived.values() if t > arrival], default=float("inf"))
        frames = talk_over[int(arrival / FRAME_S) : int(until / FRAME_S) if until < float("inf") else None]
        answers.append(
            {
                "task": task["task_id"],
                "status": end["status"] if end else "unfinished",
                "text": text,
                "arrival_s": round(arrival, 2),
                "turn_end_to_answer_s": round(arrival + t0 - task["time"], 2),
                "overlap": round(overlap, 3),
                "first_word_delay_s": round(said_after[0]["start"] - arrival, 2) if said_after else None,
                "talk_over_user_s": round(float(frames.sum()) * FRAME_S, 2),
            }
        )
    return {
        "episode": name,
        "answers": answers,
        "spoken_words": len(words),
        "spoken": " ".join(w["text"] for w in words),
    }


def _delivered(answers: list[dict], min_overlap: float) -> float | None:
    with_text = [a for a in answers if a["text"]]
    delivered = [a for a in with_text if a["overlap"] >= min_overlap]
    return round(len(delivered) / len(with_text), 3) if with_text else None


def summarise(episodes: list[dict], min_overlap: float) -> dict:
    answers = [a for e in episodes for a in e["answers"]]
    with_text = [a for a in answers if a["text"]]
    delays = [a["first_word_delay_s"] for a in with_text if a["first_word_delay_s"] is not None]
    backend = [a["turn_end_to_answer_s"] for a in with_text]
    return {
        "episodes": len(episodes),
        "tasks": len(answers),
        "tasks_failed": sum(a["status"] == "failed" for a in answers),
        "answers": len(with_text),
        "delivered": _delivered(answers, min_overlap),
        "delivered_text": _delivered([a for e in episodes for a in e.get("answers_text", [])], min_overlap),
        "mean_overlap": round(float(np.mean([a["overlap"] for a in with_text])), 3) if with_text else None,
        "first_word_delay_s_median": round(float(np.median(delays)), 2) if delays else None,
        "talk_over_user_s": round(sum(a["talk_over_user_s"] for a in with_text), 2),
        "turn_end_to_answer_s_median": round(float(np.median(backend)), 2) if backend else None,
    }


def eval_background(args: argparse.Namespace) -> int:
    import torch

    from microturn.runtime.checkpoint import load_runtime
    from microturn.runtime.engine import Engine, EngineConfig

    episodes = find_episodes(Path(args.corpus), args.episodes, args.min_s)
    backend = backend_from_spec(args.backend)
    if backend is None:
        raise ValueError("--backend off: nothing to evaluate")
    if isinstance(backend, EmbeddedBackend):
        backend.load()  # before the clock starts
    torch.set_num_threads(1)
    models = load_runtime(args.checkpoint)
    engine = Engine(EngineConfig(voice=args.voice), models.model, models.tokenizer, models.vocoder)
    engine.start()
    results = []
    try:
        for i, folder in enumerate(episodes):
            started = time.monotonic()
            results.append(
                run_episode(folder, engine, backend, args.timeout_s, args.max_s, args.tail_s, seed=i)
            )
            print(
                f"[{i + 1}/{len(episodes)}] {folder.name}: {len(results[-1]['answers'])} tasks, "
                f"{time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        engine.stop()
    report = {
        "summary": summarise(results, args.overlap),
        "backend": getattr(backend, "name", args.backend),
        "checkpoint": str(args.checkpoint or "shipped"),
        "engine_overruns": engine.stats.overruns,
        "episodes": results,
    }
    text = json.dumps(report, indent=1)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    print(json.dumps(report["summary"], indent=1))
    return 0


def add_parser(eval_subparsers: argparse._SubParsersAction) -> None:
    """Adds `microturn eval background` under the `eval` command (microturn.eval.cli calls this)."""
    p = eval_subparsers.add_parser(
        "background", help="background-model delivery on held-out question episodes", description=__doc__
    )
    p.add_argument(
        "--corpus", default="corpora/test", help="corpus folder with manifest.jsonl (default corpora/test)"
    )
    p.add_argument("--episodes", type=int, default=3, help="episodes to run, the shortest first (default 3)")
    p.add_argument("--min-s", type=float, default=20.0, help="skip episodes shorter than this (default 20)")
    p.add_argument("--tail-s", type=float, default=8.0, help="silence after each episode (default 8)")
    p.add_argument("--max-s", type=float, default=40.0, help="seconds of each episode to stream (default 40)")
    p.add_argument(
        "--backend", default="embedded", help="embedded (SmolLM2) or an OpenAI-compatible base URL[#model]"
    )
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="interaction model (default: the shipped one)"
    )
    add_voice_argument(p)
    p.add_argument("--timeout-s", type=float, default=30.0, help="a background task's time limit")
    p.add_argument(
        "--overlap", type=float, default=0.5, help="answer content words that must be said (default 0.5)"
    )
    p.add_argument("--json", default=None, metavar="OUT", help="write the full report here")
    p.set_defaults(func=eval_background)
