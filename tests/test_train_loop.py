"""Training runs end to end: losses per stream fall-able and logged, checkpoints reload, runs reproduce and
resume exactly, bad checkpoints give clear errors, torchrun DDP works on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_dataset import fixture_tokenizer, write_corpus

from microturn.cli import main as cli_main
from microturn.model.checkpoint import (
    CheckpointError,
    init_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from microturn.model.config import get_config
from microturn.model.interaction import InteractionModel, gate_weights
from microturn.train.loop import STREAMS, TrainOptions, config_overrides, train
from microturn.train.plot import plot_run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    tokenizer_path = root / "tokenizer.json"
    fixture_tokenizer().save(tokenizer_path)
    return (
        write_corpus(root / "train", "train", n=3),
        write_corpus(root / "valid", "valid", n=2, seed=10),
        tokenizer_path,
    )


def options(corpora, out: Path, **kw) -> TrainOptions:
    train_dir, valid_dir, tok = corpora
    base = TrainOptions(
        config="tiny",
        data=str(train_dir),
        valid=str(valid_dir),
        out=str(out),
        steps=4,
        batch_size=2,
        min_turns=20,
        max_turns=30,
        lr=3e-3,
        warmup=1,
        log_every=1,
        eval_every=2,
        valid_batches=1,
        checkpoint_every=2,
        tokenizer=str(tok),
    )
    return replace(base, **kw)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


def test_same_seed_same_weights_and_resume_equals_uninterrupted(corpora, tmp_path):
    train(options(corpora, tmp_path / "a"))
    train(options(corpora, tmp_path / "b"))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a run "killed" after the step-2 checkpoint, resumed, ends where the uninterrupted run ended
    train(options(corpora, tmp_path / "c", stop_after=3, checkpoint_every=2))  # step 3 lost with the crash
    assert json.loads((tmp_path / "c" / "checkpoint" / "config.json").read_text())["step"] == 3
    train(options(corpora, tmp_path / "c"), resume=True)
    c = weights(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)
    other_seed = train(options(corpora, tmp_path / "d", seed=1, steps=1))
    assert not torch.equal(load_file(str(other_seed / "model.safetensors"))["gate.weight"], a["gate.weight"])

    records = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4]  # nothing duplicated by the resume
    valid = [r for r in records if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [2, 4] and all(set(STREAMS) <= set(r) for r in valid)
    assert plot_run(tmp_path / "c", tmp_path / "curves.png").stat().st_size > 10_000
    assert all(
        r["micro_turns_per_s"] > 0
        and r["tokens_per_s"] == pytest.approx(2 * r["micro_turns_per_s"], rel=0.01)
        for r in records
        if r["split"] == "train"
    )


def test_losses_fall_when_overfitting_a_batch(corpora):
    from microturn.train.dataset import CropPlan, CropRenderer, CropSampler, read_conversations

    torch.manual_seed(0)
    cfg = get_config("tiny")
    tok = fixture_tokenizer()
    batch = CropSampler(CropRenderer(read_conversations(corpora[0], tok), cfg), CropPlan(30, 30, 2), 0).batch(
        0
    )
    model = InteractionModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for i in range(30):
        losses = model.losses(batch, torch.Generator().manual_seed(i))
        first = first or {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    for k in STREAMS:
        assert losses[k].item() < first[k], (k, first[k], losses[k].item())


def test_gate_weights_mark_proactive_changes_wait_act_starts_pauses_and_other_stops():
    """Proactive speech's starts and stops weigh `proactive_weight`, other stops `stop_weight`, a wait
    act's start `wait_act_weight`, staying quiet through a user's pause `pause_weight`, the conversation's
    other starts (and everything else) 1."""
    speaking = torch.tensor([[0, 1, 1, 0, 0, 1, 1, 0, 0]])
    proactive = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    assert gate_weights(speaking, proactive, 4.0, 3.0).tolist() == [[1, 1, 1, 3, 1, 4, 1, 4, 1]]
    assert gate_weights(speaking, None, 4.0, 3.0).tolist() == [[1, 1, 1, 3, 1, 1, 1, 3, 1]]
    wait_act = torch.tensor([[0, 1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)  # the first start is "hmm,"
    assert gate_weights(speaking, proactive, 4.0, 3.0, wait_act, 2.0).tolist() == [
        [1, 2, 1, 3, 1, 4, 1, 4, 1]
    ]
    pause = torch.tensor([[1, 0, 0, 0, 1, 1, 0, 0, 0]], dtype=torch.bool)  # quiet through the first only
    weights = gate_weights(speaking, proactive, 4.0, 3.0, wait_act, 2.0, pause, 5.0)
    assert weights.tolist() == [[5, 2, 1, 3, 5, 4, 1, 4, 1]]


def test_the_gate_loss_is_the_weighted_mean(corpora):
    """With gate weights, the gate loss is their weighted mean over valid micro-turns; plain conversations
    have no proactive speech, so only a stop weight moves it; the other streams do not move."""
    import torch.nn.functional as F

    from microturn.train.dataset import CropPlan, CropRenderer, CropSampler, read_conversations

    torch.manual_seed(0)
    cfg = get_config("tiny")
    batch = CropSampler(
        CropRenderer(read_conversations(corpora[0], fixture_tokenizer()), cfg), CropPlan(30, 30, 2), 0
    ).batch(0)
    model = InteractionModel(cfg).eval()

    def losses(**weights: float) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return model.losses(batch, torch.Generator().manual_seed(0), **weights)

    plain = losses()
    assert not batch.proactive.any()
    assert losses(proactive_gate_weight=5.0)["gate"].item() == pytest.approx(plain["gate"].item(), rel=1e-6)
    batch.proactive[0] = batch.speaking[0].bool()  # crop 0's speech taken as proactive
    weighted = losses(proactive_gate_weight=5.0, stop_gate_weight=3.0)
    with torch.no_grad():
        p = torch.sigmoid(model.gate(model(batch))[..., 0])
    speaking = batch.speaking.float()
    weight = gate_weights(batch.speaking, batch.proactive, 5.0, 3.0)
    assert (weight[0] == 5.0).any(), "the fixture crop starts or stops the assistant's speech somewhere"
    bce = F.binary_cross_entropy(p, speaking, reduction="none")
    valid = batch.valid
    assert plain["gate"].item() == pytest.approx(bce[valid].mean().item(), rel=1e-4)
    expected = (bce * weight)[valid].sum() / weight[valid].sum()
    assert weighted["gate"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert weighted["gate"].item() != pytest.approx(plain["gate"].item(), rel=1e-4)
    assert weighted["text"].item() == pytest.approx(plain["text"].item())


def test_checkpoint_loads_and_bad_checkpoints_fail_clearly(tmp_path):
    tok = fixture_tokenizer()
    torch.manual_seed(0)
    model = InteractionModel(get_config("tiny"))
    ckpt = save_checkpoint(tmp_path / "ck", model, tok, {"step": 5})
    loaded, tok2, config = load_checkpoint(ckpt)
    assert config["step"] == 5 and tok2.encode("thanks a lot") == tok.encode("thanks a lot")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(CheckpointError, match="another model config"):
        load_checkpoint(ckpt, expect=get_config("tiny", d_model=96))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    # weights of another config under this config.json
    other = save_checkpoint(tmp_path / "other", InteractionModel(get_config("tiny", n_layers=3)), tok)
    cfg_json = json.loads((other / "config.json").read_text())
    cfg_json["model"]["n_layers"] = 2
    (other / "config.json").write_text(json.dumps(cfg_json))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(other)
    (ckpt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: file not found"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(ckpt)


def test_trainable_prefixes_train_those_heads_and_freeze_the_rest(corpora, tmp_path):
    first = train(options(corpora, tmp_path / "first", steps=1))
    tuned = train(options(corpora, tmp_path / "tuned", steps=2, init=str(first), trainable="mel_head"))
    start, after = load_file(str(first / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    for name, value in after.items():
        assert torch.equal(value, start[name]) != name.startswith("mel_head."), name
    with pytest.raises(ValueError, match="no parameter name starts with"):
        train(options(corpora, tmp_path / "none", steps=1, trainable="no_such_head"))


def test_init_copies_what_fits_and_names_what_starts_fresh(tmp_path):
    """A fine-tune may grow the model (a second flow block): the rest is copied, the new part is named."""
    tok = fixture_tokenizer()
    torch.manual_seed(0)
    small_head = InteractionModel(get_config("tiny", flow_layers=1))
    ckpt = save_checkpoint(tmp_path / "ck", small_head, tok)
    grown = InteractionModel(get_config("tiny", flow_layers=2))
    tok2, fresh = init_from_checkpoint(grown, ckpt)
    assert fresh and all(name.startswith("mel_head.blocks.1.") for name in fresh)
    assert torch.equal(grown.blocks[0].attn.qkv.weight, small_head.blocks[0].attn.qkv.weight)
    # the grown block starts as the identity: the head renders what the checkpoint's rendered
    x, t = torch.randn(2, 20, grown.cfg.n_mels), torch.rand(2)
    cond = torch.randn(2, 20, grown.cfg.flow_dim)
    assert torch.allclose(
        grown.mel_head.velocity(x, t, cond), small_head.mel_head.velocity(x, t, cond), atol=1e-6
    )
    assert not torch.allclose(
        InteractionModel(get_config("tiny", flow_layers=2)).mel_head.velocity(x, t, cond),
        small_head.mel_head.velocity(x, t, cond),
    )
    assert tok2.encode("thanks a lot") == tok.encode("thanks a lot") and grown.token_phones is not None
    with pytest.raises(CheckpointError, match="no transformer block fits"):
        init_from_checkpoint(InteractionModel(get_config("tiny", d_model=96)), ckpt)
    # the other way, a grown checkpoint into the smaller config, would drop trained blocks: refused
    grown_ckpt = save_checkpoint(tmp_path / "grown", grown, tok)
    with pytest.raises(CheckpointError, match="no place for 6 trained tensors.*model-set"):
        init_from_checkpoint(InteractionModel(get_config("tiny", flow_layers=1)), grown_ckpt)


def test_model_set_grows_the_named_config(corpora, tmp_path):
    first = train(options(corpora, tmp_path / "first", steps=1))
    grown = train(
        options(corpora, tmp_path / "grown", steps=1, init=str(first), model_set=("flow_layers=3",))
    )
    assert json.loads((grown / "config.json").read_text())["model"]["flow_layers"] == 3
    assert config_overrides(["gate_start_threshold=0.8", "video_motion=true", "gate_start_window=3"]) == {
        "gate_start_threshold": 0.8,
        "video_motion": True,
        "gate_start_window": 3,
    }
    for bad in ("flow_layers", "no_such_field=1", "flow_layers=four", "video_motion=maybe"):
        with pytest.raises(ValueError, match="--model-set"):
            config_overrides([bad])


def test_cli_prints_params_and_rejects_bad_input(corpora, tmp_path, capsys):
    assert cli_main(["train", "--config", "tiny", "--print-params"]) == 0
    n = InteractionModel(get_config("tiny")).num_params()
    assert f"{n:,}" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        cli_main(
            [
                "train",
                "--config",
                "tiny",
                "--data",
                str(empty),
                "--out",
                str(tmp_path / "r"),
                "--tokenizer",
                str(corpora[2]),
            ]
        )
        == 2
    )
    assert "manifest.jsonl" in capsys.readouterr().err


def test_torchrun_ddp_two_processes_on_cpu(corpora, tmp_path):
    train_dir, valid_dir, tok = corpora
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "microturn.train",
        "--config",
        "tiny",
        "--data",
        str(train_dir),
        "--valid",
        str(valid_dir),
        "--out",
        str(tmp_path / "ddp"),
        "--steps",
        "3",
        "--batch-size",
        "1",
        "--min-turns",
        "20",
        "--max-turns",
        "25",
        "--log-every",
        "1",
        "--eval-every",
        "3",
        "--valid-batches",
        "1",
        "--tokenizer",
        str(tok),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "world size 2" in proc.stdout
    model, _, config = load_checkpoint(tmp_path / "ddp" / "checkpoint")
    assert config["step"] == 3 and config["world_size"] == 2


def test_init_fine_tunes_from_a_checkpoint_on_a_corpus_mixture(corpora, tmp_path):
    first = train(options(corpora, tmp_path / "first", steps=2))
    train_dir, valid_dir, _ = corpora
    mixture = f"{train_dir},{valid_dir}"
    tuned = train(options(corpora, tmp_path / "tuned", steps=1, init=str(first), data=mixture))
    saved = json.loads((tuned / "config.json").read_text())
    assert saved["step"] == 1  # a new schedule, not a resume
    start, after = weights(tmp_path / "first"), load_file(str(tuned / "model.safetensors"))
    fresh = load_file(str(train(options(corpora, tmp_path / "fresh", steps=1, seed=5)) / "model.safetensors"))
    # one step from the checkpoint lands near it, nearer than one step from another initialisation
    moved = (after["gate.weight"] - start["gate.weight"]).norm()
    assert moved < (fresh["gate.weight"] - start["gate.weight"]).norm()
