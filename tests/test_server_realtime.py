"""The Realtime server end to end: a real uvicorn server on a loopback port, a real engine over a tiny
checkpoint written with the model's own checkpoint code, real clients (websockets, the `openai` SDK).

The tiny model is untrained, so tests steer it through its real parameters: the speaking gate's bias
(never / always speaks on its own) and the floor head's bias (what it perceives: listening, the user
speaking, its own backchannel). Everything else is the model's ordinary computation.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from microturn import cli
from microturn.model.checkpoint import save_checkpoint
from microturn.model.config import FLOOR_STATES, get_config
from microturn.model.interaction import InteractionModel
from microturn.model.tokenizer import TextTokenizer
from microturn.runtime.engine import Engine, EngineConfig
from microturn.runtime.vocoder import Vocoder, VocoderConfig, save_vocoder
from microturn.server.app import RunningServer, ServerConfig, create_app, serve_in_thread
from microturn.server.cli import load_engine
from microturn.server.security import Limits

torch.set_num_threads(1)

TEXT = [
    "hello there how are you doing today",
    "fine thanks and you",
    "what a nice day it is",
    "tell me about the weather please",
    "okay sure yes no maybe later",
]
# Smaller than the defaults (15 MiB events, 200 events/s) so that tests reach them quickly.
TEST_LIMITS = Limits(max_event_bytes=2 * 1024 * 1024, events_per_second=300.0, event_burst=600)


def build_checkpoint(directory: Path) -> Path:
    """A tiny interaction model with its vocoder, saved the way `microturn serve` loads them."""
    torch.manual_seed(0)
    tokenizer = TextTokenizer.train(TEXT * 20, 300)
    model = InteractionModel(get_config("tiny", vocab_size=tokenizer.vocab_size))
    save_checkpoint(directory / "model", model, tokenizer)
    save_vocoder(Vocoder(VocoderConfig(dim=32, hidden=64, blocks=1)), directory / "model" / "vocoder")
    return directory / "model"


def steer(engine: Engine, floor: str = "listening", gate: float = -20.0) -> None:
    """Set what the model perceives (floor head bias) and whether it speaks unprompted (gate bias)."""
    with torch.no_grad():
        bias = torch.zeros(len(FLOOR_STATES))
        bias[FLOOR_STATES.index(floor)] = 10.0
        engine.model.floor_head.bias.copy_(bias)
        engine.model.gate.bias.fill_(gate)


def start_server(engine: Engine, config: ServerConfig) -> RunningServer:
    return serve_in_thread(create_app(engine, config), "127.0.0.1", 0, config.limits.max_event_bytes)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("server_ckpt"))


@pytest.fixture(scope="module")
def served(checkpoint):
    # the mel voice: the tiny random model's text head rarely emits a sayable word, and the protocol tests
    # read real audio in every response (the word voice is tested in test_runtime_word_voice.py)
    engine = load_engine(checkpoint, EngineConfig(max_sessions=16, voice="mel"))
    steer(engine)
    running = start_server(engine, ServerConfig(port=0, limits=TEST_LIMITS))
    yield engine, running.port
    running.stop()


@pytest.fixture()
def engine(served) -> Engine:
    engine, _ = served
    steer(engine)
    yield engine
    steer(engine)


@pytest.fixture()
def port(served) -> int:
    return served[1]


# ---- client helpers ----


@contextmanager
def client(port: int, **kwargs):
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=microturn-test"
    with connect(url, proxy=None, max_size=None, **kwargs) as ws:
        ws.first_event = json.loads(ws.recv(timeout=5))  # type: ignore[attr-defined]
        assert ws.first_event["type"] == "session.created"
        yield ws


def send(ws: ClientConnection, event_type: str, **fields) -> None:
    ws.send(json.dumps({"type": event_type, **fields}))


def collect(ws: ClientConnection, until: Callable[[dict], bool], timeout: float = 5.0) -> list[dict]:
    """Events up to and including the first for which `until` holds."""
    events, deadline = [], time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out; received {[e['type'] for e in events]}")
        event = json.loads(ws.recv(timeout=remaining))
        events.append(event)
        if until(event):
            return events


def of_type(*names: str) -> Callable[[dict], bool]:
    return lambda event: event["type"] in names


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def live_sessions(engine: Engine) -> list:
    return [s for s in engine.sessions if not s.closed]


def pcm16_b64(samples: np.ndarray) -> str:
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


# ---- the session and its configuration ----


def test_session_created_then_updated_in_both_formats(port):
    with client(port) as ws:
        created = ws.first_event
        assert created["session"]["model"] == "microturn-test"
        assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        send(
            ws,
            "session.update",
            event_id="u1",
            session={
                "type": "realtime",
                "instructions": "be kind and brief",
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                    "output": {"format": {"type": "audio/pcma"}, "voice": "marin"},
                },
            },
        )
        session = collect(ws, of_type("session.updated"))[-1]["session"]
        assert session["instructions"] == "be kind and brief"
        assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert session["audio"]["output"] == {
            "format": {"type": "audio/pcma"},
            "voice": "marin",
            "speed": 1.0,
        }
        send(
            ws,
            "session.update",
            event_id="u2",
            session={"audio": {"output": {"format": {"type": "audio/opus"}}}},
        )
        error = collect(ws, of_type("error"))[-1]["error"]
        assert (error["code"], error["event_id"]) == ("invalid_audio_format", "u2")


def test_response_create_reports_an_utterance_in_order(port, engine):
    with client(port) as ws:
        send(ws, "response.create")
        events = collect(ws, of_type("response.done"))
        names = types(events)
        expected = [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            "response.output_audio.delta",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
        positions = [names.index(name) for name in expected]
        assert positions == sorted(positions), names
        deltas = [base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"]
        assert all(len(d) == 4800 * 2 for d in deltas)  # 200 ms of 24 kHz PCM16 per micro-turn
        assert np.abs(np.frombuffer(deltas[0], "<i2")).max() > 0  # the vocoder's real output, not silence
        done = events[-1]["response"]
        assert done["status"] == "completed"
        item = done["output"][0]
        assert item["role"] == "assistant" and item["content"][0]["type"] == "output_audio"
        transcript = "".join(
            e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"
        )
        assert item["content"][0]["transcript"] == transcript.strip()
        floors = [e["floor"] for e in events if e["type"] == "microturn.floor"]
        assert floors[0] in ("speaking", "backchannel")

        send(ws, "conversation.item.retrieve", item_id=item["id"])
        retrieved = collect(ws, of_type("conversation.item.retrieved"))[-1]["item"]
        assert retrieved["id"] == item["id"] and retrieved["status"] == "completed"
        send(ws, "conversation.item.delete", item_id=item["id"])
        assert collect(ws, of_type("conversation.item.deleted"))[-1]["item_id"] == item["id"]
        send(ws, "conversation.item.retrieve", event_id="r2", item_id=item["id"])
        error = collect(ws, of_type("error"))[-1]["error"]
        assert (error["code"], error["event_id"]) == ("item_not_found", "r2")


def test_g711_output_format(port, engine):
    with client(port) as ws:
        send(ws, "session.update", session={"output_audio_format": "g711_ulaw"})
        collect(ws, of_type("session.updated"))
        send(ws, "response.create")
        events = collect(ws, of_type("response.done"))
        deltas = [base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"]
        assert deltas and all(len(d) == 1600 for d in deltas)  # 200 ms at 8 kHz, one byte a sample


def test_text_only_output(port, engine):
    with client(port) as ws:
        send(ws, "session.update", session={"type": "realtime", "output_modalities": ["text"]})
        collect(ws, of_type("session.updated"))
        send(ws, "response.create")
        events = collect(ws, of_type("response.done"))
        names = types(events)
        assert "response.output_text.done" in names and "response.output_audio.delta" not in names
        assert events[-1]["response"]["output"][0]["content"][0]["type"] == "output_text"


def test_the_model_speaks_on_its_own_and_response_cancel_stops_it(port, engine):
    steer(engine, gate=20.0)  # the model wants to speak: no response.create needed
    with client(port) as ws:
        events = collect(ws, of_type("response.output_audio.delta"))
        assert "response.created" in types(events)
        send(ws, "response.cancel")
        events = collect(ws, of_type("response.done"))
        response = events[-1]["response"]
        assert response["status"] == "cancelled"
        assert response["status_details"]["reason"] == "client_cancelled"
        # It stays silent while cancelled, although it still wants to speak.
        later = []
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            try:
                later.append(json.loads(ws.recv(timeout=0.1)))
            except TimeoutError:
                pass
        assert "response.output_audio.delta" not in types(later)

        # The client truncates the finished item to what it played.
        item_id = response["output"][0]["id"]
        send(ws, "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=100)
        truncated = collect(ws, of_type("conversation.item.truncated"))[-1]
        assert (truncated["item_id"], truncated["audio_end_ms"]) == (item_id, 100)
        send(ws, "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=99_999)
        assert collect(ws, of_type("conversation.item.truncated"))[-1]["audio_end_ms"] == 100  # never grows
        send(
            ws, "conversation.item.truncate", event_id="t3", item_id=item_id, content_index=1, audio_end_ms=0
        )
        assert collect(ws, of_type("error"))[-1]["error"]["param"] == "content_index"


def test_client_truncate_of_the_utterance_in_progress_stops_it(port, engine):
    steer(engine, gate=20.0)
    with client(port) as ws:
        delta = collect(ws, of_type("response.output_audio.delta"))[-1]
        send(ws, "conversation.item.truncate", item_id=delta["item_id"], content_index=0, audio_end_ms=50)
        events = collect(ws, of_type("response.done"))
        truncated = [e for e in events if e["type"] == "conversation.item.truncated"]
        assert truncated and truncated[0]["audio_end_ms"] <= 50
        assert events[-1]["response"]["status"] == "cancelled"


def test_the_model_yielding_truncates_to_what_the_user_heard(port, engine):
    steer(engine, floor="user")  # the model perceives the user speaking throughout
    with client(port) as ws:
        started = collect(ws, of_type("input_audio_buffer.speech_started"))[-1]
        assert started["audio_start_ms"] >= 0
        sent_at = time.monotonic()
        send(ws, "response.create")
        events = collect(ws, of_type("response.done"))
        elapsed_ms = (time.monotonic() - sent_at) * 1000
        names = types(events)
        assert "conversation.item.truncated" in names, names
        truncated = events[names.index("conversation.item.truncated")]
        audio_ms = 200 * names.count("response.output_audio.delta")
        # What was heard: no more than was sent, nor than real time allowed to play.
        assert 0 <= truncated["audio_end_ms"] <= min(audio_ms, elapsed_ms)
        assert any(e["type"] == "microturn.floor" and e["floor"] == "yielding" for e in events)
        done = events[-1]["response"]
        assert (done["status"], done["status_details"]["reason"]) == ("cancelled", "turn_detected")
        assert done["output"][0]["status"] == "incomplete"

        steer(engine, floor="listening")  # the user stops
        events = collect(ws, of_type("conversation.item.done"))
        names = types(events)
        assert names.index("input_audio_buffer.speech_stopped") < names.index("input_audio_buffer.committed")
        assert events[names.index("input_audio_buffer.speech_stopped")]["item_id"] == started["item_id"]


def test_backchannels_are_responses_plus_an_extension_event(port, engine):
    steer(engine, floor="assistant_backchannel")
    with client(port) as ws:
        send(ws, "response.create")
        events = collect(ws, of_type("microturn.backchannel"))
        names = types(events)
        assert any(e["type"] == "microturn.floor" and e["floor"] == "backchannel" for e in events)
        assert names.index("response.done") < names.index("microturn.backchannel")
        assert events[-1]["item_id"] == events[names.index("response.done")]["response"]["output"][0]["id"]


def test_audio_input_text_items_and_video_reach_the_session(port, engine):
    with client(port) as ws:
        send(ws, "session.update", session={"instructions": "speak like a pirate"})
        collect(ws, of_type("session.updated"))
        time.sleep(0.5)  # joined at a micro-turn
        (session,) = live_sessions(engine)
        t = np.arange(24000) / 24000
        send(ws, "input_audio_buffer.append", audio=pcm16_b64(0.3 * np.sin(2 * np.pi * 200 * t)))
        assert session.audio.received > 0 or session.turn > 0
        send(ws, "input_audio_buffer.commit")
        events = collect(ws, of_type("conversation.item.done"))
        committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
        assert events[-1]["item"]["id"] == committed["item_id"]
        send(ws, "input_audio_buffer.clear")
        collect(ws, of_type("input_audio_buffer.cleared"))

        words = " ".join(TEXT)
        send(
            ws,
            "conversation.item.create",
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": words}]},
        )
        added = collect(ws, of_type("conversation.item.done"))[-1]["item"]
        assert added["content"][0]["text"] == words
        assert len(session.typed) > 0  # queued: one token per micro-turn
        send(
            ws,
            "conversation.item.create",
            item={"type": "function_call_output", "call_id": "c1", "output": "the weather is sunny"},
        )
        assert collect(ws, of_type("conversation.item.done"))[-1]["item"]["type"] == "function_call_output"
        assert len(session.background) > 0
        send(
            ws,
            "conversation.item.create",
            previous_item_id="root",
            item={"type": "message", "role": "system", "content": [{"type": "input_text", "text": "hi"}]},
        )
        assert collect(ws, of_type("conversation.item.added"))[-1]["previous_item_id"] is None

        jpeg = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 30)).save(jpeg, format="JPEG")
        send(ws, "microturn.video.frame", image=base64.b64encode(jpeg.getvalue()).decode())
        send(ws, "microturn.video.frame", event_id="v2", image=base64.b64encode(b"not a jpeg").decode())
        events = collect(ws, of_type("error"))
        assert [e["error"]["event_id"] for e in events if e["type"] == "error"] == ["v2"]


def test_errors_are_answered_and_the_session_goes_on(port, engine):
    with client(port) as ws:
        bad = [
            "{not json",
            json.dumps({"type": "no.such.event", "event_id": "e2"}),
            json.dumps({"type": "input_audio_buffer.append", "event_id": "e3", "audio": "%%%"}),
            json.dumps({"type": "input_audio_buffer.append", "event_id": "e4", "audio": "AAAA"}),
            json.dumps(
                {"type": "session.update", "event_id": "e5", "session": {"input_audio_format": "flac"}}
            ),
            json.dumps({"type": "conversation.item.create", "event_id": "e6", "item": {"type": "banana"}}),
        ]
        for message in bad:
            ws.send(message)
        codes = []
        for _ in bad:
            codes.append(collect(ws, of_type("error"))[-1]["error"]["code"])
        assert codes == [
            "invalid_json",
            "unknown_event",
            "invalid_audio",
            "invalid_audio",
            "invalid_audio_format",
            "invalid_value",
        ]
        send(ws, "input_audio_buffer.clear")
        collect(ws, of_type("input_audio_buffer.cleared"))


def test_event_size_and_rate_limits(port, engine):
    with client(port) as ws:
        huge = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * TEST_LIMITS.max_event_bytes})
        ws.send(huge)
        assert collect(ws, of_type("error"))[-1]["error"]["code"] == "event_too_large"
        for _ in range(TEST_LIMITS.event_burst + 200):
            send(ws, "input_audio_buffer.clear")
        events = collect(ws, lambda e: e["type"] == "error", timeout=10)
        assert events[-1]["error"]["code"] == "rate_limit_exceeded"
        assert types(events).count("input_audio_buffer.cleared") < TEST_LIMITS.event_burst + 200


def test_beta_dialect_names(port, engine):
    with client(port, additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        assert ws.first_event["session"]["input_audio_format"] == "pcm16"
        send(ws, "response.create")
        names = types(collect(ws, of_type("response.done")))
        assert "response.audio.delta" in names and "response.output_audio.delta" not in names
        assert "conversation.item.created" in names and "conversation.item.added" not in names


def test_a_vanished_client_frees_its_session_within_a_micro_turn(port, engine):
    with connect(f"ws://127.0.0.1:{port}/v1/realtime", proxy=None) as ws:
        ws.recv(timeout=5)
        time.sleep(0.5)
        assert len(live_sessions(engine)) == 1
        (session,) = live_sessions(engine)
        ws.socket.close()  # gone without a close frame
        vanished = time.monotonic()
    while session in engine.sessions:
        assert time.monotonic() - vanished < 0.2 + 0.3, "session still stepped after a micro-turn"
        time.sleep(0.01)
    assert session.closed


# ---- the official SDK, unchanged ----


def test_openai_sdk_holds_a_short_exchange(port, engine):
    from openai import AsyncOpenAI

    async def exchange() -> list:
        sdk = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused-on-loopback")
        async with sdk.realtime.connect(model="microturn") as conn:
            created = await conn.recv()
            assert created.type == "session.created"
            await conn.session.update(
                session={"type": "realtime", "instructions": "be brief", "output_modalities": ["audio"]}
            )
            t = np.arange(4800) / 24000
            await conn.input_audio_buffer.append(audio=pcm16_b64(0.2 * np.sin(2 * np.pi * 300 * t)))
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hello there"}],
                }
            )
            await conn.response.create()
            events = []
            async for event in conn:
                events.append(event)
                if event.type == "response.done":
                    return events
        return events

    events = asyncio.run(asyncio.wait_for(exchange(), timeout=20))
    names = [e.type for e in events]
    assert "session.updated" in names and "conversation.item.added" in names
    audio = [e for e in events if e.type == "response.output_audio.delta"]
    assert audio and len(base64.b64decode(audio[0].delta)) == 9600
    assert events[-1].response.status == "completed"


# ---- hostile input ----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
event_types = st.sampled_from(
    [
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "conversation.item.create",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "conversation.item.delete",
        "response.create",
        "response.cancel",
        "output_audio_buffer.clear",
        "microturn.video.frame",
        "no.such.type",
    ]
)
field_names = st.sampled_from(
    [
        "session",
        "audio",
        "item",
        "item_id",
        "content_index",
        "audio_end_ms",
        "response",
        "image",
        "previous_item_id",
        "event_id",
        "response_id",
    ]
)
content_parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "input_audio", "output_text", "input_image", "text", "bogus"])},
    optional={"text": json_values, "audio": st.text(max_size=20) | json_values, "transcript": json_values},
)
items = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "function_call_output", "function_call", "bogus"]) | json_values},
    optional={
        "role": st.sampled_from(["user", "system", "assistant", "tool"]),
        "id": st.text(max_size=8),
        "content": st.lists(content_parts, max_size=3) | json_values,
        "call_id": json_values,
        "output": json_values,
    },
)
sessions = st.fixed_dictionaries(
    {},
    optional={
        "instructions": json_values,
        "voice": json_values,
        "speed": json_values,
        "modalities": json_values,
        "input_audio_format": st.sampled_from(["pcm16", "g711_ulaw", "g711_alaw", "opus"]) | json_values,
        "audio": st.fixed_dictionaries({}, optional={"input": json_values, "output": json_values}),
        "turn_detection": json_values,
        "tools": json_values,
        "max_output_tokens": json_values,
        "microturn": json_values,
    },
)
hostile = st.one_of(
    st.builds(
        lambda t, f: json.dumps({"type": t, **f}), event_types, st.dictionaries(field_names, json_values)
    ),
    st.builds(
        lambda i, p: json.dumps({"type": "conversation.item.create", "item": i, **p}),
        items,
        st.dictionaries(st.just("previous_item_id"), st.text(max_size=8) | st.just("root")),
    ),
    st.builds(lambda v: json.dumps({"type": "session.update", "session": v}), sessions),
    st.builds(json.dumps, json_values),
    st.text(max_size=200),
    st.binary(max_size=200),
)


def test_fuzzed_messages_neither_crash_nor_leak(port, engine):
    with client(port) as ws:

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(message=hostile)
        def survives(message):
            ws.send(message)
            send(ws, "input_audio_buffer.clear", event_id="alive")
            events = collect(ws, of_type("input_audio_buffer.cleared"))  # still answering, in order
            assert not any(e["type"] == "error" and e["error"]["code"] == "server_error" for e in events)

        survives()
        time.sleep(0.5)
        assert len(live_sessions(engine)) == 1
    deadline = time.monotonic() + 2
    while live_sessions(engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_sessions(engine) == []


# ---- access control, on a server configured as if bound off loopback ----


@pytest.fixture(scope="module")
def exposed(checkpoint):
    """Configured for 0.0.0.0 with a key (so the key is enforced), but listening on loopback only."""
    engine = load_engine(checkpoint, EngineConfig(max_sessions=2))
    steer(engine)
    config = ServerConfig(host="0.0.0.0", port=0, api_key="s3cret", limits=Limits(max_session_s=1.5))
    running = start_server(engine, config)
    yield engine, running.port
    running.stop()


def test_api_key_enforced_off_loopback(exposed):
    _, port = exposed
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, proxy=None, additional_headers=headers)
        assert refused.value.response.status_code == 403
    with connect(url, proxy=None, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
    with connect(url, proxy=None, subprotocols=["realtime", "openai-insecure-api-key.s3cret"]) as ws:
        assert ws.subprotocol == "realtime"  # browsers need one of theirs echoed
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"


def test_a_full_engine_says_so(exposed):
    _, port = exposed
    auth = {"Authorization": "Bearer s3cret"}
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    with connect(url, proxy=None, additional_headers=auth), connect(url, proxy=None, additional_headers=auth):
        with connect(url, proxy=None, additional_headers=auth) as third:
            assert json.loads(third.recv(timeout=5))["error"]["code"] == "server_busy"


def test_sessions_end_at_the_length_limit(exposed):
    engine, port = exposed
    with connect(
        f"ws://127.0.0.1:{port}/v1/realtime",
        proxy=None,
        additional_headers={"Authorization": "Bearer s3cret"},
    ) as ws:
        events = []
        with pytest.raises(Exception):  # noqa: B017 - closed by the server: ConnectionClosed of some kind
            while True:
                events.append(json.loads(ws.recv(timeout=5)))
        assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "session_expired"
    time.sleep(0.5)
    assert live_sessions(engine) == []


def test_foreign_origins_and_rebound_hosts_are_refused(port):
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    with pytest.raises(InvalidStatus):
        connect(url, proxy=None, origin="http://evil.example")
    # A page on a rebound name reaches us with its own Host header (DNS rebinding): refused.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(
            b"GET /v1/realtime HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert raw.recv(100).startswith(b"HTTP/1.1 403")
    with connect(url, proxy=None, origin=f"http://127.0.0.1:{port}") as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"


def test_serve_refuses_a_public_host_without_a_key(monkeypatch, capsys, checkpoint):
    monkeypatch.delenv("MICROTURN_API_KEY", raising=False)
    code = cli.main(["serve", "--host", "0.0.0.0", "--checkpoint", str(checkpoint)])
    assert code == 2
    assert "without an API key" in capsys.readouterr().err


def test_serve_prints_the_url_once_listening_and_serves_the_page(checkpoint):
    command = [sys.executable, "-m", "microturn.cli", "serve", "--port", "0", "--checkpoint", str(checkpoint)]
    # Ctrl-C's default action in the child, even when the suite runs as a background job (whose children
    # inherit SIGINT ignored, and Python then never raises KeyboardInterrupt)
    restore_sigint = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint
    )
    try:
        line = proc.stdout.readline()  # blocks until the server listens (or the command fails)
        match = re.fullmatch(r"microturn: open (http://127\.0\.0\.1:\d+/) in a browser\n", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        page = httpx.get(match.group(1), timeout=10)
        assert page.status_code == 200 and 'id="timeline"' in page.text
        for name in ("app.js", "worklet.js", "style.css"):
            assert httpx.get(match.group(1) + "static/" + name, timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
