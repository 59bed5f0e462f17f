"""The background worker end to end: a real session on a tiny engine, and a real OpenAI-compatible endpoint
on a loopback port (a thread running `http.server`) that speaks the chat-completions wire format (server-sent
events, `data: {...}` chunks, tool calls streamed in pieces, `data: [DONE]`)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from microturn.background.backends import OpenAIBackend, OpenAIConfig
from microturn.background.tools import ClientToolBridge, ToolRegistry
from microturn.background.worker import AnswerStream, BackgroundWorker, WorkerConfig, split_sentences
from microturn.model.checkpoint import save_checkpoint
from microturn.model.config import get_config
from microturn.model.interaction import InteractionModel
from microturn.model.tokenizer import TextTokenizer
from microturn.runtime.checkpoint import load_runtime
from microturn.runtime.engine import Engine, EngineConfig
from microturn.runtime.vocoder import Vocoder, VocoderConfig, save_vocoder

torch.set_num_threads(1)
TEXT = ["the answer is forty two", "ask me more about it", "sorry i could not get that", "it is a number"]


class FakeChatEndpoint:
    """POST /v1/chat/completions answered from `scripts` (one per request, in order): each step is
    ("chunk", dict) an SSE event, ("sleep", seconds), or ("status", code) an HTTP error instead."""

    def __init__(self):
        self.scripts: list[list[tuple]] = []
        self.requests: list[dict] = []
        self.sent_at: list[float] = []  # when each chunk left
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), **body}
                )
                script = endpoint.scripts.pop(0) if endpoint.scripts else []
                for kind, value in script:
                    if kind == "status":
                        payload = json.dumps({"error": {"message": "overloaded"}}).encode()
                        self.send_response(value)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for kind, value in script:
                        if kind == "sleep":
                            time.sleep(value)
                        else:
                            self.wfile.write(b"data: " + json.dumps(value).encode() + b"\n\n")
                            self.wfile.flush()
                            endpoint.sent_at.append(time.monotonic())
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def text_chunk(text: str) -> dict:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}


def tool_chunk(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict:
    call: dict = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = TextTokenizer.train(TEXT * 30, 300)
    path: Path = tmp_path_factory.mktemp("bg") / "model"
    save_checkpoint(path, InteractionModel(get_config("tiny", vocab_size=tokenizer.vocab_size)), tokenizer)
    save_vocoder(Vocoder(VocoderConfig(dim=32, hidden=64, blocks=1)), path / "vocoder")
    return load_runtime(path)


@pytest.fixture()
def engine(models) -> Engine:
    return Engine(EngineConfig(), models.model, models.tokenizer, models.vocoder)


@pytest.fixture()
def endpoint():
    server = FakeChatEndpoint()
    yield server
    server.stop()


def wait_for(worker: BackgroundWorker, status: str, engine: Engine, timeout: float = 10.0) -> list[float]:
    """Step the engine (as its real-time thread would) until the worker reports `status`; returns each
    step's wall time, which shows the engine never waited on the worker."""
    step_s, deadline = [], time.monotonic() + timeout
    while not any(e["status"] == status for e in worker.events):
        assert time.monotonic() < deadline, f"no {status!r} event; got {worker.events}"
        started = time.monotonic()
        engine.step_once()
        step_s.append(time.monotonic() - started)
        time.sleep(0.05)
    return step_s


def one_finished_task(engine: Engine, endpoint) -> BackgroundWorker:
    """A worker on a fresh session that has run one requested task against `endpoint` to its end."""
    worker = BackgroundWorker(engine.open_session(), OpenAIBackend(OpenAIConfig(endpoint.url)))
    try:
        worker.request()
        wait_for(worker, "done", engine)
    finally:
        worker.close()
    return worker


def queued_text(session, tokenizer) -> str:
    return tokenizer.decode(list(session.background.pending))


def test_sentences_are_cut_at_their_ends() -> None:
    assert split_sentences("It is 42. Ask me") == (["It is 42."], "Ask me")
    assert split_sentences("Yes! Why? Line\nnext") == (["Yes!", "Why?", "Line"], "next")
    assert split_sentences("3.5 kg") == ([], "3.5 kg")  # a decimal point is no sentence end


