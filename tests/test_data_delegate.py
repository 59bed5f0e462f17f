"""The delegate label: one request per background item that answers a user turn, at that turn's end."""

import numpy as np

from microturn.data.corpus import BackgroundText, Conversation, Utterance
from microturn.data.delegate import delegate_events, delegate_stats, delegate_targets


def conversation() -> Conversation:
    utterances = [
        Utterance("assistant", "hi there what shall we talk about", 0.2, 2.0, "turn"),  # 0: opens
        Utterance("user", "what is the tallest mountain", 2.5, 4.0, "turn"),  # 1
        Utterance("assistant", "one moment,", 4.3, 4.9, "filler"),  # 2: a wait act
        Utterance("assistant", "it is everest", 5.6, 6.5, "turn"),  # 3: content
        Utterance("user", "haha nice", 7.0, 7.6, "turn"),  # 4: answered by an acknowledgement only
        Utterance("assistant", "haha", 7.9, 8.2, "turn"),  # 5
        Utterance("user", "and the longest river", 9.0, 10.4, "turn"),  # 6
        Utterance("assistant", "the nile", 10.6, 11.2, "turn"),  # 7: its text arrived early
    ]
    background = [
        BackgroundText(0.0, "hi there what shall we talk about", 0),
        BackgroundText(5.4, "it is everest", 3),
        BackgroundText(10.1, "the nile", 7),
    ]
    silence = np.zeros(16_000 * 12, np.float32)
    return Conversation("c", "test", "test", 12.0, [], utterances, [], background, silence, silence)


def test_requests_at_the_end_of_the_user_turn_answered_with_content() -> None:
    events = delegate_events(conversation())
    assert [(e.type, e.start, e.end) for e in events] == [("delegate", 4.0, 5.4), ("delegate", 10.1, 10.1)]
    assert events[0].detail == {"utterance": 3, "user_utterance": 1, "ack": 2, "lead_s": 1.4}
    assert events[1].detail["ack"] is None and events[1].detail["lead_s"] == 0.0  # arrived before the end
    targets = delegate_targets(conversation(), 60)
    assert list(np.flatnonzero(targets)) == [19, 50]  # the steps that first see 4.0 s and 10.1 s
    stats = delegate_stats([conversation()])
    assert (stats["delegates"], stats["with_ack"], stats["user_turns"], stats["user_turns_answered"]) == (
        2,
        1,
        3,
        2,
    )
