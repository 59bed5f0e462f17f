"""One WebSocket connection <-> one engine session: the Realtime event state machine.

Client events go into the session (audio, typed text, video, speech requests). Every micro-turn the engine
calls back (from its thread) with the model's output; the connection turns the model's own decisions into
the protocol's turn-based events:
- the floor going to speaking/backchannel opens a response (response.created ... content_part.added), whose
  audio and words stream as response.output_audio.delta / output_audio_transcript.delta;
- the floor going back to listening with the user silent completes it (... response.done);
- the floor going to yielding, or to listening while the user speaks, truncates it at what the user can
  have heard (conversation.item.truncated) and ends it as cancelled (reason turn_detected);
- the model's perception of the user (user_speaking) gives input_audio_buffer.speech_started / stopped.
All server events leave through one queue and one writer task, in order.

With a background model (the app's `state.background_backend`, set by `microturn serve --background`), each
connection runs a `BackgroundWorker` beside its session: its answers enter the session's background-text
input, its progress goes out as `microturn.background` events, and the tools a client declares in
`session.update` are offered to it (client-side function calling, see docs/background.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from microturn.background.tools import ClientToolBridge
from microturn.background.worker import BackgroundWorker
from microturn.runtime.engine import Engine
from microturn.runtime.session import MicroTurnOutput
from microturn.server.codecs import AudioFormatError, decode_audio, duration_ms, encode_audio
from microturn.server.protocol import (
    BETA_CONTENT_TYPES,
    BETA_SERVER_NAMES,
    ClientEvent,
    IdMaker,
    ProtocolError,
    SessionConfig,
    apply_session_update,
    error_payload,
    parse_client_event,
)
from microturn.server.security import Limits, RateLimiter
from microturn.server.video import INLINE_PIXELS, FrameError, VideoStats, decode_frame, open_frame

log = logging.getLogger("microturn.server")

SPEAKING_FLOORS = ("speaking", "backchannel")
# Content part types accepted in conversation.item.create (GA and beta names).
CONTENT_TYPES = ("input_text", "input_audio", "input_image", "output_text", "output_audio", "text", "audio")


@dataclass
class ResponseState:
    """The utterance being reported as a response."""

    id: str
    item_id: str
    kind: str  # speaking | backchannel (the floor it opened with)
    audio_start_s: float  # session time at which its first audio chunk plays
    audio_start_ms: int  # user input time (ms) when it opened, for the backchannel event
    words: list[tuple[str, float]] = field(default_factory=list)  # (text, ms into the response audio)
    audio_sent_ms: float = 0.0
    first_sent_at: float | None = None  # wall clock of the first audio delta

    @property
    def transcript(self) -> str:
        return " ".join(text for text, _ in self.words)

    @property
    def content_ref(self) -> dict:
        """The fields that place a delta or done event in this response's one audio/text content part."""
        return {"response_id": self.id, "item_id": self.item_id, "output_index": 0, "content_index": 0}