def stream_answer(pieces: list[str], opening_words: int = 3) -> tuple[list[str], list[str], AnswerStream]:
    """(what was pushed, the progress events' sentences, the stream) for the backend's text pieces."""
    pushed, progress = [], []
    answer = AnswerStream(pushed.append, lambda status, **f: progress.append(f["text"]), opening_words)
    for piece in pieces:
        answer.feed(piece)
    answer.finish()
    return pushed, progress, answer


def test_the_first_sentence_streams_word_by_word_and_the_rest_by_sentence() -> None:
    pieces = ["Paris is the", " capital of", " France. It", " is big. It is big.", " Very"]
    pushed, progress, answer = stream_answer(pieces)
    # 3 complete words are needed ("the" may go on), then each piece's complete words go out
    assert pushed == ["Paris is the capital ", "of France. ", "It is big. ", "Very "]
    assert progress == ["Paris is the capital of France.", "It is big.", "Very"]  # the repeat dropped
    assert answer.said() == "Paris is the capital of France. It is big. Very"
    tokenizer = TextTokenizer.train(pieces * 30, 300)  # the pieces make the tokens the whole answer would
    ids = tokenizer.encode_message(pushed[0]) + [i for p in pushed[1:] for i in tokenizer.encode(p)]
    assert ids == tokenizer.encode_message(answer.said())
    assert stream_answer(pieces, opening_words=0)[0] == [
        "Paris is the capital of France. ",
        "It is big. ",
        "Very ",
    ]
    # a time tag still being written never goes out word by word, nor does a first word that may be NONE
    tagged = ["[1.6-2.7", " s] It is", " late", " now."]
    assert stream_answer(tagged)[0] == ["It is late ", "now. "]
    assert stream_answer(tagged, opening_words=1)[0] == ["It ", "is ", "late ", "now. "]
    assert stream_answer(["NO", "NE"], opening_words=1)[0] == [] and stream_answer(["NONE\n"], 1)[0] == []
    assert stream_answer(["None of", " it."], opening_words=1)[0] == ["None of ", "it. "]


def test_a_backend_failing_after_the_opening_words_gets_no_apology_on_top() -> None:
    pushed, progress = [], []
    answer = AnswerStream(pushed.append, lambda status, **f: progress.append(f), 3)
    answer.feed("The train leaves at")
    assert answer.said() == "The train leaves" and pushed == ["The train leaves "] and progress == []


def test_a_streamed_reply_reaches_the_session_sentence_by_sentence(engine, endpoint) -> None:
    endpoint.scripts.append(
        [
            ("chunk", text_chunk("The answer")),
            ("chunk", text_chunk(" is forty two. Ask")),
            ("sleep", 0.6),
            ("chunk", text_chunk(" me more.")),
        ]
    )
    session = engine.open_session()
    engine.step_once()
    worker = BackgroundWorker(session, OpenAIBackend(OpenAIConfig(endpoint.url, model="m", api_key="k")))
    try:
        worker.request("test")
        wait_for(worker, "done", engine)
    finally:
        worker.close()
    statuses = [e["status"] for e in worker.events]
    assert statuses == ["started", "progress", "progress", "done"]
    first, second = (e for e in worker.events if e["status"] == "progress")
    assert (first["text"], second["text"]) == ("The answer is forty two.", "Ask me more.")
    # streamed: the first sentence was delivered before the endpoint sent the rest
    assert first["time"] < endpoint.sent_at[-1] - 0.3
    # its opening reached the session no later than the sentence's event (what eval background times)
    assert worker.first_text_at[first["task_id"]] <= first["time"]
    assert worker.events[-1]["text"] == "The answer is forty two. Ask me more."
    # what reached the model's background input (minus the tokens the engine has consumed since)
    expected = engine.tokenizer.encode("The answer is forty two. ") + engine.tokenizer.encode("Ask me more. ")
    pending = list(session.background.pending)
    assert pending and expected[-len(pending) :] == pending
    before = len(session.background)
    engine.step_once()
    assert len(session.background) == before - 1  # one token per micro-turn into the model
    request = endpoint.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["stream"] is True
    assert request["auth"] == "Bearer k" and request["model"] == "m"
    assert request["messages"][0]["role"] == "system"
    assert {t["function"]["name"] for t in request["tools"]} >= {"clock", "calculate"}


