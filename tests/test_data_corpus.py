"""The synthetic corpus: exact labels, events that agree with the audio, determinism, every phenomenon,
and clear errors for bad input. One ~2.5 minute corpus is rendered per session (units cached under the
pytest cache, so later sessions re-assemble it in seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from microturn.cli import main
from microturn.data.build import synth_corpus
from microturn.data.corpus import EVENT_TYPES, TIMELINE, load_conversation, load_corpus, load_manifest
from microturn.data.delegate import delegate_events
from microturn.data.stats import corpus_stats
from microturn.data.synth import INTERRUPTION_OPENERS, LATE_CONTENT_S
from microturn.data.tts import TtsCache
from microturn.data.voices import Voice

SR = 16_000
# 2.5 planned minutes (3.8 rendered) of seed 13 hold every event type (test_every_phenomenon_occurs).
SEED, MINUTES = 13, 2.5


@pytest.fixture(scope="session")
def tts_dir(request) -> Path:
    return Path(request.config.cache.mkdir("microturn_tts"))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory, tts_dir) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "c"
    synth_corpus(out, MINUTES, SEED, "train", cache_dir=tts_dir, progress=False)
    return out


@pytest.fixture(scope="session")
def convs(corpus_dir):
    return load_corpus(corpus_dir)


def _span(audio: np.ndarray, start: float, end: float) -> np.ndarray:
    return audio[int(round(start * SR)) : int(round(end * SR))]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt((x.astype(np.float64) ** 2).mean())) if len(x) else 0.0


def test_words_are_exact_labels_of_their_channel(convs, tts_dir):
    cache = TtsCache(tts_dir)
    user_corr = []
    for conv in convs:
        assert conv.words, conv.id
        for w in conv.words:
            utt = conv.utterances[w.utterance]
            assert (utt.speaker, utt.start <= w.start, w.end <= utt.end) == (w.speaker, True, True)
            channel = conv.assistant if w.speaker == "assistant" else conv.user
            seg = _span(channel, w.start, w.end)
            assert _rms(seg) > 1e-3, (conv.id, w)  # there is sound where the word is
            if w.speaker == "assistant":
                # the word lives on the assistant channel only, never the user's speech on it
                unit = cache.unit(Voice.from_id(utt.voice), w.text)
                if w.truncated:
                    assert len(seg) < len(unit)
                    unit = unit[: len(seg)]
                assert len(seg) == len(unit), (conv.id, w)
                # assistant.wav is clean: the segment is the cached unit (up to PCM16 rounding, fades)
                n = len(seg) - int(0.01 * SR) if w.truncated else len(seg)
                assert np.corrcoef(unit[:n], seg[:n])[0, 1] > 0.999, (conv.id, w)
            elif w.speaker == "user":
                unit = cache.unit(Voice.from_id(utt.voice), w.text)
                assert len(seg) == len(unit), (conv.id, w)
                user_corr.append(np.corrcoef(unit, seg)[0, 1])
    # the user channel adds noise, echo and other talk, but each user word is still its unit
    assert np.median(user_corr) > 0.9 and min(user_corr) > 0.2


def test_assistant_words_carry_the_voices_phone_timing(convs):
    """piper's own phone ends: rising, within the word, the last near its end (a cut word's at the cut)."""
    timed = [(c, w) for c in convs for w in c.words if w.speaker == "assistant"]
    assert timed and all(w.phones for _, w in timed)
    for conv, w in timed:
        ends = [end for _, end in w.phones]
        assert ends == sorted(ends) and 0.0 < ends[-1] <= w.end - w.start + 1e-3, (conv.id, w)
        if not w.truncated:
            assert ends[-1] > w.end - w.start - 0.05, (conv.id, w)  # the end's decay may outlast it
    # espeak-ng users give no timing
    assert all(
        w.phones is None
        for c in convs
        for w in c.words
        if w.speaker == "user" and not c.utterances[w.utterance].voice.startswith("piper")
    )


def test_channels_are_silent_where_no_one_speaks(convs):
    for conv in convs:
        spoken = np.zeros(len(conv.assistant), bool)
        for w in conv.words:
            if w.speaker == "assistant":
                spoken[int(round(w.start * SR)) : int(round(w.end * SR))] = True
        assert np.abs(conv.assistant[~spoken]).max() < 1e-3, conv.id


def test_events_agree_with_words(convs):
    checked = {t: 0 for t in ("pause", "turn_end", "interruption", "backchannel", "background_text")}
    for conv in convs:
        turns = [u for u in conv.utterances if u.kind == "turn"]
        for e in conv.events:
            if e.type == "pause":
                before = [w for w in conv.words if w.speaker == e.speaker and abs(w.end - e.start) < 1e-4]
                after = [w for w in conv.words if w.speaker == e.speaker and abs(w.start - e.end) < 1e-4]
                assert before and after, (conv.id, e)
                assert conv.utterances[before[0].utterance].kind == "turn"
                assert 0.3 - 1e-4 <= e.end - e.start <= 1.5 + 1e-4
                inside = [
                    w
                    for w in conv.words
                    if w.speaker == e.speaker
                    and w.start < e.end
                    and w.end > e.start
                    and w not in before + after
                ]
                assert not inside, (conv.id, e)
                if e.speaker == "assistant":
                    assert _rms(_span(conv.assistant, e.start, e.end)) < 1e-4
                checked["pause"] += 1
            elif e.type == "turn_end" and e.detail.get("gap", -1) > 0:
                talking = [
                    w
                    for w in conv.words
                    if w.speaker in ("user", "assistant")
                    and conv.utterances[w.utterance].kind == "turn"
                    and w.start < e.end - 1e-4
                    and w.end > e.start + 1e-4
                ]
                assert not talking, (conv.id, e)
                checked["turn_end"] += 1
            elif e.type == "interruption":
                cut = e.detail["assistant_stop"]
                assert 0.2 - 1e-4 <= cut - e.start <= 0.4 + 1e-4
                stopped = [u for u in turns if u.speaker == "assistant" and u.truncated and u.start < e.start]
                assert stopped and stopped[-1].end <= cut + 1e-4
                later = [u.start for u in conv.utterances if u.speaker == "assistant" and u.start > cut]
                assert _rms(_span(conv.assistant, cut + 0.011, min(later, default=conv.duration_s))) < 1e-4
                checked["interruption"] += 1
            elif e.type == "backchannel":
                talker = "user" if e.speaker == "assistant" else "assistant"
                assert any(u.speaker == talker and u.start <= e.start <= u.end + 0.4 for u in turns), (
                    conv.id,
                    e,
                )
                checked["backchannel"] += 1
        for bg in conv.background:
            utt = conv.utterances[bg.utterance]
            assert utt.speaker == "assistant" and utt.kind == "turn"
            assert utt.start >= bg.time, (conv.id, bg)  # never voiced before its content arrived
            assert utt.text.split() == bg.text.split()[: len(utt.text.split())]
            checked["background_text"] += 1
    assert all(checked.values()), checked


def test_every_phenomenon_occurs(corpus_dir):
    stats = corpus_stats(corpus_dir)
    missing = [t for t in EVENT_TYPES if stats["phenomena"].get(t, 0) == 0]
    assert not missing, stats["phenomena"]
    kinds = {u.kind for conv in load_corpus(corpus_dir) for u in conv.utterances}
    assert kinds == {"turn", "backchannel", "side_speech", "background_speech", "filler"}
    assert 0.1 <= stats["gap_s"]["p10"] < stats["gap_s"]["p50"]
    assert 0.3 <= stats["pause_s"]["p10"] <= stats["pause_s"]["p90"] <= 1.5


def test_same_seed_gives_identical_bytes_and_resumes(corpus_dir, tmp_path, tts_dir):
    copy = tmp_path / "again"
    synth_corpus(copy, MINUTES, SEED, "train", cache_dir=tts_dir, progress=False)
    files = sorted(p.relative_to(corpus_dir) for p in corpus_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "corpus.json":  # names the cache folder only
            assert (corpus_dir / rel).read_bytes() == (copy / rel).read_bytes(), rel
    # an interrupted run: one conversation without its timeline, the manifest gone
    entries = load_manifest(copy)
    broken = copy / entries[-1]["path"]
    (broken / TIMELINE).unlink()
    (copy / "manifest.jsonl").unlink()
    kept = copy / entries[0]["path"] / "user.wav"
    mtime = kept.stat().st_mtime_ns
    summary = synth_corpus(copy, MINUTES, SEED, "train", cache_dir=tts_dir, progress=False)
    assert summary["rendered_now"] == 1 and kept.stat().st_mtime_ns == mtime
    assert (copy / "manifest.jsonl").read_bytes() == (corpus_dir / "manifest.jsonl").read_bytes()
    assert (broken / TIMELINE).read_bytes() == (corpus_dir / entries[-1]["path"] / TIMELINE).read_bytes()
    with pytest.raises(ValueError, match="seed"):
        synth_corpus(copy, MINUTES, SEED + 1, "train", cache_dir=tts_dir, progress=False)


def test_renderer_fields_can_be_set_per_corpus(corpus_dir, tmp_path, tts_dir, capsys):
    def wait_acts(folder: Path) -> int:
        convs = load_corpus(folder)
        return sum(u.speaker == "assistant" and u.kind == "filler" for c in convs for u in c.utterances)

    out = tmp_path / "eager"
    args = ["data", "synth", "--out", str(out), "--minutes", str(MINUTES), "--seed", str(SEED)]
    args += ["--cache", str(tts_dir), "--synth", "wait_act_p=1.0", "--synth", "wait_act_after_s=0.05"]
    assert main(args) == 0
    assert json.loads((out / "corpus.json").read_text())["synth"] == {
        "wait_act_p": 1.0,
        "wait_act_after_s": 0.05,
    }
    assert wait_acts(out) > 2 * max(1, wait_acts(corpus_dir))  # fills every wait longer than 50 ms
    with pytest.raises(ValueError, match="synth"):  # the folder holds a corpus made otherwise
        synth_corpus(out, MINUTES, SEED, "train", cache_dir=tts_dir, progress=False)
    for bad, message in (("wait_act_p=often", "wait_act_p takes a float"), ("speed=2", "KEY=VALUE")):
        assert main(["data", "synth", "--out", str(tmp_path / "x"), "--minutes", "1", "--synth", bad]) == 2
        assert message in capsys.readouterr().err


def test_late_content_comes_seconds_after_the_turn_end_and_a_wait_act_fills_it(corpus_dir, tmp_path, tts_dir):
    out = tmp_path / "late"
    settings = {"late_content_p": 1.0, "wait_act_p": 1.0, "wait_act_after_s": 0.15}
    synth_corpus(out, MINUTES, SEED, "train", cache_dir=tts_dir, progress=False, overrides=settings)
    leads = [e.detail["lead_s"] for c in load_corpus(out) for e in delegate_events(c)]
    before = [e.detail["lead_s"] for c in load_corpus(corpus_dir) for e in delegate_events(c)]
    # every answer's text is late now, save those that came before the user finished (lead 0)
    assert leads and all(lead == 0.0 or LATE_CONTENT_S[0] <= lead <= LATE_CONTENT_S[1] for lead in leads)
    assert sum(lead > 0 for lead in leads) >= len(leads) // 2 and max(before) < LATE_CONTENT_S[0]
    acks = [e.detail["ack"] for c in load_corpus(out) for e in delegate_events(c) if e.detail["lead_s"] > 0]
    assert all(ack is not None for ack in acks)  # the assistant says "hmm," or "one moment," meanwhile


@pytest.fixture
def one_conv(corpus_dir, tmp_path) -> Path:
    folder = tmp_path / "conv"
    shutil.copytree(corpus_dir / load_manifest(corpus_dir)[0]["path"], folder)
    return folder


def test_an_interruption_opening_with_a_backchannel_word_is_yielded_to_after_the_next_word(tmp_path, tts_dir):
    out = tmp_path / "openers"
    settings = {"interruption_opener_p": 1.0, "user_backchannel_p": 0.3}
    synth_corpus(
        out, 1.5, SEED, "train", "interruption", cache_dir=tts_dir, progress=False, overrides=settings
    )
    n = 0
    for conv in load_corpus(out):
        for e in (e for e in conv.events if e.type == "interruption"):
            opener = next(o for o in INTERRUPTION_OPENERS if e.text.startswith(o + " "))
            user = [w for w in conv.words if w.speaker == "user" and w.start >= e.start - 1e-4]
            after = user[len(opener.split())]  # the first word after "yeah,"
            stop = e.detail["assistant_stop"]
            assert 0.2 - 1e-4 <= stop - after.start <= 0.4 + 1e-4, (conv.id, e)
            # it talks through the opener (unless its turn had ended) and is silent from the stop on
            heard = _span(conv.assistant, e.start, after.start)
            ended = [u for u in conv.utterances if u.speaker == "assistant" and u.start < e.start][-1]
            assert ended.end < after.start or _rms(heard) > 1e-3, (conv.id, e)
            later = [u.start for u in conv.utterances if u.speaker == "assistant" and u.start > stop]
            assert _rms(_span(conv.assistant, stop + 0.011, min(later, default=conv.duration_s))) < 1e-4
            # no backchannel of the user's overlaps its own interruption
            assert not [
                u
                for u in conv.utterances
                if u.kind == "backchannel" and u.speaker == "user" and e.start <= u.start and u.start <= e.end
            ], (conv.id, e)
            n += 1
    assert n >= 2


def test_missing_corrupt_or_wrong_rate_wav_is_named(one_conv):
    (one_conv / "assistant.wav").unlink()
    with pytest.raises(ValueError, match=r"assistant\.wav: file not found"):
        load_conversation(one_conv)
    (one_conv / "assistant.wav").write_bytes(b"RIFF\x00\x00not a wav at all")
    with pytest.raises(ValueError, match=r"assistant\.wav: not a readable audio file"):
        load_conversation(one_conv)
    sf.write(one_conv / "assistant.wav", np.zeros(22050, np.float32), 22050, subtype="PCM_16")
    with pytest.raises(ValueError, match=r"assistant\.wav: sample rate 22050 Hz, expected 16000"):
        load_conversation(one_conv)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: "{not json", "not valid JSON"),
        (lambda t: json.dumps({"id": "x"}), "'words' list"),
        (lambda t: json.dumps({**t, "words": [{**t["words"][0], "end": 1e6}]}), r"words\[0\]: span"),
        (lambda t: json.dumps({**t, "words": [{**t["words"][0], "speaker": "bob"}]}), "speaker 'bob'"),
        (lambda t: json.dumps({**t, "events": [{"type": "party", "start": 0, "end": 1}]}), "unknown event"),
        (lambda t: json.dumps({**t, "sample_rate": 8000}), "sample_rate 8000"),
    ],
)
def test_malformed_timeline_is_named(one_conv, edit, message):
    path = one_conv / TIMELINE
    path.write_text(edit(json.loads(path.read_text())))
    with pytest.raises(ValueError, match=message) as info:
        load_conversation(one_conv)
    assert str(path) in str(info.value)


def test_real_recording_as_one_stereo_wav(one_conv):
    conv = load_conversation(one_conv)
    stereo = np.stack([conv.user, conv.assistant], axis=1)
    for name in ("user.wav", "assistant.wav"):
        (one_conv / name).unlink()
    sf.write(one_conv / "conversation.wav", stereo, SR, subtype="PCM_16")
    words = [{"speaker": w.speaker, "text": w.text, "start": w.start, "end": w.end} for w in conv.words]
    (one_conv / TIMELINE).write_text(json.dumps({"words": words}))
    real = load_conversation(one_conv)
    assert real.source == "real" and len(real.words) == len(conv.words)
    assert np.allclose(real.assistant, conv.assistant, atol=1e-4) and np.allclose(
        real.user, conv.user, atol=1e-4
    )
    sf.write(one_conv / "conversation.wav", stereo[:, :1], SR, subtype="PCM_16")
    with pytest.raises(ValueError, match=r"conversation\.wav: expected 2 channels"):
        load_conversation(one_conv)


def test_stats_cli_prints_json_and_names_missing_corpus(corpus_dir, tmp_path, capsys):
    assert main(["data", "stats", str(corpus_dir)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["conversations"] == len(load_manifest(corpus_dir)) and stats["hours"] > 0.03
    assert main(["data", "stats", str(tmp_path / "nowhere")]) == 2
    assert "manifest.jsonl: file not found" in capsys.readouterr().err
