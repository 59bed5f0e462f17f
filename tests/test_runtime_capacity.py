"""What the capacity work relies on: attention over the filled part of the KV ring equals attention over the
whole ring, large batches run on more threads with the same outputs, and bench measures full rings."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from microturn.model.checkpoint import save_checkpoint
from microturn.model.config import get_config
from microturn.model.interaction import InteractionModel
from microturn.model.layers import Attention, ring_mask_bias, rope_tables
from microturn.model.tokenizer import TextTokenizer
from microturn.runtime.bench import full_ring, new_engine
from microturn.runtime.checkpoint import load_runtime
from microturn.runtime.engine import Engine, EngineConfig
from microturn.runtime.vocoder import Vocoder, VocoderConfig, save_vocoder

CHUNK = 3200


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    cfg = get_config("tiny")
    tokenizer = TextTokenizer.train([f"word{i} and more words {i % 7}" for i in range(300)], cfg.vocab_size)
    path = tmp_path_factory.mktemp("capacity") / "tiny"
    save_checkpoint(path, InteractionModel(cfg), tokenizer)
    save_vocoder(Vocoder(VocoderConfig(dim=32, hidden=64, blocks=2)), path / "vocoder")
    torch.set_num_threads(1)
    return load_runtime(path)


def test_ring_prefix_attention_equals_full_ring_sdpa() -> None:
    cfg = get_config("tiny")
    torch.manual_seed(1)
    attn = Attention(cfg).eval()
    b, h, w, hd = 3, cfg.n_heads, cfg.window, cfg.head_dim
    cache_k, cache_v = torch.randn(b, h, w, hd), torch.randn(b, h, w, hd)
    slot_pos = torch.full((b, w), -1)
    filled = [5, 17, 9]  # young sessions: slots 0..n-1 hold positions 0..n-1
    for r, n in enumerate(filled):
        slot_pos[r, :n] = torch.arange(n)
    positions = torch.tensor(filled) - 1
    x = torch.randn(b, 1, cfg.d_model)
    rope = rope_tables(positions[:, None], hd, cfg.rope_base)
    bias = ring_mask_bias(slot_pos)
    assert bias.shape[-1] == max(filled)  # only the filled prefix is read
    with torch.no_grad():
        ref_k, ref_v = cache_k.clone(), cache_v.clone()
        got = attn.step(x, rope, positions % w, cache_k, cache_v, bias)
        q, k, v = attn._qkv(x, rope)
        rows = torch.arange(b)
        ref_k[rows, :, positions % w], ref_v[rows, :, positions % w] = k[:, :, 0], v[:, :, 0]
        mask = (slot_pos >= 0)[:, None, None, :]
        y = torch.nn.functional.scaled_dot_product_attention(q, ref_k, ref_v, attn_mask=mask)
        want = attn.proj(y.transpose(1, 2).reshape(b, 1, -1))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cache_k, ref_k)


def run_engine(models, sessions: int, turns: int, **config) -> tuple[list[np.ndarray], list[int]]:
    engine = Engine(EngineConfig(**config), models.model, models.tokenizer, models.vocoder)
    opened = [engine.open_session(seed=i) for i in range(sessions)]
    rng = np.random.default_rng(0)
    audio, threads = [], []
    for _ in range(turns):
        for s in opened:
            s.push_audio((rng.standard_normal(CHUNK) * 0.1).astype(np.float32), 16000)
        outs = engine.step_once()
        threads.append(torch.get_num_threads())
        audio.append(np.stack([outs[s].audio_16k for s in opened]))
    return audio, threads


def test_large_batches_use_more_threads_with_the_same_output(models) -> None:
    machine = min(2, os.cpu_count() or 1)
    one, one_threads = run_engine(models, 4, 6, large_batch=100)
    many, many_threads = run_engine(models, 4, 6, large_batch=4, large_batch_threads=2)
    assert set(one_threads) == {1} and set(many_threads) == {machine}
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    _, small_threads = run_engine(models, 3, 2, large_batch=4, large_batch_threads=2)
    assert set(small_threads) == {1}  # below `large_batch` the engine goes back to `threads`
    torch.set_num_threads(1)


def test_bench_engines_start_from_a_full_ring(models) -> None:
    ring = full_ring(models)
    assert bool((ring.slot_pos >= 0).all())
    engine, feeder = new_engine(models, 3, ring=ring)
    state = engine.state.model
    assert bool((state.slot_pos >= 0).all()) and bool((state.turn == ring.turn).all())
    feeder.feed()
    engine.step_once()  # steps on from the copied rings
    assert bool((state.turn == ring.turn + 1).all())
