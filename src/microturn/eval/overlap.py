"""Full-Duplex-Bench v1.5 stand-in: overlap while the system speaks, and what the system does about it.

Four scenarios, each with its expected behaviour: the user interrupts (stop and respond), the user
backchannels, the user talks to someone else, background speech (all three: resume, i.e. keep or resume
the original reply). The original benchmark asks an LLM judge; here a rule on the output timeline
(documented in docs/evaluation.md) classifies the behaviour, and the score is the rate of the expected
behaviour x 100 per scenario.

The generator builds the scenario samples from held-out corpus conversations: the user asks a question
(a user turn of the conversation, in its voice), the oracle background holds the assistant's reply, and
2-4 s into where the reply should be playing the overlap occurs.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from microturn.audio import SAMPLE_RATE, write_wav
from microturn.eval.activity import FRAME_S, MIN_QUIET_S, SPEAKING_BEFORE_S, active_at, quiet_start_after
from microturn.eval.fdbench import Word
from microturn.eval.samples import OVERLAP_SCENARIOS

EXPECTED = {
    "interrupt": ("stop_and_respond",),
    "backchannel": ("continue", "stop_and_resume"),
    "side_talk": ("continue", "stop_and_resume"),
    "background_speech": ("continue", "stop_and_resume"),
}
BEHAVIOURS = ("not_speaking", "continue", "stop", "stop_and_resume", "stop_and_respond")
_TOKEN = re.compile(r"[a-z']+")


@dataclass(frozen=True)
class OverlapRule:
    speaking_before_s: float = SPEAKING_BEFORE_S  # the system was speaking when the overlap began
    stop_within_s: float = 1.5  # a yield is a silence that starts within this after the overlap start
    yield_silence_s: float = MIN_QUIET_S  # ... and lasts at least this long (500 ms)
    restart_within_s: float = (
        4.0  # speech after the yield counts if it starts within this after the overlap end
    )
    resume_share: float = 0.5  # share of the restart's content words found in the original reply


def content_words(text: str) -> list[str]:
    """Lowercase word tokens of four letters or more (function words say little about content)."""
    return [t for t in _TOKEN.findall(text.lower()) if len(t.strip("'")) >= 4]


def classify_overlap(
    output: np.ndarray,
    words: list[Word],
    start_s: float,
    end_s: float,
    reply_text: str,
    rule: OverlapRule = OverlapRule(),
) -> str:
    """One of BEHAVIOURS from the output audio (16 kHz), its words, the overlap span and the reply the
    system was giving when the overlap began."""
    if not active_at(output, start_s - rule.speaking_before_s, start_s + FRAME_S):
        return "not_speaking"
    quiet = quiet_start_after(output, start_s, min_quiet_s=rule.yield_silence_s)
    if quiet - start_s > rule.stop_within_s:
        return "continue"
    after_yield = [w for w in words if w.start >= quiet + rule.yield_silence_s]
    if not after_yield or after_yield[0].start > max(end_s, quiet) + rule.restart_within_s:
        return "stop"
    restart = content_words(" ".join(w.text for w in after_yield)) or [
        t for w in after_yield for t in _TOKEN.findall(w.text.lower())
    ]
    original = set(content_words(reply_text)) or set(_TOKEN.findall(reply_text.lower()))
    share = sum(t in original for t in restart) / max(1, len(restart))
    return "stop_and_resume" if share >= rule.resume_share else "stop_and_respond"


def overlap_record(scenario: str, behaviour: str) -> dict:
    """The per-sample record `fdbench.aggregate` scores."""
    if scenario not in EXPECTED:
        raise ValueError(f"unknown overlap scenario {scenario!r} (expected one of {', '.join(EXPECTED)})")
    return {"scenario": scenario, "behaviour": behaviour, "expected": behaviour in EXPECTED[scenario]}


# ---- scenario generation ---------------------------------------------------------------------------

BACKCHANNELS = ("mm-hm.", "yeah.", "right.", "okay.", "uh-huh.", "i see.")
SIDE_TALK = (
    "hang on, i'm on a call.",
    "can you turn that down a bit?",
    "just put it on the table, thanks.",
    "i'll be there in a minute.",
    "no, the other one, on the left.",
    "did you feed the cat?",
)
INTERRUPTIONS = (
    "wait, sorry, can i ask you something else?",
    "hold on, stop, that's not what i meant.",
    "sorry to cut in, but what about tomorrow?",
    "wait, can you say that again more simply?",
)
BACKGROUND_GAIN_DB = -12.0  # background talk sits below the user's level
MIN_REPLY_WORDS = 24  # the reply must still be playing 2-4 s in, even for a slow system
TAIL_S = 8.0


@dataclass
class ScenarioPlan:
    """What one generated sample says and when (seconds in the input)."""

    scenario: str
    question: str
    question_voice: str
    reply: str
    overlap_text: str
    overlap_voice: str
    response: str  # the interrupt scenario's answer to the interruption ("" otherwise)


def plan_scenarios(conversation, rng: np.random.Generator) -> list[ScenarioPlan]:
    """One plan per scenario from a corpus conversation, or [] when it has no usable question/reply:
    a user turn followed by assistant turns of at least MIN_REPLY_WORDS words (consecutive assistant turns
    are joined), and, for the interrupt scenario, a later assistant turn as the response."""
    from microturn.data.voices import Voice, sample_other_voice

    turns = [u for u in conversation.utterances if u.kind == "turn" and u.speaker in ("user", "assistant")]
    for i, question in enumerate(turns):
        if question.speaker != "user" or not question.voice:
            continue
        reply_words: list[str] = []
        j = i + 1
        while j < len(turns) and len(reply_words) < MIN_REPLY_WORDS:
            if turns[j].speaker == "assistant":
                reply_words += turns[j].text.split()
            j += 1
        later = [u.text for u in turns[j:] if u.speaker == "assistant"]
        if len(reply_words) < MIN_REPLY_WORDS or not later:
            continue
        reply = " ".join(reply_words)
        user_voice = question.voice
        other = sample_other_voice(rng, avoid=Voice.from_id(user_voice)).id
        texts = {
            "interrupt": (str(rng.choice(INTERRUPTIONS)), user_voice, later[0]),
            "backchannel": (str(rng.choice(BACKCHANNELS)), user_voice, ""),
            "side_talk": (str(rng.choice(SIDE_TALK)), user_voice, ""),
            "background_speech": (_other_text(conversation, rng), other, ""),
        }
        return [ScenarioPlan(s, question.text, user_voice, reply, *texts[s]) for s in OVERLAP_SCENARIOS]
    return []


def _other_text(conversation, rng: np.random.Generator) -> str:
    """Background talk: a user line of the same conversation said by a stranger (content unrelated to now)."""
    lines = [u.text for u in conversation.utterances if u.speaker == "user" and len(u.text.split()) >= 5]
    return str(rng.choice(lines)) if lines else "so anyway, i told him we would meet at six near the station."


def render_scenario(plan: ScenarioPlan, tts, rng: np.random.Generator) -> tuple[np.ndarray, dict, list]:
    """Input audio, overlap.json entry, background.json list for one plan. `tts` is a data.tts.TtsCache."""
    from microturn.data.voices import Voice

    lead_s = 0.5
    question = tts.unit(Voice.from_id(plan.question_voice), plan.question)
    q_end = lead_s + len(question) / SAMPLE_RATE
    # 2-4 s into a reply that starts about 1 s after the question (either system's typical gap)
    overlap_start = q_end + 1.0 + float(rng.uniform(2.0, 4.0))
    overlap = tts.unit(Voice.from_id(plan.overlap_voice), plan.overlap_text)
    if plan.scenario == "background_speech":
        overlap = overlap * 10 ** (BACKGROUND_GAIN_DB / 20)
    overlap_end = overlap_start + len(overlap) / SAMPLE_RATE
    total = int((overlap_end + TAIL_S) * SAMPLE_RATE)
    audio = np.zeros(total, np.float32)
    a = int(lead_s * SAMPLE_RATE)
    audio[a : a + len(question)] += question
    b = int(overlap_start * SAMPLE_RATE)
    audio[b : b + len(overlap)] += overlap
    entry = {
        "text": plan.overlap_text,
        "timestamp": [round(overlap_start, 3), round(overlap_end, 3)],
        "scenario": plan.scenario,
        "reply": plan.reply,
    }
    background = [{"time": round(q_end, 3), "text": plan.reply}]
    if plan.response:
        entry["response"] = plan.response
        background.append({"time": round(overlap_end, 3), "text": plan.response})
    return audio, entry, background


def write_scenario_sample(folder: Path, plan: ScenarioPlan, tts, rng: np.random.Generator) -> None:
    """One sample folder (input.wav, overlap.json, background.json), written under a temporary name
    and renamed, so an interrupted export never leaves half a sample."""
    audio, overlap_entry, background = render_scenario(plan, tts, rng)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_wav(tmp / "input.wav", audio)
    (tmp / "background.json").write_text(json.dumps(background, indent=1) + "\n")
    (tmp / "overlap.json").write_text(json.dumps([overlap_entry], indent=1) + "\n")
    tmp.rename(folder)


def export_overlap(
    corpus_dir: str | Path,
    out_dir: str | Path,
    per_scenario: int,
    seed: int = 0,
    tts_cache: Path | None = None,
) -> int:
    """Write up to `per_scenario` samples of each scenario, from the corpus's held-out conversations, as
    out_dir/overlap_<scenario>/<conversation id>/; returns the number of samples written."""
    from microturn.data.corpus import load_conversation, load_manifest
    from microturn.data.tts import TtsCache

    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    entries = [e for e in load_manifest(corpus_dir) if e["split"] in ("valid", "test")]
    if not entries:
        raise ValueError(f"{corpus_dir}: no held-out (valid or test) conversation to build scenarios from")
    # the scenario folders sit beside the v1 task folders of the same set; only they must be new
    folders = (out_dir / f"overlap_{s}" for s in OVERLAP_SCENARIOS)
    taken = [folder for folder in folders if folder.is_dir() and any(folder.iterdir())]
    if taken:
        raise ValueError(
            f"{out_dir}: already has overlap samples ({', '.join(f.name for f in taken)}); "
            "choose a new folder (nothing was changed)"
        )
    rng = np.random.default_rng(seed)
    tts = TtsCache(tts_cache) if tts_cache else TtsCache()
    target = per_scenario * len(OVERLAP_SCENARIOS)
    written = 0
    with tqdm(total=target, desc="overlap scenarios", unit="sample") as bar:
        for entry in entries:
            if written >= target:
                break
            conversation = load_conversation(corpus_dir / entry["path"])
            for plan in plan_scenarios(conversation, rng):
                folder = out_dir / f"overlap_{plan.scenario}" / conversation.id
                folder.parent.mkdir(parents=True, exist_ok=True)
                write_scenario_sample(folder, plan, tts, rng)
                written += 1
                bar.update(1)
    if written < target:
        print(f"export-overlap: {corpus_dir} gave {written // len(OVERLAP_SCENARIOS)} usable conversations")
    return written
