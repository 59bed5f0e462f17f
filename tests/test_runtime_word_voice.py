"""The word voice: the model's words said with the corpus voice's own units, cut the moment it stops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from microturn.data.tts import TtsCache
from microturn.eval.fdbench import speech_errors
from microturn.eval.transcribe import transcribe
from microturn.model.tokenizer import PAD, TextTokenizer
from microturn.runtime.checkpoint import default_checkpoint_path, load_runtime
from microturn.runtime.cli import EXAMPLES
from microturn.runtime.engine import EngineConfig
from microturn.runtime.model_system import ModelSystem
from microturn.runtime.simulate import read_input
from microturn.runtime.word_voice import WordVoice, WordVoiceState

WINDOW = 3200


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.load(default_checkpoint_path() / "tokenizer.json")


@pytest.fixture(scope="module")
def voice(tokenizer: TextTokenizer, tmp_path_factory: pytest.TempPathFactory) -> WordVoice:
    return WordVoice(tokenizer, WINDOW, TtsCache(tmp_path_factory.mktemp("units")))


def play(voice: WordVoice, state: WordVoiceState, windows: list[tuple[list[int], bool]]) -> np.ndarray:
    return np.concatenate([voice.speak(state, tokens, speaking) for tokens, speaking in windows])


def test_tokens_group_into_the_words_they_spell(voice: WordVoice, tokenizer: TextTokenizer) -> None:
    tokens = tokenizer.encode("well, i think photosynthesis.") + [PAD, PAD]
    assert len(tokens) > 6  # a word of several tokens is in there
    assert voice.words(tokens) == ["well,", "i", "think", "photosynthesis."]
    # a word continued from the last window is said as a piece; pieces with nothing to say are dropped
    assert voice.words(tokens[5:] + tokenizer.encode("we")) == ["osynthesis.", "we"]
    assert voice.words(tokenizer.encode("... !")) == []


def test_a_word_plays_from_the_window_start_until_the_model_stops(
    voice: WordVoice, tokenizer: TextTokenizer
) -> None:
    unit = voice.unit("wonderful")
    assert len(unit) > 2 * WINDOW  # the word outlasts two windows
    state = WordVoiceState()
    said = play(voice, state, [(tokenizer.encode("wonderful"), True), ([], True)])
    np.testing.assert_array_equal(said, unit[: 2 * WINDOW])
    assert len(state.queue) == len(unit) - 2 * WINDOW
    # the model stops (a yield, an interruption): the rest of the word is dropped, not played later
    assert not play(voice, state, [([], False), ([], True)]).any()
    assert len(state.queue) == 0


def test_words_follow_each_other_after_the_corpus_gaps(voice: WordVoice, tokenizer: TextTokenizer) -> None:
    def second_word_onset(text: str) -> int:
        state = WordVoiceState()
        said = play(voice, state, [(tokenizer.encode(text), True)] + [([], True)] * 4)
        first = len(voice.unit(text.split()[0]))
        return first + int(np.flatnonzero(said[first:])[0])

    plain, comma, stop = (second_word_onset(t) for t in ("yes we", "yes, we", "yes. we"))
    gaps = [
        plain - len(voice.unit("yes")),
        comma - len(voice.unit("yes,")),
        stop - len(voice.unit("yes.")),
    ]
    assert 0 < gaps[0] < gaps[1] < gaps[2] < 0.3 * 16000


def test_the_log_mel_the_model_hears_is_the_audio_it_played(
    voice: WordVoice, tokenizer: TextTokenizer
) -> None:
    import torch

    from microturn import audio

    states = [WordVoiceState(), WordVoiceState()]
    text = torch.zeros(2, 4, dtype=torch.long)
    ids = tokenizer.encode("hello")
    text[0, : len(ids)] = torch.tensor(ids)
    wave, mel = voice.say(states, text, torch.tensor([True, False]))
    assert wave.shape == (2, WINDOW) and mel.shape == (2, WINDOW // audio.HOP, audio.N_MELS)
    expected = audio.log_mel(wave[:1]).clamp(audio.LOG_MEL_MIN, audio.LOG_MEL_MAX)
    torch.testing.assert_close(mel[:1], expected, atol=1e-4, rtol=0)
    assert not wave[1].any() and bool((mel[1] == mel[1].min()).all())  # silent row: the log floor


def test_whisper_hears_what_the_shipped_model_says() -> None:
    """End to end: the embedded default hears the bundled example conversation micro-turn by micro-turn
    (stepped by hand, so the machine's load cannot delay its output), and Whisper tiny.en on what it
    played hears the words it meant to say."""
    example = EXAMPLES / "conversation.wav"
    source = read_input(example, example.with_name("conversation.background.json"))
    models = load_runtime(None)
    system = ModelSystem(models.model, models.tokenizer, models.vocoder, EngineConfig(voice="words"))
    system.reset(source.background)
    turns = -(-len(source.samples) // WINDOW) + 5  # and a second after, for the last word
    padded = np.pad(source.samples, (0, turns * WINDOW - len(source.samples)))
    played, said = [], []
    for t in range(turns):
        step = system.step(padded[t * WINDOW : (t + 1) * WINDOW])
        played.append(step.audio)
        said += step.words
    heard = transcribe(np.concatenate(played))["text"]
    assert len(said) >= 5, said
    assert speech_errors(said, [heard])["speech_wer"] <= 0.35, (said, heard)


def test_prefetch_fills_the_unit_cache_with_the_common_words(
    tokenizer: TextTokenizer, tmp_path: Path
) -> None:
    cache = TtsCache(tmp_path / "units")
    voice = WordVoice(tokenizer, WINDOW, cache)
    voice.prefetch(words=12).join(timeout=60)
    assert len(list((tmp_path / "units").rglob("*.npy"))) == 12
    hits = cache.hits
    voice.unit.cache_clear()
    voice.unit("the")  # among the first word tokens: read from disk, not synthesised
    assert cache.hits == hits + 1