def test_a_tool_call_round_trip(engine, endpoint) -> None:
    endpoint.scripts += [
        [
            ("chunk", tool_chunk(0, "", call_id="call_1", name="calculate")),
            ("chunk", tool_chunk(0, '{"expression": ')),
            ("chunk", tool_chunk(0, '"6 * 7"}')),
        ],
        [("chunk", text_chunk("It is forty two."))],
    ]
    worker = one_finished_task(engine, endpoint)
    assert [e.get("tool") for e in worker.events if e["status"] == "progress"] == ["calculate", None]
    follow_up = endpoint.requests[1]["messages"]
    assert follow_up[-2]["tool_calls"][0]["function"] == {
        "name": "calculate",
        "arguments": '{"expression": "6 * 7"}',
    }
    assert follow_up[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "6 * 7 = 42"}
    assert worker.events[-1]["text"] == "It is forty two."


def test_a_slow_backend_times_out_and_the_session_goes_on(engine, endpoint) -> None:
    endpoint.scripts.append([("sleep", 3.0), ("chunk", text_chunk("Too late."))])
    session = engine.open_session()
    worker = BackgroundWorker(session, OpenAIBackend(OpenAIConfig(endpoint.url)), WorkerConfig(timeout_s=0.5))
    try:
        worker.request()
        step_s = wait_for(worker, "failed", engine)
    finally:
        worker.close()
    assert [e["status"] for e in worker.events] == ["started", "failed"]
    assert worker.events[-1]["error"] == "timed out"
    assert len(step_s) >= 5 and max(step_s) < 0.5  # the engine kept stepping at its own pace meanwhile
    assert "could not get that." in queued_text(session, engine.tokenizer)


@pytest.mark.parametrize("failure", ["http_error", "refused"])
def test_a_failing_backend_yields_a_failure_event_and_an_apology(engine, endpoint, failure) -> None:
    url = endpoint.url
    if failure == "http_error":
        endpoint.scripts.append([("status", 503)])
    else:
        endpoint.stop()  # nothing listens there any more
    session = engine.open_session()
    worker = BackgroundWorker(session, OpenAIBackend(OpenAIConfig(url)))
    try:
        worker.request()
        wait_for(worker, "failed", engine)
    finally:
        worker.close()
    error = worker.events[-1]["error"]
    assert (
        ("HTTP 503" in error and "overloaded" in error)
        if failure == "http_error"
        else "ConnectError" in error
    )
    assert "could not get that." in queued_text(session, engine.tokenizer)


def test_a_new_task_supersedes_a_running_one(engine, endpoint) -> None:
    endpoint.scripts += [[("sleep", 2.0), ("chunk", text_chunk("Old."))], [("chunk", text_chunk("New."))]]
    session = engine.open_session()
    worker = BackgroundWorker(session, OpenAIBackend(OpenAIConfig(endpoint.url)))
    try:
        worker.request("first")
        wait_for(worker, "started", engine)
        worker.request("second")
        wait_for(worker, "done", engine)
    finally:
        worker.close()
    assert [(e["reason"], e["status"]) for e in worker.events] == [
        ("first", "started"),
        ("first", "cancelled"),
        ("second", "started"),
        ("second", "progress"),
        ("second", "done"),
    ]


def test_client_side_tools_wait_for_the_clients_output() -> None:
    sent: list[tuple[str, str, str]] = []
    bridge = ClientToolBridge(lambda *call: sent.append(call), timeout_s=2.0)
    registry = ToolRegistry()
    registry.add(bridge.tool({"type": "function", "name": "weather", "parameters": {"type": "object"}}))

    async def run() -> str:
        call = asyncio.create_task(registry.call("weather", '{"city": "Paris"}'))
        while not sent:
            await asyncio.sleep(0.01)
        assert not bridge.deliver("call_unknown", "ignored")  # not a background call
        assert bridge.deliver(sent[0][0], "sunny, 21 C")
        return await call

    assert asyncio.run(run()) == "sunny, 21 C"
    assert sent[0][1:] == ("weather", '{"city": "Paris"}')
    bridge.timeout_s = 0.1
    assert "did not answer" in asyncio.run(registry.call("weather", "{}"))
    assert np.isfinite(bridge.timeout_s)


