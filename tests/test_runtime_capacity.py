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
from microturn.model.layers import Attention, ring_step_bias, rope_tables
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


def test_ring_step_attention_equals_sdpa_over_each_window() -> None:
    """Two new tokens per session (the previous out token and the in token) attend over the ring as it was
    plus each other, within the window: young sessions (only the filled prefix is read), a fresh one (its
    out token is a placeholder), and full rings whose writes evict keys the first new token still sees."""
    cfg = get_config("tiny")
    torch.manual_seed(1)
    attn = Attention(cfg).eval()
    h, w, hd = cfg.n_heads, cfg.window, cfg.head_dim
    ages = [0, 5, 17, w, w + 7]  # tokens already in each session's ring
    b = len(ages)
    cache_k, cache_v = torch.randn(b, h, w, hd), torch.randn(b, h, hd, w)  # values stored transposed
    slot_pos = torch.full((b, w), -1)
    for r, n in enumerate(ages):
        held = torch.arange(max(0, n - w), n)
        slot_pos[r, held % w] = held
    # [B, 2]: the out token, then the in token, after the ring's tokens (row 0: a placeholder at -1, then 0)
    positions = torch.tensor([-1] + ages[1:])[:, None] + torch.arange(2)
    x = torch.randn(b, 2, cfg.d_model)
    rope = rope_tables(positions, hd, cfg.rope_base)
    bias = ring_step_bias(slot_pos, positions, w)
    assert bias[0].shape[-1] == w  # full rings are read whole
    young = ring_step_bias(slot_pos[1:3], positions[1:3], w)[0]
    assert young.shape[-1] == 17  # only the filled prefix is read
    with torch.no_grad():
        ref_k, ref_v = cache_k.clone(), cache_v.clone()
        got = attn.step(x, rope, positions % w, cache_k, cache_v, bias)
        q, k, v = attn._qkv(x, rope)
        want = torch.zeros(b, 2, cfg.d_model)
        for r in range(b):
            keys = {
                int(slot_pos[r, s]): (ref_k[r, :, s], ref_v[r, :, :, s])
                for s in range(w)
                if slot_pos[r, s] >= 0
            }
            for i in range(2):
                if positions[r, i] >= 0:
                    keys[int(positions[r, i])] = (k[r, :, i], v[r, :, i])
            for i in range(2):
                p = int(positions[r, i])
                seen = [j for j in sorted(keys) if p - w < j <= p] or [p]  # a placeholder sees itself
                kk = torch.stack([keys.get(j, (k[r, :, i], v[r, :, i]))[0] for j in seen], 1)
                vv = torch.stack([keys.get(j, (k[r, :, i], v[r, :, i]))[1] for j in seen], 1)
                y = torch.nn.functional.scaled_dot_product_attention(q[r, :, i : i + 1], kk, vv)
                want[r, i] = attn.proj(y.transpose(0, 1).reshape(-1))
        rows = torch.arange(b)[:, None]
        ref_k[rows, :, positions % w] = k.transpose(1, 2)
        ref_v[rows, :, :, positions % w] = v.transpose(1, 2)
    torch.testing.assert_close(got[1:], want[1:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[0, 1], want[0, 1], atol=1e-6, rtol=1e-5)  # row 0's out token: placeholder
    torch.testing.assert_close(cache_k, ref_k)
    torch.testing.assert_close(cache_v, ref_v)


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