class RealtimeConnection:
    def __init__(
        self,
        websocket: WebSocket,
        engine: Engine,
        limits: Limits,
        ids: IdMaker,
        model_name: str,
        beta: bool = False,
    ):
        self.websocket, self.engine, self.limits, self.ids = websocket, engine, limits, ids
        self.beta = beta
        self.config = SessionConfig(id=ids("sess"), model=model_name)
        self.rate = RateLimiter(limits.events_per_second, limits.event_burst)
        self.outbox: asyncio.Queue[dict | None] = asyncio.Queue()
        self.items: OrderedDict[str, dict] = OrderedDict()  # the conversation record
        self.spoken: dict[str, ResponseState] = {}  # assistant items: audio sent and word timings
        self.response: ResponseState | None = None
        self.floor = "listening"
        self.user_speaking = False
        self.user_item_id: str | None = None  # the user item speech_started announced
        self.input_ms = 0.0  # client audio received
        self.turn_events = False  # extension: one microturn.turn event per micro-turn (load tests)
        self.session = None
        self.closing = False
        self.close_task: asyncio.Task | None = None  # closing a client that does not read
        self.last_rate_error = 0.0
        self.worker: BackgroundWorker | None = None  # the background model, when the server has one
        self.client_tools = ClientToolBridge(self._send_function_call)
        self.client_tool_names: set[str] = set()
        self.video = VideoStats()  # camera frames received (microturn.video.frame)
        self.video_size = engine.model.cfg.video_size
        self.video_seq = 0  # frames opened, in arrival order
        self.video_pushed_seq = 0  # the newest frame passed to the session
        self.video_task: asyncio.Task | None = None  # the thread decoding a large frame
        self.video_waiting: tuple | None = None  # the newest large frame waiting for it

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        stats = self.engine.stats

        def on_output(output: MicroTurnOutput) -> None:  # engine thread, right after the step it reports
            # The step began (at its deadline) step_ms before now: the start of this micro-turn's latency.
            step_started = time.time() - (stats.step_ms[-1] / 1000.0 if stats.step_ms else 0.0)
            try:
                loop.call_soon_threadsafe(self._on_output, output, step_started)
            except RuntimeError:  # the loop is gone: the session is being closed
                pass

        self.session = self.engine.open_session(on_output=on_output)
        app = self.websocket.scope.get("app")
        backend = getattr(getattr(app, "state", None), "background_backend", None)
        if backend is not None:
            self.worker = BackgroundWorker(
                self.session,
                backend,
                on_event=lambda event: self._send("microturn.background", **event),
                loop=loop,
            )
        writer = asyncio.create_task(self._write())
        try:
            self._send("session.created", session=self._session_object())
            await asyncio.wait_for(self._read(), timeout=self.limits.max_session_s)
        except TimeoutError:
            self._send_error(
                ProtocolError(
                    "session_expired",
                    f"the session reached its maximum length of {self.limits.max_session_s:.0f} s",
                )
            )
            self.outbox.put_nowait(None)
            await asyncio.wait({writer}, timeout=5.0)  # flush, unless the client does not read
            await self.websocket.close(code=1000)
        except WebSocketDisconnect:
            pass
        finally:
            # Free the engine session at once: it leaves at the next micro-turn.
            self.engine.close_session(self.session)
            if self.worker is not None:
                self.worker.close()
            self.closing = True
            writer.cancel()
            if self.video_task is not None:
                self.video_task.cancel()

    async def _read(self) -> None:
        while not self.closing:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            raw = message.get("text") if message.get("text") is not None else message.get("bytes", b"")
            if not self.rate.allow():
                now = time.monotonic()
                if now - self.last_rate_error >= 1.0:  # one error per second, not one per dropped event
                    self.last_rate_error = now
                    self._send_error(
                        ProtocolError("rate_limit_exceeded", "too many events; some were dropped")
                    )
                continue
            try:
                self._handle(parse_client_event(raw, self.limits.max_event_bytes))
            except ProtocolError as exc:
                self._send_error(exc)
            except Exception:  # a bug must not end the session, nor the server: report and go on
                log.exception("session %s: error handling a client event", self.config.id)
                self._send_error(ProtocolError("server_error", "the server failed to handle this event"))

    async def _write(self) -> None:
        try:
            while (event := await self.outbox.get()) is not None:
                await self.websocket.send_json(event)
        except (WebSocketDisconnect, RuntimeError, OSError):  # client gone: the reader ends the session
            self.closing = True

    # --- sending -----------------------------------------------------------------------------------------

    def _send(self, event_type: str, **fields: Any) -> None:
        if self.beta:
            event_type = BETA_SERVER_NAMES.get(event_type, event_type)
            if event_type is None:
                return
        if self.closing:
            return
        if self.outbox.qsize() >= self.limits.max_outbox_events:
            # The client does not read what it is sent: drop it rather than queue without bound.
            log.warning("closing session %s: the client is not reading its events", self.config.id)
            self.closing = True
            self.outbox.put_nowait(None)
            self.close_task = asyncio.get_running_loop().create_task(self.websocket.close(code=1008))
            return
        self.outbox.put_nowait({"type": event_type, "event_id": self.ids("event"), **fields})

    def _send_error(self, error: ProtocolError) -> None:
        self._send("error", error=error_payload(error))

    def _session_object(self) -> dict:
        return self.config.to_beta() if self.beta else self.config.to_ga()

    def _content_type(self, ga_type: str) -> str:
        return BETA_CONTENT_TYPES.get(ga_type, ga_type) if self.beta else ga_type

    # --- client events -----------------------------------------------------------------------------------

    def _handle(self, event: ClientEvent) -> None:
        handler = getattr(self, "_on_" + event.type.replace(".", "_"))
        try:
            handler(event.data)
        except ProtocolError as exc:
            exc.event_id = exc.event_id or event.event_id
            raise

    def _on_session_update(self, data: dict) -> None:
        update = data["session"]
        old = self.config
        self.config = apply_session_update(old, update)
        extension = update.get("microturn")
        if isinstance(extension, dict) and isinstance(extension.get("turn_events"), bool):
            self.turn_events = extension["turn_events"]
        if self.config.instructions and self.config.instructions != old.instructions:
            self.session.push_text(self.config.instructions)
        if self.worker is not None and self.config.tools != old.tools:
            self._offer_client_tools()
        self._send("session.updated", session=self._session_object())

    def _decode_input_audio(self, audio: object, param: str) -> np.ndarray:
        try:
            return decode_audio(audio, self.config.input_format)
        except AudioFormatError as exc:
            raise ProtocolError("invalid_audio", str(exc), param=param) from None

    def _on_input_audio_buffer_append(self, data: dict) -> None:
        fmt = self.config.input_format
        samples = self._decode_input_audio(data["audio"], "audio")
        if len(samples):
            self.input_ms += duration_ms(len(samples) * fmt.bytes_per_sample, fmt)
            # The session keeps well under a second of backlog and drops the oldest excess anyway: cut
            # overlong packets here, before resampling them costs the event loop.
            self.session.push_audio(samples[-int(self.limits.max_audio_per_event_s * fmt.rate) :], fmt.rate)

    def _on_input_audio_buffer_commit(self, data: dict) -> None:
        # The model hears audio as it arrives: committing only closes a user item in the record.
        self._add_user_audio_item(self.ids("item"))

    def _on_input_audio_buffer_clear(self, data: dict) -> None:
        self._send("input_audio_buffer.cleared")

    def _on_conversation_item_create(self, data: dict) -> None:
        item = data["item"]
        previous = data.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self.items:
            raise ProtocolError(
                "item_not_found", f"previous_item_id {previous!r} does not exist", "previous_item_id"
            )
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "assistant"):
                raise ProtocolError(
                    "invalid_value", "a message item needs role user, system or assistant", "item.role"
                )
            content = item.get("content")
            if not isinstance(content, list) or not content or not all(isinstance(c, dict) for c in content):
                raise ProtocolError(
                    "invalid_value", "a message item needs a non-empty content list", "item.content"
                )
            # Everything is checked before anything reaches the model.
            texts = [self._content_text(c) for c in content]
            audios = [
                self._decode_input_audio(c.get("audio"), "item.content.audio")
                if c.get("type") == "input_audio" and role != "assistant"
                else None
                for c in content
            ]
            if role != "assistant":  # what the user typed (or the system says) goes into the typed-text input
                for text, audio in zip(texts, audios, strict=True):
                    if text:
                        self.session.push_text(text)
                        if self.worker is not None and role == "user":
                            self.worker.record.add_typed(text, self.session.turn * self.engine.turn_s)
                            self.worker.request("typed")
                    if audio is not None and len(audio):
                        self.session.push_audio(audio, self.config.input_format.rate)
            record = {
                "type": "message",
                "role": role,
                "content": [{k: v for k, v in c.items() if k != "audio"} for c in content],
            }
        elif kind == "function_call_output":
            output, call_id = item.get("output"), item.get("call_id")
            if not isinstance(output, str) or not isinstance(call_id, str):
                raise ProtocolError(
                    "invalid_value", "function_call_output needs string call_id and output", "item"
                )
            self._check_text(output, "item.output")
            # The answer to a background model's call goes back to it; any other tool result is content
            # for the model to say when it fits: the background-text input.
            if not self.client_tools.deliver(call_id, output):
                self.session.push_background(output)
            record = {"type": "function_call_output", "call_id": call_id, "output": output}
        elif kind == "function_call":
            record = {
                "type": "function_call",
                "call_id": str(item.get("call_id", "")),
                "name": str(item.get("name", "")),
                "arguments": str(item.get("arguments", "")),
            }
        else:
            raise ProtocolError("invalid_value", f"unsupported item type {str(kind)[:50]!r}", "item.type")
        item_id = item.get("id") if isinstance(item.get("id"), str) and item["id"] not in self.items else None
        self._add_item(
            {"id": item_id or self.ids("item"), "object": "realtime.item", "status": "completed", **record},
            previous,
        )

    def _content_text(self, part: dict) -> str:
        ptype = part.get("type")
        if ptype not in CONTENT_TYPES:
            raise ProtocolError(
                "invalid_value", f"unsupported content type {str(ptype)[:50]!r}", "item.content"
            )
        text = part.get("text", "") if ptype in ("input_text", "text", "output_text") else ""
        if not isinstance(text, str):
            raise ProtocolError("invalid_type", "content text must be a string", "item.content.text")
        self._check_text(text, "item.content.text")
        return text

    def _check_text(self, text: str, param: str) -> None:
        if len(text) > self.limits.max_text_chars:
            raise ProtocolError(
                "invalid_value", f"text of {len(text)} characters exceeds {self.limits.max_text_chars}", param
            )

    def _on_conversation_item_retrieve(self, data: dict) -> None:
        self._send("conversation.item.retrieved", item=self._item(data["item_id"]))

    def _on_conversation_item_delete(self, data: dict) -> None:
        self._item(data["item_id"])
        del self.items[data["item_id"]]
        self.spoken.pop(data["item_id"], None)
        self._send("conversation.item.deleted", item_id=data["item_id"])

    def _on_conversation_item_truncate(self, data: dict) -> None:
        self._item(data["item_id"])  # unknown ids: item_not_found
        if data["item_id"] not in self.spoken:
            raise ProtocolError("invalid_value", "only assistant audio items can be truncated", "item_id")
        if data["content_index"] != 0:
            raise ProtocolError(
                "invalid_value", "assistant items have one content part (content_index 0)", "content_index"
            )
        if self.response is not None and self.response.item_id == data["item_id"]:
            # The client stopped playing the utterance still being spoken: the model stops too.
            self.session.cancel_speech()
            self._finish_response("cancelled", "client_cancelled", truncate_ms=float(data["audio_end_ms"]))
            return
        self._truncate_item(self.spoken[data["item_id"]], float(data["audio_end_ms"]))

    def _on_response_create(self, data: dict) -> None:
        response = data.get("response") or {}
        instructions = response.get("instructions")
        if isinstance(instructions, str) and instructions:
            self._check_text(instructions, "response.instructions")
            self.session.push_text(instructions)
        self.session.request_speech()

    def _on_response_cancel(self, data: dict) -> None:
        self.session.cancel_speech()
        if self.response is not None:
            self._finish_response("cancelled", "client_cancelled")

    def _on_output_audio_buffer_clear(self, data: dict) -> None:
        self._on_response_cancel(data)
        self._send("output_audio_buffer.cleared", response_id=None)

    def _on_microturn_video_frame(self, data: dict) -> None:
        event_id = data.get("event_id")
        try:
            frame = open_frame(data["image"], self.limits.max_video_bytes, self.limits.max_video_pixels)
        except FrameError as exc:
            self._refuse_frame(ProtocolError("invalid_image", str(exc), "image", event_id))
            return
        self.video_seq += 1
        if frame.width * frame.height <= INLINE_PIXELS:
            try:
                rgb = decode_frame(frame, self.video_size)
            except FrameError as exc:
                self._refuse_frame(ProtocolError("invalid_image", str(exc), "image", event_id))
                return
            self._accept_frame(rgb, frame.size, self.video_seq)
            return
        # A large frame: decoded in a thread, one at a time; while one decodes, only the newest waits.
        job = (frame, self.video_seq, event_id)
        if self.video_task is None:
            self.video_task = asyncio.get_running_loop().create_task(self._decode_frames(job))
        else:
            if self.video_waiting is not None:
                self.video_waiting[0].close()
                self.video.dropped += 1
            self.video_waiting = job

    async def _decode_frames(self, job: tuple) -> None:
        try:
            while job is not None:
                frame, seq, event_id = job
                size = frame.size
                try:
                    rgb = await asyncio.to_thread(decode_frame, frame, self.video_size)
                except FrameError as exc:
                    self._refuse_frame(ProtocolError("invalid_image", str(exc), "image", event_id))
                else:
                    self._accept_frame(rgb, size, seq)
                job, self.video_waiting = self.video_waiting, None
        finally:
            self.video_task = None

    def _accept_frame(self, rgb: np.ndarray, size: tuple[int, int], seq: int) -> None:
        if seq < self.video_pushed_seq:  # a large frame decoded after a newer (small) one was passed on
            self.video.dropped += 1
        else:
            self.video_pushed_seq = seq
            self.session.push_video(rgb)
            self.video.frames += 1
            self.video.width, self.video.height = size
        self._report_video()

    def _refuse_frame(self, error: ProtocolError) -> None:
        """An unusable frame: an error event; the session keeps the frames it had."""
        self.video.refused += 1
        self._send_error(error)
        self._report_video()

    def _report_video(self) -> None:
        """microturn.video.received, at most once a second while frames arrive (the first one at once)."""
        now = time.monotonic()
        if now - self.video.reported_at < 1.0:
            return
        self.video.reported_at = now
        self._send(
            "microturn.video.received",
            frames=self.video.frames,
            used=self.session.video_used,
            refused=self.video.refused,
            dropped=self.video.dropped,
            width=self.video.width,
            height=self.video.height,
            micro_turn=self.session.turn,
        )

    # --- the background model ------------------------------------------------------------------------------

    def _offer_client_tools(self) -> None:
        """The client's declared function tools replace those it declared before, in the worker's registry."""
        for name in self.client_tool_names:
            self.worker.tools.remove(name)
        self.client_tool_names = set()
        for declaration in self.config.tools:
            if declaration.get("type", "function") == "function" and isinstance(declaration.get("name"), str):
                self.worker.tools.add(self.client_tools.tool(declaration))
                self.client_tool_names.add(declaration["name"])

    def _send_function_call(self, call_id: str, name: str, arguments: str) -> None:
        """The background model calls a client tool: the protocol's function call events and item."""
        response_id, item_id = self.ids("resp"), self.ids("item")
        where = {"response_id": response_id, "item_id": item_id, "output_index": 0, "call_id": call_id}
        self._send("response.function_call_arguments.delta", delta=arguments, **where)
        self._send("response.function_call_arguments.done", name=name, arguments=arguments, **where)
        item = {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}
        self._add_item({"id": item_id, "object": "realtime.item", "status": "completed", **item})

    # --- the record --------------------------------------------------------------------------------------

    def _item(self, item_id: str) -> dict:
        if item_id not in self.items:
            raise ProtocolError("item_not_found", f"no item {item_id[:100]!r} in the conversation", "item_id")
        return self.items[item_id]

    def _add_item(self, item: dict, previous_item_id: str | None = None) -> None:
        ids = list(self.items)
        if previous_item_id is None or previous_item_id not in self.items and previous_item_id != "root":
            previous = ids[-1] if ids else None
            self.items[item["id"]] = item
        else:  # insert after previous_item_id ("root": at the start)
            position = 0 if previous_item_id == "root" else ids.index(previous_item_id) + 1
            entries = list(self.items.items())
            entries.insert(position, (item["id"], item))
            self.items = OrderedDict(entries)
            previous = None if position == 0 else ids[position - 1]
        while len(self.items) > self.limits.max_items:
            dropped, _ = self.items.popitem(last=False)
            self.spoken.pop(dropped, None)
        self._send("conversation.item.added", previous_item_id=previous, item=item)
        if item["status"] != "in_progress":
            self._send("conversation.item.done", previous_item_id=previous, item=item)

    def _add_user_audio_item(self, item_id: str) -> None:
        previous = next(reversed(self.items), None)
        self._send("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        self._add_item(
            {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}],
            }
        )

    def _truncate_item(self, spoken: ResponseState, audio_end_ms: float) -> None:
        """Keep only what was heard: audio up to audio_end_ms and the words that started before it."""
        item_id = spoken.item_id
        audio_end_ms = min(audio_end_ms, spoken.audio_sent_ms)  # an estimate past the end means: all of it
        spoken.audio_sent_ms = audio_end_ms
        spoken.words = [(w, start) for w, start in spoken.words if start < audio_end_ms]
        item = self.items.get(item_id)
        if item is not None and item["content"]:
            item["content"][0]["transcript"] = spoken.transcript
        self.session.truncate(spoken.audio_start_s + audio_end_ms / 1000.0)
        self._send(
            "conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=int(audio_end_ms)
        )

    # --- model output (engine callbacks, run on the event loop) ------------------------------------------

    def _on_output(self, output: MicroTurnOutput, step_started: float) -> None:
        if self.closing:
            return
        floor = output.floor
        if self.worker is not None:
            self.worker.observe(output)
        if self.turn_events:
            self._send(
                "microturn.turn",
                micro_turn=output.index,
                floor=floor,
                user_speaking=output.user_speaking,
                step_started=step_started,
            )
        if floor != self.floor:
            self._send(
                "microturn.floor",
                floor=floor,
                previous=self.floor,
                micro_turn=output.index,
                user_speaking=output.user_speaking,
            )
        self._track_user(output)
        response = self.response
        if response is not None:
            if floor == "yielding" or (floor == "listening" and output.user_speaking):
                self._stream(response, output, audio=False)  # its last words, if heard, stay in the record
                heard = self._heard_ms(response) if "audio" in self.config.output_modalities else None
                self._finish_response("cancelled", "turn_detected", truncate_ms=heard)  # text: all was read
            else:
                self._stream(response, output)  # the last chunk carries the vocoder's tail
                if floor == "listening":
                    self._finish_response("completed")
        elif floor in SPEAKING_FLOORS:
            self._open_response(output)
            self._stream(self.response, output)
        self.floor = floor

    def _track_user(self, output: MicroTurnOutput) -> None:
        if output.user_speaking == self.user_speaking:
            return
        self.user_speaking = output.user_speaking
        at_ms = int(output.index * self.engine.turn_s * 1000)
        if output.user_speaking:
            self.user_item_id = self.ids("item")
            self._send("input_audio_buffer.speech_started", audio_start_ms=at_ms, item_id=self.user_item_id)
        else:
            item_id = self.user_item_id or self.ids("item")
            self._send("input_audio_buffer.speech_stopped", audio_end_ms=at_ms, item_id=item_id)
            self._add_user_audio_item(item_id)
            self.user_item_id = None

    def _open_response(self, output: MicroTurnOutput) -> None:
        self.response = response = ResponseState(
            id=self.ids("resp"),
            item_id=self.ids("item"),
            kind=output.floor,
            audio_start_s=output.start,
            audio_start_ms=int(self.input_ms),
        )
        self._send("response.created", response=self._response_object(response, "in_progress", None))
        item = {
            "id": response.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self._send("response.output_item.added", response_id=response.id, output_index=0, item=item)
        self._add_item(item)
        self.spoken[response.item_id] = response
        self._send(
            "response.content_part.added",
            response_id=response.id,
            item_id=response.item_id,
            output_index=0,
            content_index=0,
            part=self._part(response),
        )

    def _stream(self, response: ResponseState, output: MicroTurnOutput, audio: bool = True) -> None:
        where = response.content_ref
        audio_mode = "audio" in self.config.output_modalities
        for word in output.words:
            start_ms = max(0.0, (word["start"] - response.audio_start_s) * 1000.0)
            delta = word["text"] if not response.words else " " + word["text"]
            response.words.append((word["text"], start_ms))
            self._send(
                "response.output_audio_transcript.delta" if audio_mode else "response.output_text.delta",
                delta=delta,
                **where,
            )
        if not audio:
            return
        chunk_ms = len(output.audio_24k) / 24.0
        if audio_mode and len(output.audio_24k):
            if response.first_sent_at is None:
                response.first_sent_at = time.monotonic()
            self._send(
                "response.output_audio.delta",
                delta=encode_audio(output.audio_24k, self.config.output_format),
                **where,
            )
        response.audio_sent_ms += chunk_ms

    def _heard_ms(self, response: ResponseState) -> float:
        """Audio the client can have played by now: what was sent, less what real time has not reached."""
        if response.first_sent_at is None:
            return 0.0
        return min(response.audio_sent_ms, (time.monotonic() - response.first_sent_at) * 1000.0)

    def _part(self, response: ResponseState | None, transcript: str = "") -> dict:
        if "audio" in self.config.output_modalities:
            return {"type": "audio", "transcript": transcript}
        return {"type": "text", "text": transcript}

    def _finish_response(
        self, status: str, reason: str | None = None, truncate_ms: float | None = None
    ) -> None:
        response, self.response = self.response, None
        if response is None:
            return
        if truncate_ms is not None:
            self._truncate_item(response, truncate_ms)
        transcript = response.transcript
        where = response.content_ref
        audio_mode = "audio" in self.config.output_modalities
        if audio_mode:
            self._send("response.output_audio.done", **where)
            self._send("response.output_audio_transcript.done", transcript=transcript, **where)
        else:
            self._send("response.output_text.done", text=transcript, **where)
        self._send("response.content_part.done", part=self._part(response, transcript), **where)
        content = (
            {"type": self._content_type("output_audio"), "transcript": transcript}
            if audio_mode
            else {"type": self._content_type("output_text"), "text": transcript}
        )
        final = {
            "id": response.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "completed" if status == "completed" else "incomplete",
            "content": [content],
        }
        if response.item_id in self.items:
            self.items[response.item_id].update(final)
        self._send("response.output_item.done", response_id=response.id, output_index=0, item=final)
        self._send("conversation.item.done", item=final)
        self._send("response.done", response=self._response_object(response, status, reason, [final]))
        if response.kind == "backchannel":
            self._send(
                "microturn.backchannel",
                response_id=response.id,
                item_id=response.item_id,
                text=transcript,
                audio_start_ms=response.audio_start_ms,
            )

    def _response_object(
        self, response: ResponseState, status: str, reason: str | None, output: list[dict] | None = None
    ) -> dict:
        details = None if reason is None else {"type": status, "reason": reason}
        return {
            "id": response.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": output or [],
            "conversation_id": None,
            "output_modalities": list(self.config.output_modalities),
            "audio": {"output": {"format": self.config.output_format.to_ga(), "voice": self.config.voice}},
            "max_output_tokens": self.config.max_output_tokens,
            "usage": None,
            "metadata": None,
        }
