"""Plan and render a whole corpus: which chat segments, in which order, resumable, in parallel.

The plan is a pure function of (split, minutes, seed, shape): chats of the split in a seeded order, cut
into conversations by an estimate of their spoken length. Rendering a planned conversation depends only on
(seed, its id) and the cached units, so any number of workers gives the same corpus, and a restarted run
skips the folders already complete.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from microturn.data.chitchat import Chat, load_chats
from microturn.data.corpus import (
    MANIFEST,
    TIMELINE,
    VIDEO,
    is_complete,
    write_conversation,
    write_manifest,
)
from microturn.data.synth import PROACTIVE_SHAPES, SHAPES, ConversationSpec, SynthConfig, is_own_act, render
from microturn.data.tts import TtsCache
from microturn.files import atomic_write_text

CORPUS_CONFIG = "corpus.json"
# Planning estimate of a turn's length, fitted on a rendered corpus (0.367 s per word + 1.0 s per turn,
# mean error 6 s per conversation): --minutes then matches the rendered total within a few percent.
WORDS_PER_S = 2.72
TURN_OVERHEAD_S = 1.0
MIN_CONVERSATION_S, MAX_CONVERSATION_S = 30.0, 120.0


def _turn_s(text: str, max_words: int = 60) -> float:
    return min(len(text.split()), max_words) / WORDS_PER_S + TURN_OVERHEAD_S


def _conversation_segments(chat: Chat, rng: np.random.Generator) -> list[tuple[int, int, float]]:
    """(first turn, number of turns, estimated seconds) pieces of 30-120 s."""
    pieces, first, length = [], 0, 0.0
    target = rng.uniform(MIN_CONVERSATION_S, MAX_CONVERSATION_S)
    for i, turn in enumerate(chat.turns):
        length += _turn_s(turn.text)
        if length >= target and i + 1 - first >= 2:
            pieces.append((first, i + 1 - first, length))
            first, length, target = i + 1, 0.0, rng.uniform(MIN_CONVERSATION_S, MAX_CONVERSATION_S)
    if first < len(chat.turns):
        if pieces and (length < 15.0 or len(chat.turns) - first < 2):  # a short tail joins the last piece
            f, n, est = pieces.pop()
            pieces.append((f, n + len(chat.turns) - first, est + length))
        elif len(chat.turns) - first >= 2:
            pieces.append((first, len(chat.turns) - first, length))
    return pieces


def _episode_positions(chat: Chat, shape: str) -> list[tuple[int, int]]:
    """(turn where the episode starts, number of turns) that fit a Full-Duplex-Bench episode shape; the
    first turn is the user's."""
    turns, out = chat.turns, []
    for i, turn in enumerate(turns):
        n_words = len(turn.text.split())
        has_reply = i + 1 < len(turns) and not is_own_act(turns[i + 1].text)
        if shape == "pause" and 14 <= n_words and has_reply:
            out.append((i, 2))
        elif shape == "turn_taking" and 3 <= n_words <= 30 and has_reply:
            out.append((i, 2))
        elif shape == "backchannel" and n_words >= 32:
            out.append((i, 2 if i + 1 < len(turns) else 1))
        elif (
            shape == "interruption"
            and i + 3 < len(turns)
            and 3 <= n_words <= 30
            and len(turns[i + 1].text.split()) >= 18
            and not is_own_act(turns[i + 3].text)
        ):
            out.append((i, 4))
    return out


def plan(split: str, minutes: float, seed: int, shape: str = "conversation") -> list[ConversationSpec]:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
    chats = load_chats(split)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(chats))
    keys = [c.key for c in chats]
    specs: list[ConversationSpec] = []
    total = 0.0
    if shape in PROACTIVE_SHAPES:  # one episode per chat (its text is what the user talks about)
        from microturn.data.proactive import PLANNED_EPISODE_S, VARIANTS

        variants = VARIANTS[shape]
        for index in order:
            chat = chats[index]
            others = tuple(str(k) for k in rng.choice(keys, size=3, replace=False))
            specs.append(
                ConversationSpec(
                    f"{shape}-{chat.key[:12]}",
                    split,
                    chat.key,
                    0,
                    len(chat.turns),
                    chat.turns[0].sender,
                    shape,
                    others,
                    variant=variants[len(specs) % len(variants)],
                )
            )
            total += PLANNED_EPISODE_S[shape]
            if total >= minutes * 60:
                break
        return specs
    for index in order:
        chat = chats[index]
        if shape == "conversation":
            pieces = [(f, n, est, int(rng.integers(2))) for f, n, est in _conversation_segments(chat, rng)]
        else:
            positions = _episode_positions(chat, shape)
            rng.shuffle(positions)
            pieces = [
                (f, n, sum(_turn_s(t.text, 45) for t in chat.turns[f : f + n]), chat.turns[f].sender)
                for f, n in positions[:2]
            ]  # at most two episodes per chat: variety of text
        for first, n_turns, est, user_sender in pieces:
            others = tuple(str(k) for k in rng.choice(keys, size=3, replace=False))
            prefix = "" if shape == "conversation" else f"{shape}-"
            specs.append(
                ConversationSpec(
                    f"{prefix}{chat.key[:12]}-{first:03d}",
                    split,
                    chat.key,
                    first,
                    n_turns,
                    user_sender,
                    shape,
                    others,
                )
            )
            total += est
            if total >= minutes * 60:
                return specs
    return specs


