"""Full-Duplex-Bench metrics and the v1.5 behaviour rule on hand-made timelines with known answers."""

import numpy as np
import pytest

from microturn.audio import SAMPLE_RATE
from microturn.eval import fdbench
from microturn.eval.activity import Segment, quiet_start_after
from microturn.eval.fdbench import Word
from microturn.eval.overlap import classify_overlap, overlap_record


def words(*spans, text="word"):
    return [Word(text, s, e) for s, e in spans]


def tone(total_s, *spans, level=0.2):
    """A test output: a 220 Hz tone (stands in for speech) inside the given spans, silence elsewhere."""
    out = np.zeros(int(total_s * SAMPLE_RATE), np.float32)
    for s, e in spans:
        a, b = int(s * SAMPLE_RATE), int(e * SAMPLE_RATE)
        out[a:b] = level * np.sin(2 * np.pi * 220 * np.arange(b - a) / SAMPLE_RATE)
    return out


def test_takeover_rule():
    assert fdbench.takeover([]) == 0
    assert fdbench.takeover(words((1.0, 1.3))) == 0  # one short word: a backchannel
    assert fdbench.takeover(words((1.0, 1.2), (1.3, 1.5), (1.6, 1.8))) == 0  # 3 words over 0.8 s
    assert fdbench.takeover(words((1.0, 1.2), (1.3, 1.5), (1.6, 1.8), (1.8, 1.9))) == 1  # > 3 words
    assert fdbench.takeover(words((1.0, 1.2), (1.8, 2.0))) == 1  # span of exactly 1 s


def test_turn_taking_latency_and_clipping():
    late = fdbench.turn_taking_metrics(words((3.5, 3.8), (3.9, 4.2), (4.3, 4.9)), user_end_s=3.0)
    assert late["to"] == 1 and late["latency_s"] == pytest.approx(0.5)
    early = fdbench.turn_taking_metrics(words((2.6, 2.9), (3.0, 3.3), (3.4, 4.0)), user_end_s=3.0)
    assert early["latency_s"] == 0.0  # a negative latency clips to 0
    silent = fdbench.turn_taking_metrics([], user_end_s=3.0)
    assert silent == {"to": 0, "latency_s": None}
    agg = fdbench.aggregate([{"task": "turn_taking", **m} for m in (late, early, silent)])
    assert agg["turn_taking_tor"] == pytest.approx(2 / 3)
    assert agg["turn_taking_latency_s"] == pytest.approx(0.25)  # over TO = 1 samples only
    assert agg["n_turn_taking"] == 3


def test_pause_takeover_and_no_words():
    assert fdbench.pause_metrics([])["to"] == 0
    agg = fdbench.aggregate(
        [{"task": "pause", **fdbench.pause_metrics(w)} for w in ([], words((5.0, 5.3), (5.4, 6.2)))]
    )
    assert agg == {"pause_tor": 0.5, "n_pause": 2}


def test_interruption_counts_words_after_the_interruption_and_stop_latency():
    # the system speaks 0-6.7 s, the user interrupts 6.0-7.5 s, the system answers from 8.1 s
    output = tone(12.0, (0.0, 6.7), (8.1, 10.0))
    w = words((1.0, 1.4), (2.0, 2.4), (3.0, 3.4), (4.0, 4.4), (8.1, 8.5), (8.6, 9.0), (9.1, 9.5), (9.6, 10.0))
    m = fdbench.interruption_metrics(w, 6.0, 7.5, output)
    assert m["to"] == 1
    assert m["latency_s"] == pytest.approx(0.6)
    assert m["stop_s"] == pytest.approx(0.7, abs=0.021)  # goes quiet at 6.7 s (20 ms frames)
    # keeps talking straight through: it stops only when its speech ends at 9.0 s
    m = fdbench.interruption_metrics(words((1.0, 9.0)), 6.0, 7.5, tone(12.0, (0.0, 9.0)))
    assert m["to"] == 0 and m["latency_s"] is None and m["stop_s"] == pytest.approx(3.0, abs=0.021)
    # silent when interrupted: no stop latency to measure
    m = fdbench.interruption_metrics([], 6.0, 7.5, tone(12.0, (0.0, 3.0)))
    assert m["stop_s"] is None and m["to"] == 0
    # interrupted in a 300 ms pause between two words: still speaking, and it stops at the pause
    m = fdbench.interruption_metrics([], 6.0, 7.5, tone(12.0, (0.0, 5.7), (6.1, 6.4)))
    assert m["speaking_at_interruption"] and m["stop_s"] == pytest.approx(0.4, abs=0.021)


