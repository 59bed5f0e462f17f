"""The server's pure parts: audio codecs, event parsing and session configuration, access policy."""

from __future__ import annotations

import base64
import json
import warnings

import numpy as np
import pytest

from microturn.server import codecs
from microturn.server.protocol import (
    CLIENT_EVENT_FIELDS,
    ProtocolError,
    SessionConfig,
    apply_session_update,
    parse_client_event,
)
from microturn.server.security import AccessPolicy, RateLimiter, is_loopback, resolve_api_key

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # the reference G.711 implementation, gone from Python 3.13
    except ImportError:
        audioop = None


# ---- codecs ----


@pytest.mark.skipif(audioop is None, reason="audioop (the reference) is not in this Python")
def test_g711_matches_the_reference_on_every_sample_and_code():
    every_sample = np.arange(-32768, 32768, dtype=np.int16)
    assert np.array_equal(
        codecs.ulaw_encode(every_sample), np.frombuffer(audioop.lin2ulaw(every_sample.tobytes(), 2), np.uint8)
    )
    assert np.array_equal(
        codecs.alaw_encode(every_sample), np.frombuffer(audioop.lin2alaw(every_sample.tobytes(), 2), np.uint8)
    )
    every_code = np.arange(256, dtype=np.uint8).tobytes()
    assert np.array_equal(codecs.ULAW_TO_PCM16, np.frombuffer(audioop.ulaw2lin(every_code, 2), np.int16))
    assert np.array_equal(codecs.ALAW_TO_PCM16, np.frombuffer(audioop.alaw2lin(every_code, 2), np.int16))


def test_g711_round_trip_keeps_every_code_and_bounds_the_error():
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(codecs.alaw_encode(codecs.ALAW_TO_PCM16[codes]), codes)
    # mu-law has two zeros (0x7F and 0xFF); every other code survives decode -> encode
    ulaw_back = codecs.ulaw_encode(codecs.ULAW_TO_PCM16[codes])
    assert np.array_equal(ulaw_back[codes != 0x7F], codes[codes != 0x7F])
    x = np.linspace(-1, 1, 8000, dtype=np.float32) * 0.9
    pcm = codecs.float_to_pcm16(x)
    for table, encode in (
        (codecs.ULAW_TO_PCM16, codecs.ulaw_encode),
        (codecs.ALAW_TO_PCM16, codecs.alaw_encode),
    ):
        err = np.abs(table[encode(pcm)].astype(float) - pcm) / (np.abs(pcm) + 64)
        assert err.max() < 0.1  # logarithmic companding: relative error of a few percent


