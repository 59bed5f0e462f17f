"""The Realtime protocol's wire format: client event parsing and validation, session configuration, and the
names of server events in the GA and beta dialects.

Nothing here touches a session or a socket: `realtime.py` owns the state machine, this module only says
whether a message is well formed and what it asks for, raising `ProtocolError` (sent back as an `error`
event, after which the session goes on).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any

from microturn.server.codecs import PCM, AudioFormat, AudioFormatError, parse_format

MAX_EVENT_BYTES = 15 * 1024 * 1024  # the original's limit per client event
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")


class ProtocolError(ValueError):
    """A client event that cannot be honoured; becomes an `error` server event."""

    def __init__(self, code: str, message: str, param: str | None = None, event_id: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param, self.event_id = code, message, param, event_id


@dataclass(frozen=True)
class ClientEvent:
    type: str
    event_id: str | None
    data: dict[str, Any]


# Required (+) and optional fields of each client event, with the JSON types they must have.
_STR, _INT, _DICT, _NUM = (str,), (int,), (dict,), (int, float)
CLIENT_EVENT_FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "session.update": {"session": (_DICT, True)},
    "input_audio_buffer.append": {"audio": (_STR, True)},
    "input_audio_buffer.commit": {},
    "input_audio_buffer.clear": {},
    "conversation.item.create": {"item": (_DICT, True), "previous_item_id": (_STR, False)},
    "conversation.item.retrieve": {"item_id": (_STR, True)},
    "conversation.item.delete": {"item_id": (_STR, True)},
    "conversation.item.truncate": {
        "item_id": (_STR, True),
        "content_index": (_INT, True),
        "audio_end_ms": (_INT, True),
    },
    "response.create": {"response": (_DICT, False)},
    "response.cancel": {"response_id": (_STR, False)},
    "output_audio_buffer.clear": {},
    # The duplex extension (docs/protocol.md).
    "microturn.video.frame": {"image": (_STR, True)},
}


def _json_type_ok(value: object, types: tuple[type, ...]) -> bool:
    # JSON true/false parse to bool, which Python counts as int: never accept them for numbers.
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def parse_client_event(raw: str | bytes, max_bytes: int = MAX_EVENT_BYTES) -> ClientEvent:
    """One WebSocket message -> a validated client event, or ProtocolError."""
    if len(raw) > max_bytes:
        raise ProtocolError(
            "event_too_large", f"event of {len(raw)} bytes exceeds the limit of {max_bytes} bytes"
        )
    try:
        message = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("invalid_json", f"message is not valid JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ProtocolError("invalid_event", f"an event must be a JSON object, got {type(message).__name__}")
    event_id = message.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise ProtocolError("invalid_event", "event_id must be a string", param="event_id")
    event_type = message.get("type")
    if not isinstance(event_type, str):
        raise ProtocolError(
            "invalid_event", "an event needs a string 'type'", param="type", event_id=event_id
        )
    if event_type not in CLIENT_EVENT_FIELDS:
        raise ProtocolError(
            "unknown_event", f"unknown event type {event_type[:100]!r}", param="type", event_id=event_id
        )
    for name, (types, required) in CLIENT_EVENT_FIELDS[event_type].items():
        if name not in message or message[name] is None:
            if required:
                raise ProtocolError(
                    "missing_required_parameter", f"{event_type} needs '{name}'", name, event_id
                )
            continue
        if not _json_type_ok(message[name], types):
            expected = " or ".join(t.__name__ for t in types)
            raise ProtocolError("invalid_type", f"'{name}' must be {expected}", name, event_id)
        if types is _INT and message[name] < 0:
            raise ProtocolError("invalid_value", f"'{name}' must not be negative", name, event_id)
    return ClientEvent(event_type, event_id, message)


# --- session configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionConfig:
    """What `session.update` can set; rendered back in either dialect."""

    id: str
    model: str
    instructions: str = ""
    voice: str = "alloy"
    speed: float = 1.0
    input_format: AudioFormat = PCM
    output_format: AudioFormat = PCM
    # Accepted and echoed: the model itself decides when to speak (docs/protocol.md, "Turn detection").
    turn_detection: dict | None = field(
        default_factory=lambda: {"type": "server_vad", "create_response": True, "interrupt_response": True}
    )
    output_modalities: tuple[str, ...] = ("audio",)
    tools: tuple[dict, ...] = ()
    tool_choice: Any = "auto"
    max_output_tokens: int | str = "inf"

    def to_ga(self) -> dict:
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "tools": list(self.tools),
            "tool_choice": self.tool_choice,
            "max_output_tokens": self.max_output_tokens,
            "audio": {
                "input": {
                    "format": self.input_format.to_ga(),
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": self.turn_detection,
                },
                "output": {"format": self.output_format.to_ga(), "voice": self.voice, "speed": self.speed},
            },
        }

    def to_beta(self) -> dict:
        return {
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "voice": self.voice,
            "speed": self.speed,
            "input_audio_format": self.input_format.beta,
            "output_audio_format": self.output_format.beta,
            "input_audio_transcription": None,
            "turn_detection": self.turn_detection,
            "tools": list(self.tools),
            "tool_choice": self.tool_choice,
            "max_response_output_tokens": self.max_output_tokens,
        }


def _check(condition: bool, param: str, message: str) -> None:
    if not condition:
        raise ProtocolError("invalid_value", message, param=param)


def _audio_format(value: object, param: str) -> AudioFormat:
    try:
        return parse_format(value)
    except AudioFormatError as exc:
        raise ProtocolError("invalid_audio_format", str(exc), param=param) from None


def _turn_detection(value: object, param: str) -> dict | None:
    _check(
        value is None or (isinstance(value, dict) and value.get("type") in ("server_vad", "semantic_vad")),
        param,
        "turn_detection must be null or {'type': 'server_vad' | 'semantic_vad', ...}",
    )
    return value  # type: ignore[return-value]


def apply_session_update(config: SessionConfig, update: dict) -> SessionConfig:
    """A new config with the GA or beta fields of `update` applied; unknown fields are ignored."""
    changes: dict[str, Any] = {}
    if "instructions" in update:
        _check(
            isinstance(update["instructions"], str), "session.instructions", "instructions must be a string"
        )
        changes["instructions"] = update["instructions"]
    modalities = update.get("output_modalities", update.get("modalities"))
    if modalities is not None:
        _check(
            isinstance(modalities, list)
            and bool(modalities)
            and all(m in ("text", "audio") for m in modalities),
            "session.output_modalities",
            "output_modalities must be a non-empty list of 'text' and 'audio'",
        )
        changes["output_modalities"] = tuple(modalities)
    if "tools" in update:
        _check(
            isinstance(update["tools"], list) and all(isinstance(t, dict) for t in update["tools"]),
            "session.tools",
            "tools must be a list of objects",
        )
        changes["tools"] = tuple(update["tools"])
    if "tool_choice" in update:
        changes["tool_choice"] = update["tool_choice"]
    limit = update.get("max_output_tokens", update.get("max_response_output_tokens"))
    if limit is not None:
        _check(
            limit == "inf" or (_json_type_ok(limit, _INT) and 1 <= limit <= 4096),
            "session.max_output_tokens",
            "max_output_tokens must be 1..4096 or 'inf'",
        )
        changes["max_output_tokens"] = limit
    audio = update.get("audio")
    if audio is not None:  # GA shape
        _check(isinstance(audio, dict), "session.audio", "audio must be an object")
        audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
        _check(
            isinstance(audio_in, dict) and isinstance(audio_out, dict),
            "session.audio",
            "audio.input and audio.output must be objects",
        )
        if "format" in audio_in:
            changes["input_format"] = _audio_format(audio_in["format"], "session.audio.input.format")
        if "turn_detection" in audio_in:
            changes["turn_detection"] = _turn_detection(
                audio_in["turn_detection"], "session.audio.input.turn_detection"
            )
        if "format" in audio_out:
            changes["output_format"] = _audio_format(audio_out["format"], "session.audio.output.format")
        voice_fields = audio_out
    else:
        voice_fields = update
    # beta shape
    if "input_audio_format" in update:
        changes["input_format"] = _audio_format(update["input_audio_format"], "session.input_audio_format")
    if "output_audio_format" in update:
        changes["output_format"] = _audio_format(update["output_audio_format"], "session.output_audio_format")
    if "turn_detection" in update:
        changes["turn_detection"] = _turn_detection(update["turn_detection"], "session.turn_detection")
    if voice_fields.get("voice") is not None:
        voice = voice_fields["voice"]
        _check(
            isinstance(voice, str) and 0 < len(voice) <= 64, "session.voice", "voice must be a short string"
        )
        changes["voice"] = voice
    if voice_fields.get("speed") is not None:
        speed = voice_fields["speed"]
        _check(
            _json_type_ok(speed, _NUM) and 0.25 <= speed <= 1.5, "session.speed", "speed must be 0.25..1.5"
        )
        changes["speed"] = float(speed)
    return replace(config, **changes)


# --- server events ---------------------------------------------------------------------------------------

# GA server event names that the beta dialect (header `OpenAI-Beta: realtime=v1`) spelled differently;
# None: the beta had no such event.
BETA_SERVER_NAMES: dict[str, str | None] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
}
# Content part types inside items: GA name -> beta name.
BETA_CONTENT_TYPES = {"output_audio": "audio", "output_text": "text"}


class IdMaker:
    """Unique ids with the original's prefixes (event_, item_, resp_, sess_), random per process."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._salt = os.urandom(4).hex()

    def __call__(self, prefix: str) -> str:
        return f"{prefix}_{self._salt}{next(self._counter):08d}"


def error_payload(error: ProtocolError) -> dict:
    """The `error` field of an `error` server event."""
    return {
        "type": "invalid_request_error",
        "code": error.code,
        "message": error.message,
        "param": error.param,
        "event_id": error.event_id,
    }