def test_quiet_needs_500_ms():
    # 100 and 300 ms gaps in speech (clause pauses) are not "quiet"; the 600 ms gap at 4.0 s is
    output = tone(7.0, (0.0, 2.0), (2.1, 3.0), (3.3, 4.0), (4.6, 7.0))
    assert quiet_start_after(output, 1.0) == pytest.approx(4.0, abs=0.021)
    assert quiet_start_after(output, 4.3) == pytest.approx(4.3)  # already quiet: counts from then
    assert quiet_start_after(output, 5.0) == pytest.approx(7.0)  # talks to the end


def test_backchannel_segments():
    segments = [Segment(2.0, 2.4), Segment(6.0, 6.5), Segment(9.0, 13.5)]
    w = words((2.05, 2.35), (6.0, 6.15), (6.2, 6.3), (6.35, 6.5), (9.0, 13.0))
    m = fdbench.backchannel_metrics(segments, w, duration_s=20.0, reference_times=[2.05, 6.0])
    # 6.0-6.5 holds 3 words: not a backchannel; 9.0-13.5 is over 3 s: a takeover
    assert m["n_backchannel"] == 1 and m["to"] == 1
    assert m["freq"] == pytest.approx(1 / 20)
    assert 0.0 < m["jsd"] < 1.0
    exact = fdbench.backchannel_metrics([Segment(2.0, 2.4)], w[:1], 20.0, [2.05])
    assert exact["jsd"] == pytest.approx(0.0) and exact["to"] == 0
    none = fdbench.backchannel_metrics([], [], 20.0, [2.0, 6.0])
    assert none["jsd"] == 1.0 and none["freq"] == 0.0 and none["to"] == 0


def test_jsd_is_a_base_2_distance():
    assert fdbench.backchannel_jsd([1.0], [5.0], 10.0) == pytest.approx(1.0)  # disjoint bins
    # p = (1/2, 1/2), q = (0, 1), m = (1/4, 3/4): distance = sqrt((KL(p||m) + KL(q||m)) / 2)
    kl_p = 0.5 * np.log2(0.5 / 0.25) + 0.5 * np.log2(0.5 / 0.75)
    kl_q = np.log2(1 / 0.75)
    assert fdbench.backchannel_jsd([1.0, 5.0], [5.0], 10.0) == pytest.approx(np.sqrt((kl_p + kl_q) / 2))


def said(text, at):
    """Words of `text`, one every 0.4 s from `at`."""
    return [Word(t, at + i * 0.4, at + i * 0.4 + 0.3) for i, t in enumerate(text.split())]


REPLY = "the museum opens early on sundays and the garden behind it is lovely in spring"


def test_overlap_behaviours():
    talk = words((0.0, 0.4), (0.5, 0.9), text="museum")
    # keeps talking through a backchannel at 3.0-3.4
    out = tone(10.0, (0.0, 7.0))
    assert classify_overlap(out, talk, 3.0, 3.4, REPLY) == "continue"
    # stops at 3.3 and comes back with the original content
    out = tone(10.0, (0.0, 3.3), (4.5, 7.0))
    resumed = talk + said("garden behind lovely spring", 4.5)
    assert classify_overlap(out, resumed, 3.0, 3.4, REPLY) == "stop_and_resume"
    # stops and answers something new after the interruption
    answered = talk + said("sure, tomorrow looks rainy", 4.5)
    assert classify_overlap(out, answered, 3.0, 4.0, REPLY) == "stop_and_respond"
    # stops and never comes back
    assert classify_overlap(tone(10.0, (0.0, 3.3)), talk, 3.0, 3.4, REPLY) == "stop"
    # was not speaking when the overlap came
    assert classify_overlap(tone(10.0, (0.0, 2.0)), talk, 3.0, 3.4, REPLY) == "not_speaking"
    # between two words when it came (a 300 ms pause): speaking, and it talks on
    assert classify_overlap(tone(10.0, (0.0, 2.7), (3.0, 7.0)), talk, 3.0, 3.4, REPLY) == "continue"


def test_overlap_scores():
    records = [
        {"task": "overlap", **overlap_record("interrupt", "stop_and_respond")},
        {"task": "overlap", **overlap_record("interrupt", "continue")},
        {"task": "overlap", **overlap_record("backchannel", "stop_and_resume")},
        {"task": "overlap", **overlap_record("side_talk", "stop")},
    ]
    agg = fdbench.aggregate(records)
    assert agg["v15_interrupt"] == 50.0 and agg["v15_backchannel"] == 100.0 and agg["v15_side_talk"] == 0.0
    assert agg["v15_average"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="unknown overlap scenario"):
        overlap_record("shouting", "continue")