# --- rendering in worker processes ---------------------------------------------------------------------
_worker: dict[str, Any] = {}


def _init_worker(
    cache_dir: str, seed: int, split: str, timing_seed: int | None, overrides: dict[str, Any] | None
) -> None:
    import torch

    torch.set_num_threads(1)
    chats = {c.key: c for c in load_chats(split)}
    _worker.update(
        cache=TtsCache(cache_dir), seed=seed, timing_seed=timing_seed, chats=chats, overrides=overrides or {}
    )


def _render_one(job: tuple[ConversationSpec, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec, out = job
    cache: TtsCache = _worker["cache"]
    before = {k: dict(v) for k, v in cache.stats.items()}
    config = replace(SynthConfig.for_shape(spec.shape), **_worker["overrides"])
    conv = render(spec, _worker["chats"], cache, _worker["seed"], config, _worker["timing_seed"])
    write_conversation(Path(out) / spec.id, conv)
    delta = {k: {m: v[m] - before.get(k, {}).get(m, 0) for m in v} for k, v in cache.stats.items()}
    return conv.manifest_entry(Path(out)), delta


def _entry_from_disk(folder: Path, corpus_dir: Path) -> dict[str, Any]:
    timeline = json.loads((folder / TIMELINE).read_text())
    counts: dict[str, int] = {}
    for e in timeline["events"]:
        counts[e["type"]] = counts.get(e["type"], 0) + 1
    return {
        "id": timeline["id"],
        "split": timeline["split"],
        "path": str(folder.relative_to(corpus_dir)),
        "duration_s": timeline["duration_s"],
        "phenomena": dict(sorted(counts.items())),
        **({"video": True} if (folder / VIDEO).exists() else {}),
    }


def _check_corpus_config(out: Path, config: dict[str, Any]) -> None:
    path = out / CORPUS_CONFIG
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        clash = {
            k: existing.get(k)
            for k in ("seed", "timing_seed", "split", "shape", "synth")
            if existing.get(k) != config.get(k)
        }
        if clash:
            raise ValueError(f"{path}: {out} holds a corpus made with {clash}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(config, indent=1) + "\n")


def synth_corpus(
    out: str | Path,
    minutes: float,
    seed: int,
    split: str = "train",
    shape: str = "conversation",
    cache_dir: str | Path | None = None,
    workers: int = 1,
    progress: bool = True,
    timing_seed: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Render (or finish rendering) a corpus; returns a summary with speeds. `overrides` replace fields of
    each shape's `SynthConfig` (recorded in the corpus's config file)."""
    out = Path(out)
    cache_dir = Path(cache_dir) if cache_dir else TtsCache().root
    specs = plan(split, minutes, seed, shape)
    if not specs:
        raise ValueError(f"no {split} chats fit the shape {shape!r}")
    _check_corpus_config(
        out,
        {
            "seed": seed,
            "timing_seed": timing_seed,
            "split": split,
            "shape": shape,
            "minutes": minutes,
            "cache": str(cache_dir),
            **({"synth": overrides} if overrides else {}),
        },
    )
    entries: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if is_complete(out / spec.id):
            entries[spec.id] = _entry_from_disk(out / spec.id, out)
    todo = [(s, str(out)) for s in specs if s.id not in entries]
    tts: dict[str, dict[str, float]] = {}
    audio_s, start, cpu_start = 0.0, time.perf_counter(), time.process_time()
    bar = tqdm(
        total=len(specs), initial=len(entries), unit="conv", disable=not progress, desc=f"synth {split}"
    )
    if workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(
            workers, _init_worker, (str(cache_dir), seed, split, timing_seed, overrides)
        )
        results = pool.imap_unordered(_render_one, todo)
    else:
        pool = None
        _init_worker(str(cache_dir), seed, split, timing_seed, overrides)
        results = map(_render_one, todo)
    try:
        for entry, delta in results:
            entries[entry["id"]] = entry
            audio_s += entry["duration_s"]
            for engine, stat in delta.items():
                acc = tts.setdefault(engine, {"units": 0, "audio_s": 0.0, "wall_s": 0.0})
                for k, v in stat.items():
                    acc[k] += v
            write_manifest(out, [entries[s.id] for s in specs if s.id in entries])
            bar.update(1)
            bar.set_postfix(
                audio_min=f"{audio_s / 60:.1f}",
                x_real_time=f"{audio_s / max(time.perf_counter() - start, 1e-9):.1f}",
            )
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    write_manifest(out, [entries[s.id] for s in specs if s.id in entries])
    wall = time.perf_counter() - start
    # CPU seconds of this process: the speed on a machine shared with other work (workers > 1: not counted)
    cpu = time.process_time() - cpu_start if workers <= 1 else None
    return {
        "corpus": str(out),
        "conversations": len(entries),
        "rendered_now": len(todo),
        "rendered_audio_s": round(audio_s, 1),
        "wall_s": round(wall, 1),
        "x_real_time": round(audio_s / wall, 1) if wall > 0 else None,
        "cpu_s": round(cpu, 1) if cpu is not None else None,
        "x_real_time_per_cpu_s": round(audio_s / cpu, 1) if cpu else None,
        "tts_first_synthesis": {
            k: {
                **{m: round(x, 2) for m, x in v.items()},
                "x_real_time": round(v["audio_s"] / max(v["wall_s"], 1e-9), 1),
            }
            for k, v in tts.items()
        },
        "manifest": str(out / MANIFEST),
    }
