"""The mel head's per-frame phones: the same condition from corpus word times (training) and from the
streaming schedule of emitted tokens, and the streaming step really uses it."""

from __future__ import annotations

import torch

from microturn.model.config import FLOOR_STATES, get_config
from microturn.model.interaction import InteractionModel
from microturn.model.speech import (
    BOUNDARY,
    CONTEXT,
    NONE,
    OTHER,
    SpeechSchedule,
    TokenPhones,
    frame_condition,
    schedule_condition,
    spoken_phones,
    word_spans,
)
from microturn.model.streaming import StepInputs
from microturn.model.tokenizer import TextTokenizer

TEXT = ["hello there, how is it going today?", "it's going well, thank you kindly."] * 40
RATES = (9.7, 4.5, 6.0)


def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(TEXT, 300)


def test_spoken_phones_keep_only_what_is_said():
    assert spoken_phones("It's, OK!") == spoken_phones("it's ok")
    hello = spoken_phones("hello")  # espeak: h ə l ˈo ʊ; the stress mark is not a phone
    assert len(hello) == 5 and OTHER not in hello and spoken_phones("...") == ()
    assert spoken_phones("cat")[0] == spoken_phones("kit")[0]  # sounds, not letters: c and k are one phone


def test_word_times_give_each_frame_its_phone_and_neighbours():
    hi, yo = (10, 11), (12, 13)
    spans = word_spans([(2.0, 6.0, hi), (10.0, 12.0, yo)])  # frames: h 2-4, i 4-6, y 10-11, o 11-12
    times = torch.arange(14, dtype=torch.float64)[None] + 0.5
    ids, frac = frame_condition(*spans, times)
    middle = ids[0, :, CONTEXT].tolist()
    assert middle == [NONE] * 2 + [hi[0]] * 2 + [hi[1]] * 2 + [NONE] * 4 + [yo[0], yo[1]] + [NONE] * 2
    assert ids[0, 2].tolist() == [BOUNDARY, BOUNDARY, hi[0], hi[1], BOUNDARY]  # neighbours stay in the word
    assert ids[0, 10].tolist() == [BOUNDARY, BOUNDARY, yo[0], yo[1], BOUNDARY]
    assert (ids[0, 7] == NONE).all() and frac[0, 7] == 0
    torch.testing.assert_close(frac[0, 2:6], torch.tensor([0.25, 0.75, 0.25, 0.75]))


def test_schedule_times_words_at_the_voice_rate_and_drops_them_on_silence():
    tok = tokenizer()
    token_phones = TokenPhones.of(tok)
    first, second = tok.encode("hello"), tok.encode("there")
    schedule = SpeechSchedule()
    schedule.say(first + second, True, token_phones, RATES, window=100)  # a long window: no catching up
    n1, n2 = len(token_phones.word(first)), len(token_phones.word(second))
    assert schedule.start[0] == 0.0 and abs(schedule.end[n1 - 1] - (9.7 + 4.5 * n1)) < 1e-9
    assert abs(schedule.start[n1] - (schedule.end[n1 - 1] + 6.0)) < 1e-9  # the gap between words
    assert schedule.word == [0] * n1 + [1] * n2
    total = schedule.end[-1]
    schedule.advance(20)  # "hello" is still playing: all of it stays (its said phones are context)
    assert schedule.word == [0] * n1 + [1] * n2 and abs(schedule.end[-1] - (total - 20)) < 1e-9
    schedule.advance(20)  # "hello" has been said in full
    assert schedule.word == [1] * n2 and abs(schedule.end[-1] - (total - 40)) < 1e-9
    schedule.say([], False, token_phones, RATES, window=20)
    assert schedule.phones == []


def test_a_schedule_behind_the_text_head_squeezes_its_backlog():
    """Words emitted for one 20-frame window must start in it: what is still to play is squeezed."""
    tok = tokenizer()
    token_phones = TokenPhones.of(tok)
    words = [tok.encode(w) for w in ("hello", "there", "how")]
    schedule = SpeechSchedule()
    schedule.say(words[0], True, token_phones, RATES, window=20)
    schedule.advance(5)
    played = schedule.start[0]  # -5: said phones keep their times
    schedule.say(words[1] + words[2], True, token_phones, RATES, window=20)
    starts = [schedule.start[schedule.word.index(w)] for w in (1, 2)]
    assert schedule.start[0] == played and all(s <= 19.0 + 1e-9 for s in starts)
    assert all(a <= b for a, b in zip(schedule.start, schedule.start[1:], strict=False))  # still in order
    n = len(token_phones.word(words[2]))
    assert abs(schedule.end[-1] - schedule.start[schedule.word.index(2)] - (9.7 + 4.5 * n)) < 1e-9