def test_realtime_client_side_function_calling_round_trip(models, endpoint) -> None:
    """A Realtime client declares a tool; the background model calls it through the server
    (response.function_call_arguments.* out, function_call_output back) and its answer streams in."""
    from websockets.sync.client import connect

    from microturn.server.app import ServerConfig, create_app, serve_in_thread

    endpoint.scripts += [
        [("chunk", tool_chunk(0, '{"city": "Paris"}', call_id="call_w", name="weather"))],
        [("chunk", text_chunk("It is sunny in Paris."))],
    ]
    engine = Engine(EngineConfig(), models.model, models.tokenizer, models.vocoder)
    with torch.no_grad():
        engine.model.gate.bias.fill_(-20.0)  # the untrained model stays silent
    app = create_app(engine, ServerConfig(port=0))
    app.state.background_backend = OpenAIBackend(OpenAIConfig(endpoint.url))
    running = serve_in_thread(app, "127.0.0.1", 0, 1 << 20)
    weather = {
        "type": "function",
        "name": "weather",
        "description": "Weather now",
        "parameters": {"type": "object"},
    }
    try:
        with connect(f"ws://127.0.0.1:{running.port}/v1/realtime", proxy=None) as ws:

            def until(predicate) -> list[dict]:
                events, deadline = [], time.monotonic() + 10
                while time.monotonic() < deadline:
                    event = json.loads(ws.recv(timeout=deadline - time.monotonic()))
                    events.append(event)
                    if predicate(event):
                        return events
                raise AssertionError([e["type"] for e in events])

            ws.send(json.dumps({"type": "session.update", "session": {"tools": [weather]}}))
            until(lambda e: e["type"] == "session.updated")
            message = {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Weather?"}],
            }
            ws.send(json.dumps({"type": "conversation.item.create", "item": message}))
            events = until(lambda e: e["type"] == "response.function_call_arguments.done")
            done = events[-1]
            assert (done["name"], done["arguments"]) == ("weather", '{"city": "Paris"}')
            assert any(e["type"] == "response.function_call_arguments.delta" for e in events)
            output = {"type": "function_call_output", "call_id": done["call_id"], "output": "sunny, 21 C"}
            ws.send(json.dumps({"type": "conversation.item.create", "item": output}))
            events = until(lambda e: e["type"] == "microturn.background" and e["status"] == "done")
            background = [e for e in events if e["type"] == "microturn.background"]
            assert [e["status"] for e in background] == ["progress", "done"]
            assert background[-1]["text"] == "It is sunny in Paris."
    finally:
        running.stop()
    second = endpoint.requests[1]["messages"]
    assert second[-1] == {"role": "tool", "tool_call_id": "call_w", "content": "sunny, 21 C"}
    assert any(m["role"] == "user" and "Weather? (typed)" in m["content"] for m in second)
    assert {t["function"]["name"] for t in endpoint.requests[0]["tools"]} >= {"weather", "calculate"}


def test_copied_time_tags_and_repeated_sentences_are_not_delivered(engine, endpoint) -> None:
    endpoint.scripts.append([("chunk", text_chunk("[1.6-2.7 s] It is late. It is late. [3.0-4.0 s] NONE"))])
    worker = one_finished_task(engine, endpoint)
    assert [e.get("text") for e in worker.events if e["status"] == "progress"] == ["It is late."]


def test_whisper_words_feed_the_models_heard_words_memory(engine, models) -> None:
    from microturn.background.conversation import ConversationRecord, Segment

    record = ConversationRecord(transcribe=lambda samples: {"text": " say hello there", "chunks": []})
    session = engine.open_session()
    worker = BackgroundWorker(session, OpenAIBackend(OpenAIConfig("http://127.0.0.1:9/v1")), record=record)
    try:
        for turn in range(5):
            record.observe_input(turn, np.zeros(3200, np.float32))
        record.transcribe_segment(Segment(0.0, 1.0))
        record.wait(timeout=10)
        assert session.take_inputs().heard == models.tokenizer.encode("say hello there")
        assert session.take_inputs().heard is None  # taken once
    finally:
        worker.close()
