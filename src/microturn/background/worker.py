"""The background worker: runs the background model beside a live session without ever blocking it.

A task starts at every user turn end (the interaction model's own perception: its floor head's
user_speaking going from true to false, via `observe(output)`) and whenever `request()` is called (the
model's delegate signal, a client, a timer). A task waits for the user's last words to be transcribed, sends
the whole conversation record to the backend, runs the tools the backend calls, and streams the answer into
`session.push_background` sentence by sentence as it arrives. A newer task supersedes a running one (the
conversation moved on). A backend that fails or exceeds `WorkerConfig.timeout_s` ends the task as failed
and the session gets a short apology to voice; the engine never waits on any of this.

Events (`on_event(dict)`, called on the worker's event loop), the duplex extension's
`microturn.background`: {"task_id", "reason", "status": started | progress | done | failed | cancelled,
"text" (progress: the sentence delivered; done: the whole answer), "tool" (progress: a tool was called),
"error" (failed)}.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from microturn.background.backends import Backend, ToolCall
from microturn.background.conversation import ConversationRecord, Segment
from microturn.background.tools import Timers, ToolRegistry, default_registry
from microturn.runtime.session import MicroTurnOutput, Session

SYSTEM_PROMPT = (
    "You help a voice assistant during a live spoken conversation. Below is the conversation so far, "
    "with times in seconds; the user's words come from speech recognition and may contain errors. "
    "Give the assistant the content of its next reply to the user's last words: one to three short, "
    "plain spoken sentences, no lists, no markup. Use the tools for facts you do not know. "
    "If the user's last words need no facts, tools or thought, answer exactly NONE."
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_TIME_TAG = re.compile(r"\[[\d.\s-]+s\]\s*")  # small models copy the record's "[1.6-2.7 s]" line tags


@dataclass
class WorkerConfig:
    timeout_s: float = 30.0  # a whole task, tool calls included
    transcribe_timeout_s: float = 20.0
    max_tool_rounds: int = 3
    on_turn_end: bool = True  # start a task at every user turn end
    apology: str = "Sorry, I could not get that."
    system_prompt: str = SYSTEM_PROMPT


class LoopThread:
    """An asyncio loop on a daemon thread, for callers that have no loop of their own (evaluation, tests)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="microturn-background", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)


def split_sentences(buffer: str) -> tuple[list[str], str]:
    """Complete sentences of `buffer`, and the unfinished rest."""
    parts = _SENTENCE_END.split(buffer)
    return [p.strip() for p in parts[:-1] if p.strip()], parts[-1]


def _is_none(text: str) -> bool:
    return re.sub(r"[^a-z]", "", text.lower()) == "none"


class BackgroundWorker:
    def __init__(
        self,
        session: Session,
        backend: Backend,
        config: WorkerConfig | None = None,
        tools: ToolRegistry | None = None,
        on_event: Callable[[dict], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        record: ConversationRecord | None = None,
    ):
        self.session, self.backend = session, backend
        self.config = config or WorkerConfig()
        self.timers = Timers(on_expiry=self._timer_expired)
        self.tools = tools if tools is not None else default_registry(timers=self.timers)
        self.on_event = on_event
        self.own_loop = LoopThread() if loop is None else None
        self.loop = loop or self.own_loop.loop
        self.record = record or ConversationRecord(turn_s=session.turn_s)
        self.task: asyncio.Task | None = None
        self.events: list[dict] = []  # every event so far (evaluation and tests read them)
        self._count = 0
        session.input_tap = self.record.observe_input

    # ---- any thread ----
    def observe(self, output: MicroTurnOutput) -> None:
        """Feed every micro-turn's output (from the engine callback); a user turn end starts a task."""
        segment = self.record.observe_output(output)
        if segment is not None and self.config.on_turn_end:
            self.loop.call_soon_threadsafe(self._start, "turn_end", segment)

    def request(self, reason: str = "request") -> None:
        """Start a task now (the model's delegate signal, a client request)."""
        self.loop.call_soon_threadsafe(self._start, reason, None)

    def close(self) -> None:
        """Cancel the running task and the timers; the session gets nothing more from this worker."""

        async def shutdown() -> None:
            self.timers.cancel_all()
            if self.task is not None and not self.task.done():
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)

        self.session.input_tap = None
        if self.own_loop is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5.0)
            self.own_loop.stop()
        else:  # a shared loop (the server's) goes on: clean up there, without blocking it
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(shutdown()))
        self.record.close()

    # ---- the loop ----
    def _emit(self, task_id: str, reason: str, status: str, **fields) -> None:
        event = {"task_id": task_id, "reason": reason, "status": status, "time": time.monotonic(), **fields}
        self.events.append(event)
        if self.on_event is not None:
            self.on_event({k: v for k, v in event.items() if k != "time"})

    def _start(self, reason: str, segment: Segment | None) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()  # superseded: the conversation moved on
        self._count += 1
        self.task = self.loop.create_task(self._run(f"bg{self._count}", reason, segment))

    def _timer_expired(self, text: str) -> None:
        self.session.push_background(text)
        self._emit("timer", "timer", "done", text=text)

    async def _run(self, task_id: str, reason: str, segment: Segment | None) -> None:
        try:
            await asyncio.to_thread(self.record.wait, self.config.transcribe_timeout_s)
        except Exception as exc:  # a failed transcription leaves the record without those words
            self._emit(task_id, reason, "progress", error=f"transcription failed: {exc!r}")
        words = list(self.session.transcript)
        utterances = self.record.utterances(words)
        if segment is not None and not any(
            u.speaker == "user" and u.end >= segment.start for u in utterances
        ):
            return  # the model perceived speech but Whisper heard no words: nothing to answer
        self._emit(task_id, reason, "started")
        delivered: list[str] = []
        try:
            async with asyncio.timeout(self.config.timeout_s):
                await self._answer(
                    task_id, reason, self.record.messages(self.config.system_prompt, words), delivered
                )
        except asyncio.CancelledError:
            self._emit(task_id, reason, "cancelled", text=" ".join(delivered))
            raise
        except Exception as exc:  # slow, failing, malformed: the conversation goes on without the answer
            error = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            if not delivered:
                self.session.push_background(self.config.apology)
            self._emit(task_id, reason, "failed", error=error, text=" ".join(delivered))
            return
        self._emit(task_id, reason, "done", text=" ".join(delivered))

    async def _answer(self, task_id: str, reason: str, messages: list[dict], delivered: list[str]) -> None:
        def deliver(sentence: str) -> None:
            sentence = _TIME_TAG.sub("", sentence).strip()
            if not sentence or _is_none(sentence) or sentence in delivered:  # small models loop
                return
            self.session.push_background(sentence + " ")
            delivered.append(sentence)
            self._emit(task_id, reason, "progress", text=sentence)

        for _round in range(self.config.max_tool_rounds + 1):
            buffer, calls = "", []
            tools = self.tools.schemas() if _round < self.config.max_tool_rounds else []
            async for piece in self.backend.complete(messages, tools):
                if isinstance(piece, ToolCall):
                    calls.append(piece)
                    continue
                buffer += piece
                sentences, buffer = split_sentences(buffer)
                for sentence in sentences:
                    deliver(sentence)
            if buffer.strip():
                deliver(buffer.strip())
            if not calls:
                return
            messages = messages + [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in calls
                    ],
                }
            ]
            for call in calls:
                self._emit(task_id, reason, "progress", tool=call.name)
                result = await self.tools.call(call.name, call.arguments)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