def test_a_token_continuing_a_word_joins_it():
    tok = tokenizer()
    token_phones = TokenPhones.of(tok)
    word = "zebrafish"  # not in the tokenizer's text: several tokens
    assert len(tok.encode(word)) > 1
    ids = tok.encode(word)
    schedule = SpeechSchedule()
    for token in ids:  # one token per window, as a crowded window spills
        schedule.say([token], True, token_phones, RATES, window=20)
    assert set(schedule.word) == {0} and schedule.phones == list(token_phones.word(ids))
    assert all(a == b for a, b in zip(schedule.end, schedule.start[1:], strict=False))  # no gap inside


def test_schedule_and_word_times_give_the_same_condition_for_the_same_timing():
    """Words timed exactly as the schedule times them, each emitted for the window it starts in (as the
    text head emits them), get the same per-frame condition from the training path (word_spans) as from
    the streaming path (schedule, window by window)."""
    tok = tokenizer()
    token_phones = TokenPhones.of(tok)
    words = ["hello", "there", "how", "is", "it"]
    words_timed, end, emitted = [], None, {}
    for w in words:
        phones = token_phones.word(tok.encode(w))
        begin = 0.0 if end is None else end + 6.0
        if end is not None and (begin // 20) * 20 >= end:  # the last word ended before this window began
            begin = (begin // 20) * 20  # nothing plays: the word starts with its window
        end = begin + 9.7 + 4.5 * len(phones)
        words_timed.append((begin, end, phones))
        emitted.setdefault(int(begin // 20), []).extend(tok.encode(w))
    windows = int(end // 20) + 2
    times = torch.arange(20 * windows, dtype=torch.float64)[None] + 0.5
    trained_ids, trained_frac = frame_condition(*word_spans(words_timed), times)
    schedule, ids, frac = SpeechSchedule(), [], []
    for window in range(windows):
        schedule.say(emitted.get(window, []), True, token_phones, RATES, window=20)
        window_ids, window_frac = schedule_condition([schedule], 20)
        schedule.advance(20)
        ids.append(window_ids[0])
        frac.append(window_frac[0])
    assert torch.equal(torch.cat(ids), trained_ids[0])
    torch.testing.assert_close(torch.cat(frac), trained_frac[0])


def test_streaming_mel_depends_on_the_phones_said():
    tok = tokenizer()
    torch.manual_seed(0)
    model = InteractionModel(get_config("tiny", vocab_size=tok.vocab_size)).eval()
    with torch.no_grad():
        model.gate.bias.fill_(5.0)  # speak every micro-turn
        model.text_head.copy_bonus.bias.fill_(100.0)  # and say the background text (model/copying.py)
        model.mel_head.phones.weight.mul_(50.0)  # make the phone condition dominate the random head
    cfg = model.cfg
    silent = torch.zeros(1, cfg.frames, cfg.n_mels, dtype=torch.long)
    words = tok.encode("hello there")
    mels = {}
    for attached in (False, True):
        model.token_phones = TokenPhones.of(tok) if attached else None
        state = model.new_state(1, [3])
        outs = [model.step(state, StepInputs(silent, torch.tensor([token]))) for token in words]
        assert [int(o.text[0, 0]) for o in outs] == words  # each token is said as it arrives
        mels[attached] = torch.stack([o.mel for o in outs])
    assert not torch.equal(mels[False], mels[True])


def test_speaking_on_with_nothing_left_to_play_says_the_next_given_word():
    """`text_no_silent_window`: a text head that would stall mid-answer (pads while the gate speaks)
    says the background text's next word when the last one ends in the next window, unless the user is
    speaking."""
    tok = tokenizer()
    words = tok.encode("hello there")
    silent = torch.zeros(1, 20, 80, dtype=torch.long)
    said = {}
    for no_silent, floor in ((False, "listening"), (True, "listening"), (True, "user")):
        torch.manual_seed(0)
        cfg = get_config("tiny", vocab_size=tok.vocab_size, text_no_silent_window=no_silent)
        model = InteractionModel(cfg).eval()
        model.attach_tokenizer(tok)
        with torch.no_grad():
            model.gate.bias.fill_(5.0)  # speak every micro-turn
            model.text_head.norm2.weight.zero_()  # every logit 0: greedy takes pad ...
            model.text_head.copy_bonus.bias.fill_(-100.0)  # ... and never the given word on its own
            model.floor_head.weight.zero_()  # the floor head sees `floor`
            model.floor_head.bias.copy_(10.0 * (torch.arange(len(FLOOR_STATES)) == FLOOR_STATES.index(floor)))
        state = model.new_state(1)
        outs = [model.step(state, StepInputs(silent, torch.tensor([t]))) for t in [*words, -1, -1, -1, -1]]
        assert all(o.speaking[0] for o in outs)
        said[no_silent, floor] = [t for o in outs for t in o.text[0].tolist() if t in words]
    assert said == {(False, "listening"): [], (True, "listening"): words, (True, "user"): []}
