"""The real background model in the offline loop (`eval fdbench --background URL|embedded`): its text enters
the session no earlier than the trigger plus the measured latency, a failing or slow backend leaves the run
complete with the failure recorded, and a newer trigger supersedes a running task as live. The backend is
the worker tests' local fake OpenAI-compatible endpoint; the model is tiny and untrained."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import numpy as np
import pytest
from test_background_worker import FakeChatEndpoint, models, text_chunk  # noqa: F401 (fixture)
from test_eval_bench import make_sample

from microturn.audio import SAMPLE_RATE
from microturn.background.backends import OpenAIBackend, OpenAIConfig
from microturn.background.conversation import Segment
from microturn.background.offline import SimulatedBackground, background_stats
from microturn.background.worker import WorkerConfig
from microturn.model.queues import arrival_turn
from microturn.runtime.engine import EngineConfig
from microturn.runtime.model_system import ModelSystem
from microturn.runtime.session import Session
from microturn.runtime.stream_loop import stream_output

USER_TURN = range(3, 12)  # micro-turns in which the (scripted) floor head hears the user: ends at turn 12
ORACLE = "the oracle text must never reach the session"


def fake_transcribe(samples: np.ndarray) -> dict:
    return {"text": "what is the answer", "chunks": [{"text": "what", "timestamp": [0.1, 0.3]}]}


class ScriptedPerception(SimulatedBackground):
    """The background model exactly as shipped, fed outputs whose `user_speaking` (the untrained floor
    head's perception) follows a script, so that the trigger fires at a known turn."""

    def observe(self, output, now_s, transcript):
        super().observe(
            dataclasses.replace(output, user_speaking=output.index in USER_TURN), now_s, transcript
        )


@pytest.fixture()
def endpoint():
    server = FakeChatEndpoint()
    yield server
    server.stop()


@pytest.fixture()
def pushes(monkeypatch):
    """(micro-turn, text) of every push into a session's background input."""
    seen: list[tuple[int, str]] = []
    original = Session.push_background

    def push(self, text, message=None):
        seen.append((self.turn, text))
        return original(self, text, message)

    monkeypatch.setattr(Session, "push_background", push)
    return seen


def run_sample(models, tmp_path, url: str, timeout_s: float = 30.0):  # noqa: F811
    from microturn.eval.runner import run_fdbench

    data = tmp_path / "data"
    audio = (np.random.default_rng(0).standard_normal(5 * SAMPLE_RATE) * 0.01).astype(np.float32)
    make_sample(
        data / "turn_taking" / "s1",
        "turn_taking.json",
        [{"text": "", "timestamp": [2.4, 2.8]}],
        audio,
        [{"time": 2.5, "text": ORACLE}],
    )
    background = ScriptedPerception(
        OpenAIBackend(OpenAIConfig(url)), WorkerConfig(timeout_s=timeout_s), transcribe=fake_transcribe
    )

    def factory():
        return ModelSystem(
            models.model, models.tokenizer, models.vocoder, EngineConfig(), background_model=background
        )

    run = run_fdbench(
        data, factory, stream_output, tmp_path / "out", background_mode=url, system_name="model"
    )
    background.close()
    return run


def test_streamed_text_arrives_no_earlier_than_trigger_plus_measured_latency(
    models,  # noqa: F811
    endpoint,
    pushes,
    tmp_path,
) -> None:
    endpoint.scripts.append(
        [
            ("chunk", text_chunk("The answer is forty two. Ask")),
            ("sleep", 0.7),
            ("chunk", text_chunk(" me more.")),
        ]
    )
    run = run_sample(models, tmp_path, endpoint.url)
    (record,) = run.records
    (task,) = record["background"]
    assert task["status"] == "done" and task["reason"] == "turn_end"
    # the trigger: the first step whose floor output no longer hears the user, seen when it finished
    assert 13 * 0.2 <= task["trigger_s"] < 13 * 0.2 + 0.2  # step 12 runs once its input is in, at 2.6 s
    first, second = task["deliveries"]
    assert (first["text"], second["text"]) == ("The answer is forty two.", "Ask me more.")
    assert second["latency_s"] - first["latency_s"] >= 0.6  # the endpoint's pause is measured, not skipped
    assert task["first_piece_s"] <= first["latency_s"] and task["pieces"] == 2
    # what reached the session, and when: each sentence at the first step that starts after its arrival
    texts = [text for _, text in pushes]
    assert texts == ["The answer is forty two. ", "Ask me more. "] and ORACLE not in " ".join(texts)
    for (turn, _), delivery in zip(pushes, task["deliveries"], strict=True):
        assert (turn + 1) * 0.2 >= task["trigger_s"] + delivery["latency_s"] - 1e-6
        assert turn == arrival_turn(delivery["at_s"], 0.2)
    # the context package: both sides with times, the user's words from the (fake) Whisper
    messages = endpoint.requests[0]["messages"]
    user = [m for m in messages if m["role"] == "user"]  # the random model may have said words after it
    assert messages[0]["role"] == "system" and user[-1]["content"].endswith("s] what is the answer")
    assert task["messages"] == messages[1:]
    samples = (tmp_path / "out" / "model" / "samples.jsonl").read_text()
    assert json.loads(samples)["background"][0]["task_id"] == "bg1"
    assert run.metrics["bg_tasks"] == 1 and run.metrics["bg_failed"] == 0
    assert run.metrics["bg_first_text_s_p50"] == first["latency_s"]
    assert run.metrics["bg_answer_s_p50"] >= second["latency_s"]


@pytest.mark.parametrize("failure", ["http_error", "timeout"])
def test_a_failing_or_slow_backend_leaves_the_run_complete(
    models,  # noqa: F811
    endpoint,
    pushes,
    tmp_path,
    failure,
) -> None:
    endpoint.scripts.append([("status", 503)] if failure == "http_error" else [("sleep", 2.0)])
    run = run_sample(models, tmp_path, endpoint.url, timeout_s=0.5)
    (record,) = run.records
    (task,) = record["background"]
    assert task["status"] == "failed"
    assert ("HTTP 503" in task["error"]) if failure == "http_error" else task["error"] == "timed out"
    if failure == "timeout":
        assert task["end_s"] >= 0.5
    # as live: the session is told to say it could not get the answer, as late as the failure came
    (apology,) = task["deliveries"]
    assert pushes == [(arrival_turn(apology["at_s"], 0.2), "Sorry, I could not get that.")]
    assert (tmp_path / "out" / "model" / "turn_taking" / "s1" / "output.wav").is_file()
    assert run.metrics["bg_failed"] == 1 and run.metrics["n_turn_taking"] == 1


class SleepyBackend:
    """Two sentences 0.3 s apart."""

    name = "sleepy"

    async def complete(self, messages, tools):
        yield "First. "
        await asyncio.sleep(0.3)
        yield "Second."


def test_a_newer_trigger_supersedes_the_running_task() -> None:
    background = SimulatedBackground(SleepyBackend(), transcribe=fake_transcribe)
    try:
        background.request("a", 1.0, [])
        background.request("b", 1.1, [])  # live, task a would still be generating at 1.1 s
        old, new = background.tasks
        assert old["status"] == "cancelled" and 1.1 <= old["cancelled_s"] < 1.2
        assert [d.get("dropped", False) for d in old["deliveries"]] == [False, True]
        assert new["status"] == "done"
        arrived = [(b.task, b.text) for b in background.take(100)]
        assert arrived == [("bg1", "First. "), ("bg2", "First. "), ("bg2", "Second. ")]
        stats = background_stats(background.tasks)
        assert (stats["bg_tasks"], stats["bg_cancelled"]) == (2, 1)
        # a turn end in which Whisper heard no words leaves the running answer alone (as live)
        background.request("c", 2.0, [])
        skipped = background.run("turn_end", Segment(2.0, 2.1), 2.1, [])
        assert skipped["status"] == "no_words" and background.tasks[-2]["status"] == "done"
        assert [b.text for b in background.take(100)] == ["First. ", "Second. "]
    finally:
        background.close()


def test_the_harness_answers_with_the_background_models_streamed_answer(endpoint, tmp_path) -> None:
    """The cascade with a real background: its own end of turn starts the task, the background's Whisper
    is its ASR, and it speaks the answer's sentences as they stream in."""
    from test_eval_harness import espeak, speech_end_s

    from microturn.eval.harness import CascadeHarness
    from microturn.eval.runner import run_fdbench

    endpoint.scripts.append(
        [
            ("chunk", text_chunk("Moby Dick is a classic.")),
            ("sleep", 0.4),
            ("chunk", text_chunk(" It is about a whale.")),
        ]
    )
    question = espeak("Can you recommend a good book about the sea?")
    audio = np.zeros(int(20.0 * SAMPLE_RATE), np.float32)
    audio[int(0.5 * SAMPLE_RATE) :][: len(question)] += question
    user_end = speech_end_s(question, 0.5)
    make_sample(
        tmp_path / "data" / "s1",
        "turn_taking.json",
        [{"text": "", "timestamp": [round(user_end, 3), round(user_end + 0.4, 3)]}],
        audio,
        [{"time": round(user_end, 3), "text": ORACLE}],
    )
    # its TTS takes whole sentences (as `eval fdbench` gives it)
    background = SimulatedBackground(OpenAIBackend(OpenAIConfig(endpoint.url)), WorkerConfig(opening_words=0))
    harness = CascadeHarness(background_model=background)
    try:
        run = run_fdbench(
            tmp_path / "data", lambda: harness, stream_output, tmp_path / "out", endpoint.url, "harness"
        )
    finally:
        background.close()
    (task,) = run.records[0]["background"]
    assert task["status"] == "done"
    assert user_end + 0.5 <= task["trigger_s"] <= user_end + 1.0  # its 500 ms end-of-turn rule
    assert "recommend" in task["messages"][-1]["content"].lower()  # Whisper on the turn it heard
    assert harness.transcripts == []  # no second ASR inside step()
    # what it said (piper's text at the times it played; Whisper on the output would make this test depend
    # on how loaded the machine is, as the harness's compute delays its audio)
    said = " ".join(w["text"] for w in harness.said).lower()
    assert "moby" in said and "whale" in said and "oracle" not in said
    assert harness.said[0]["start"] >= task["trigger_s"] + task["deliveries"][0]["latency_s"]
    assert (tmp_path / "out" / "harness" / "s1" / "output.wav").is_file()


def test_whispers_words_reach_the_heard_memory_as_late_as_their_transcription(
    models,  # noqa: F811
    monkeypatch,
) -> None:
    """`eval proactive --heard whisper` (and every offline background): the segment the floor head perceived
    is transcribed when it ends, and its words enter the session at the first step after the trigger plus
    the measured transcription time, not before."""
    from microturn.background.offline import SimulatedHearing
    from microturn.runtime.stream_loop import run_stream

    def slow_transcribe(samples: np.ndarray) -> dict:
        time.sleep(0.5)
        return fake_transcribe(samples)

    class ScriptedHearing(SimulatedHearing):
        def observe(self, output, now_s, transcript):
            seen.append(now_s)
            super().observe(
                dataclasses.replace(output, user_speaking=output.index in USER_TURN), now_s, transcript
            )

    seen: list[float] = []
    heard: list[tuple[int, str]] = []
    original = Session.push_heard

    def push_heard(self, text):
        heard.append((self.turn, text))
        return original(self, text)

    monkeypatch.setattr(Session, "push_heard", push_heard)
    hearing = ScriptedHearing(transcribe=slow_transcribe)
    system = ModelSystem(
        models.model, models.tokenizer, models.vocoder, EngineConfig(), background_model=hearing
    )
    try:
        run_stream(system, np.zeros(5 * SAMPLE_RATE, np.float32))
    finally:
        hearing.close()
    ((turn, text),) = heard
    assert text == "what is the answer"
    trigger_s = seen[12]  # the step of micro-turn 12 is the first whose output no longer hears the user
    assert turn == arrival_turn(trigger_s + 0.5, 0.2) or turn == arrival_turn(trigger_s + 0.5, 0.2) + 1
    assert (turn + 1) * 0.2 >= trigger_s + 0.5
    assert system.background_log == []  # ears only: no task was run