@pytest.mark.parametrize("fmt", [codecs.PCM, codecs.PCMU, codecs.PCMA])
def test_encode_decode_audio_round_trip(fmt):
    t = np.arange(4800) / 24000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    wire = codecs.encode_audio(tone, fmt)
    raw = base64.b64decode(wire)
    assert len(raw) == 4800 * fmt.rate // 24000 * fmt.bytes_per_sample
    back = codecs.decode_audio(wire, fmt)
    assert len(back) == 4800 * fmt.rate // 24000
    reference = tone[:: 24000 // fmt.rate]
    inner = slice(40, -40)  # resampling edges
    assert np.corrcoef(back[inner], reference[inner])[0, 1] > 0.99
    assert codecs.duration_ms(len(raw), fmt) == pytest.approx(200.0)


def test_bad_audio_is_refused_with_a_reason():
    with pytest.raises(codecs.AudioFormatError, match="base64"):
        codecs.decode_audio("not base64!!", codecs.PCM)
    with pytest.raises(codecs.AudioFormatError, match="whole number of samples"):
        codecs.decode_audio(base64.b64encode(b"abc").decode(), codecs.PCM)
    with pytest.raises(codecs.AudioFormatError, match="string"):
        codecs.decode_audio(123, codecs.PCM)


def test_formats_parse_in_both_dialects():
    assert codecs.parse_format({"type": "audio/pcm", "rate": 24000}) is codecs.PCM
    assert codecs.parse_format("pcm16") is codecs.PCM
    assert codecs.parse_format("g711_ulaw") is codecs.PCMU
    assert codecs.parse_format({"type": "audio/pcma"}) is codecs.PCMA
    with pytest.raises(codecs.AudioFormatError, match="24000 Hz"):
        codecs.parse_format({"type": "audio/pcm", "rate": 16000})
    with pytest.raises(codecs.AudioFormatError, match="unsupported"):
        codecs.parse_format("mp3")


# ---- event parsing ----


def test_every_client_event_parses_with_its_required_fields():
    samples = {
        "session": {},
        "audio": "",
        "item": {},
        "item_id": "x",
        "content_index": 0,
        "audio_end_ms": 5,
        "image": "",
    }
    for event_type, fields in CLIENT_EVENT_FIELDS.items():
        required = {name: samples[name] for name, (_, req) in fields.items() if req}
        event = parse_client_event(json.dumps({"type": event_type, "event_id": "e1", **required}))
        assert (event.type, event.event_id) == (event_type, "e1")
        for name in required:  # dropping any required field is refused, naming it
            partial = {k: v for k, v in required.items() if k != name}
            with pytest.raises(ProtocolError) as err:
                parse_client_event(json.dumps({"type": event_type, "event_id": "e2", **partial}))
            assert err.value.param == name and err.value.event_id == "e2"


@pytest.mark.parametrize(
    "raw, code",
    [
        ("{", "invalid_json"),
        (b"\xff\xfe{", "invalid_json"),
        ("[1, 2]", "invalid_event"),
        ('{"type": 5}', "invalid_event"),
        ('{"type": "no.such.event"}', "unknown_event"),
        ('{"type": "input_audio_buffer.append", "audio": 5}', "invalid_type"),
        (
            '{"type": "conversation.item.truncate", "item_id": "a", "content_index": true, '
            '"audio_end_ms": 1}',
            "invalid_type",
        ),
        (
            '{"type": "conversation.item.truncate", "item_id": "a", "content_index": 0, "audio_end_ms": -1}',
            "invalid_value",
        ),
        ("[" * 100_000 + "]" * 100_000, "invalid_json"),
    ],
)
def test_malformed_events_raise_protocol_errors(raw, code):
    with pytest.raises(ProtocolError) as err:
        parse_client_event(raw)
    assert err.value.code == code


def test_oversized_events_are_refused_before_parsing():
    with pytest.raises(ProtocolError) as err:
        parse_client_event(
            '{"type": "input_audio_buffer.append", "audio": "' + "A" * 100 + '"}', max_bytes=64
        )
    assert err.value.code == "event_too_large"


def test_session_update_ga_and_beta_shapes():
    config = SessionConfig(id="s", model="m")
    ga = apply_session_update(
        config,
        {
            "type": "realtime",
            "instructions": "be brief",
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "semantic_vad"}},
                "output": {"format": {"type": "audio/pcma"}, "voice": "marin", "speed": 1.2},
            },
        },
    )
    assert (ga.instructions, ga.input_format, ga.output_format, ga.voice, ga.speed) == (
        "be brief",
        codecs.PCMU,
        codecs.PCMA,
        "marin",
        1.2,
    )
    assert ga.to_ga()["audio"]["input"]["turn_detection"] == {"type": "semantic_vad"}
    beta = apply_session_update(
        config,
        {
            "input_audio_format": "g711_alaw",
            "output_audio_format": "pcm16",
            "voice": "echo",
            "turn_detection": None,
            "modalities": ["text"],
        },
    )
    assert (
        beta.input_format,
        beta.output_format,
        beta.voice,
        beta.turn_detection,
        beta.output_modalities,
    ) == (codecs.PCMA, codecs.PCM, "echo", None, ("text",))
    assert beta.to_beta()["input_audio_format"] == "g711_alaw"
    for bad in (
        {"audio": {"input": {"format": {"type": "audio/opus"}}}},
        {"speed": 9},
        {"turn_detection": {"type": "magic"}},
        {"output_modalities": ["smell"]},
    ):
        with pytest.raises(ProtocolError):
            apply_session_update(config, bad)


# ---- access ----


def test_loopback_detection():
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "[::1]", "127.5.5.5"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.4", "example.org", "::"]))


def test_api_key_required_off_loopback(monkeypatch):
    monkeypatch.delenv("MICROTURN_API_KEY", raising=False)
    assert resolve_api_key("127.0.0.1", None) is None
    with pytest.raises(RuntimeError, match="without an API key"):
        resolve_api_key("0.0.0.0", None)
    assert resolve_api_key("0.0.0.0", "k") == "k"
    monkeypatch.setenv("MICROTURN_API_KEY", "from-env")
    assert resolve_api_key("0.0.0.0", None) == "from-env"


def test_access_policy_decisions():
    local = AccessPolicy("127.0.0.1", None)
    assert local.admit({"host": "127.0.0.1:8000"}, []).allowed
    assert (
        local.admit({"host": "localhost:8000", "origin": "http://localhost:8000"}, ["realtime"]).subprotocol
        == "realtime"
    )
    assert not local.admit({"host": "evil.example:8000"}, []).allowed  # DNS rebinding
    assert not local.admit({"host": "127.0.0.1:8000", "origin": "http://evil.example"}, []).allowed
    listed = AccessPolicy("127.0.0.1", None, ("https://app.example",))
    assert listed.admit({"host": "127.0.0.1:8000", "origin": "https://app.example"}, []).allowed
    keyed = AccessPolicy("0.0.0.0", "s3cret")
    assert not keyed.admit({"host": "10.0.0.2:8000"}, []).allowed
    assert not keyed.admit({"host": "10.0.0.2:8000", "authorization": "Bearer wrong"}, []).allowed
    assert keyed.admit({"host": "10.0.0.2:8000", "authorization": "Bearer s3cret"}, []).allowed
    assert keyed.admit({"host": "10.0.0.2:8000"}, ["realtime", "openai-insecure-api-key.s3cret"]).allowed


def test_rate_limiter_allows_bursts_then_the_sustained_rate():
    clock = [0.0]
    limiter = RateLimiter(rate=10, burst=5, clock=lambda: clock[0])
    assert sum(limiter.allow() for _ in range(20)) == 5
    clock[0] += 1.0
    assert sum(limiter.allow() for _ in range(20)) == 5  # refilled to the burst, not beyond
    clock[0] += 0.3
    assert sum(limiter.allow() for _ in range(20)) == 3
