"""The background model's tools (calculator, notes search, timers, the registry) and its conversation
record (the assistant's words as said and truncated, the user's words from Whisper on the heard audio)."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from microturn.audio import SAMPLE_RATE, read_wav, resample
from microturn.background.conversation import ConversationRecord
from microturn.background.tools import Timers, ToolError, default_registry, evaluate, search_notes_folder
from microturn.model.checkpoint import save_checkpoint
from microturn.model.config import FLOOR_STATES, get_config
from microturn.model.interaction import InteractionModel
from microturn.model.tokenizer import TextTokenizer
from microturn.runtime.checkpoint import load_runtime
from microturn.runtime.engine import Engine, EngineConfig
from microturn.runtime.session import MicroTurnOutput
from microturn.runtime.vocoder import Vocoder, VocoderConfig, save_vocoder

torch.set_num_threads(1)


# ---- calculator ----


@pytest.mark.parametrize(
    "expression, value",
    [
        ("6 * 7", 42),
        ("2 ^ 10", 1024),
        ("-(3 + 4) / 2", -3.5),
        ("sqrt(16) + 10 % 3", 5.0),
        ("2 * pi", 2 * math.pi),
    ],
)
def test_the_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    assert evaluate(expression) == pytest.approx(value)


@pytest.mark.parametrize(
    "expression, message",
    [
        ("__import__('os').system('true')", "unsupported"),
        ("open('x')", "unsupported"),
        ("(1).__class__", "unsupported"),
        ("10 ** 10 ** 10", "too large"),
        ("1 / 0", "division by zero"),
        ("2 +", "not an arithmetic expression"),
        ("True + 1", "unsupported"),
    ],
)
def test_the_calculator_refuses_anything_else(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        evaluate(expression)


def test_the_registry_returns_errors_as_text_for_the_model() -> None:
    registry = default_registry()
    assert asyncio.run(registry.call("calculate", '{"expression": "1.5 * 4"}')) == "1.5 * 4 = 6"
    assert asyncio.run(registry.call("calculate", '{"expression": "1/0"}')) == "error: division by zero"
    assert asyncio.run(registry.call("nope", "{}")).startswith("error: no tool named")
    assert asyncio.run(registry.call("calculate", "{not json")).startswith("error:")
    assert asyncio.run(registry.call("calculate", '{"wrong": 1}')).startswith("error:")
    assert asyncio.run(registry.call("clock", "")).startswith("It is ")


# ---- notes ----


def test_notes_search_finds_the_relevant_paragraph(tmp_path: Path) -> None:
    (tmp_path / "trips").mkdir()
    (tmp_path / "trips" / "lisbon.md").write_text(
        "# Lisbon\n\nThe hotel in Lisbon is near the river; check-in after 3 pm.\n\nFlight TP 123 on Friday."
    )
    (tmp_path / "shopping.txt").write_text(
        "Buy milk, bread and coffee.\n\nThe hotel voucher is in the drawer."
    )
    (tmp_path / "ignored.bin").write_bytes(b"hotel lisbon river")
    hits = search_notes_folder(tmp_path, "When can I check in at the Lisbon hotel?")
    assert hits[0] == ("trips/lisbon.md", "The hotel in Lisbon is near the river; check-in after 3 pm.")
    assert all(name != "ignored.bin" for name, _ in hits)
    registry = default_registry(notes_dir=tmp_path)
    assert "coffee" in asyncio.run(registry.call("search_notes", '{"query": "coffee"}'))
    assert asyncio.run(registry.call("search_notes", '{"query": "zebra"}')) == "nothing found in the notes"
    with pytest.raises(ToolError, match="does not exist"):
        search_notes_folder(tmp_path / "missing", "hotel")


# ---- timers ----


def test_a_timer_reports_its_end() -> None:
    told: list[str] = []
    timers = Timers(on_expiry=told.append)
    registry = default_registry(timers=timers)

    async def run() -> str:
        await registry.call("set_timer", '{"seconds": 0.1, "label": "tea"}')
        listed = await registry.call("list_timers", "{}")
        await asyncio.sleep(0.3)
        return listed

    assert asyncio.run(run()).startswith("tea: ")
    assert told == ["Your tea is done."]
    assert asyncio.run(registry.call("set_timer", '{"seconds": -1}')).startswith("error: seconds must be")


# ---- the conversation record ----


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    torch.manual_seed(0)
    texts = ["hello there how are you doing today", "fine thanks and you", "what a nice day it is"]
    tokenizer = TextTokenizer.train(texts * 30, 300)
    path = tmp_path_factory.mktemp("record") / "model"
    save_checkpoint(path, InteractionModel(get_config("tiny", vocab_size=tokenizer.vocab_size)), tokenizer)
    save_vocoder(Vocoder(VocoderConfig(dim=32, hidden=64, blocks=1)), path / "vocoder")
    models = load_runtime(path)
    return Engine(EngineConfig(), models.model, models.tokenizer, models.vocoder)


def steer(engine: Engine, floor: str, gate: float) -> None:
    """What the untrained model perceives (floor head bias) and whether it speaks (gate bias)."""
    with torch.no_grad():
        bias = torch.full((len(FLOOR_STATES),), -10.0)
        bias[FLOOR_STATES.index(floor)] = 10.0
        engine.model.floor_head.bias.copy_(bias)
        engine.model.gate.bias.fill_(gate)


def test_the_record_holds_what_the_assistant_said_cut_where_it_was_interrupted(engine: Engine) -> None:
    """The untrained model's words are noise, so the session's words come from token ids handed to its
    per-turn bookkeeping (`Session.finish_turn`, what the engine calls after each step)."""
    session = engine.open_session(seed=3)
    record = ConversationRecord(transcribe=lambda samples: {"text": "", "chunks": []})
    tokenizer, silent = engine.tokenizer, np.zeros(3200, np.float32)
    speaking = {"assistant": 1.0}
    words = "hello there how are you doing today fine thanks".split()

    def turn(word: str | None, floor_probs: dict) -> MicroTurnOutput:
        ids = tokenizer.encode(" " + word) if word else []
        tokens = ids + [0] * (3 - len(ids))  # pad slots: the word is complete in this window
        output = session.finish_turn(
            silent, silent, tokens, word is not None, word is not None, floor_probs, False
        )
        record.observe_output(output)
        return output

    turn(None, {"user": 1.0})  # the user spoke first (no transcription here)
    for word in words[:6]:
        turn(word, speaking)
    yielded = turn(None, {"user": 1.0})  # the user talks over it: it stops
    assert yielded.floor == "yielding"
    for _ in range(10):
        turn(None, {"listening": 1.0})
    for word in words[6:]:  # a later utterance, finished normally
        turn(word, speaking)
    turn(None, {"listening": 1.0})
    said = record.utterances(list(session.transcript))
    assert [u.text for u in said] == [" ".join(words[:6]), " ".join(words[6:])]
    assert [u.interrupted for u in said] == [True, False]
    # the client reports the user heard the first utterance only up to 0.9 s (into its 3rd word)
    removed = session.truncate(0.9)
    assert [w["text"] for w in removed] == words[3:]
    (kept,) = record.utterances(list(session.transcript))
    assert kept.text == "hello there how" and kept.interrupted and kept.start == pytest.approx(0.4)
    messages = record.messages("SYSTEM", list(session.transcript))
    assert messages == [
        {"role": "system", "content": "SYSTEM"},
        {"role": "assistant", "content": "[0.4-1.0 s] hello there how (interrupted by the user)"},
    ]
    engine.close_session(session)
    record.close()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_the_users_words_are_transcribed_from_the_audio_the_model_heard(
    engine: Engine, tmp_path: Path
) -> None:
    wav = tmp_path / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "What is the capital of France?"], check=True)
    speech, rate = read_wav(wav, expect_rate=None)
    speech = resample(speech, rate, SAMPLE_RATE)
    audio = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)])
    session = engine.open_session(seed=1)
    record = ConversationRecord()  # the real Whisper tiny.en
    session.input_tap = record.observe_input
    speech_turns = range(5, 5 + int(np.ceil(len(speech) / 3200)))
    segments = []
    steer(engine, "listening", -20.0)
    for turn in range(len(audio) // 3200):
        # the model's perception of the user, set through its floor head: speaking while the words play
        steer(engine, "user" if turn in speech_turns else "listening", -20.0)
        session.push_audio(audio[turn * 3200 : (turn + 1) * 3200], SAMPLE_RATE)
        output = engine.step_once()[session]
        assert isinstance(output, MicroTurnOutput)
        segment = record.observe_output(output)
        if segment is not None:
            segments.append(segment)
    assert len(segments) == 1 and segments[0].start < 1.0 < segments[0].end
    record.wait(timeout=60)
    (user,) = record.utterances([])
    assert user.speaker == "user" and {"capital", "france"} <= set(user.text.lower().replace("?", "").split())
    assert segments[0].start <= user.start < user.end <= segments[0].end + 0.01
    engine.close_session(session)
    record.close()


def test_eval_scores_delivery_delay_and_talk_over() -> None:
    from microturn.background.cli import score_episode, summarise, talk_over_frames

    t0 = 100.0
    events = [
        {"task_id": "bg1", "status": "started", "time": t0 + 4.0},
        {"task_id": "bg1", "status": "progress", "text": "Paris is the capital of France.", "time": t0 + 5.0},
        {"task_id": "bg1", "status": "done", "time": t0 + 5.5},
        {"task_id": "bg2", "status": "started", "time": t0 + 9.0},
        {"task_id": "bg2", "status": "failed", "time": t0 + 9.5},
    ]
    said = ["well", "paris", "is", "the", "capital", "of", "france"]
    words = [{"text": w, "start": 5.6 + 0.3 * i, "end": 5.8 + 0.3 * i} for i, w in enumerate(said)]
    words.insert(0, {"text": "before", "start": 1.0, "end": 1.2})  # said before the answer arrived
    # the output audio: a tone where each word sounds, silence between
    output = np.zeros(16_000 * 9, np.float32)
    for w in words:
        span = slice(int(w["start"] * 16_000), int(w["end"] * 16_000))
        output[span] = 0.1 * np.sin(np.arange(span.stop - span.start) * 0.2)
    over = talk_over_frames(output, [(7.0, 7.5)])  # the user speaks from 7.0 to 7.5 s
    arrivals = {"bg1": t0 + 5.0}
    result = score_episode("ep", events, arrivals, words, over, t0)
    first, second = result["answers"]
    assert first["overlap"] == 1.0 and first["first_word_delay_s"] == pytest.approx(0.6)
    assert first["turn_end_to_answer_s"] == 1.0
    assert first["talk_over_user_s"] == pytest.approx(0.3)  # "of" 7.1-7.3 and "france" 7.4-7.5 s
    assert second == {"task": "bg2", "status": "failed", "text": ""}
    # another answer arriving at 7.2 s: talk-over from then on is its own, not the first's too
    later = [
        {"task_id": "bg3", "status": "started", "time": t0 + 6.0},
        {"task_id": "bg3", "status": "progress", "text": "It is sunny.", "time": t0 + 7.2},
    ]
    both = {**arrivals, "bg3": t0 + 7.2}
    first, _, third = score_episode("ep", events + later, both, words, over, t0)["answers"]
    assert first["talk_over_user_s"] == pytest.approx(0.1)  # "of" until 7.2 s
    assert third["talk_over_user_s"] == pytest.approx(0.2)  # the rest of "of", "france"
    none = np.zeros_like(over)
    summary = summarise([result], 0.5)
    assert (summary["answers"], summary["delivered"], summary["tasks_failed"]) == (1, 1.0, 1)
    # the text head meant the answer but the voice lost it: delivered in text, not in speech
    meant = score_episode("ep", events, arrivals, words, none, t0)["answers"]
    heard = score_episode("ep", events, arrivals, words[:1], none, t0)
    summary = summarise([{**heard, "answers_text": meant}], 0.5)
    assert (summary["delivered"], summary["delivered_text"]) == (0.0, 1.0)
    # an opening streamed word by word arrives before its sentence's event: delay and delivery count from it
    (opened, _) = score_episode("ep", events, {"bg1": t0 + 4.5}, words, none, t0)["answers"]
    assert opened["turn_end_to_answer_s"] == 0.5 and opened["first_word_delay_s"] == pytest.approx(1.1)
    (late, _) = score_episode("ep", events, {"bg1": t0 + 6.0}, words, none, t0)["answers"]
    assert late["overlap"] < 1.0  # "paris" (5.9 s) said before a later arrival is not the answer's
