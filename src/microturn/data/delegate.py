"""The delegate signal as a corpus label: the moments a conversation needed the background model.

Every assistant content utterance of the synthetic corpus is voiced from background text (the
`background` list of its timeline); acknowledgement-only turns ("haha", "okay"), backchannels and the
assistant's wait acts ("let me see,", "one moment,": utterances of kind `filler` said while the content is
late) are not. So each background item marks a request the background model had to answer, and the
request had to go out when the user's turn that the content answers ended. `delegate_events` derives
that from any timeline (no re-rendering: corpora already on disk carry everything it needs):

    Event("delegate", "assistant", start=request, end=arrival, detail={"utterance": content utterance,
          "user_utterance": the user turn answered, "ack": the assistant's wait act in between or None,
          "lead_s": arrival - request})

where request = min(end of that user turn, arrival) (12% of arrivals come before the user finished).
A background item with no user turn before its utterance (the assistant opens the conversation) is no
request and gets no event. `delegate_targets` renders the events as a per-micro-turn 0/1 target (1 at
the micro-turn whose step first sees the request moment, the rule `model.queues.arrival_turn` gives
background text), the shape a future auxiliary head would train on. Nothing in the model reads it yet:
docs/background.md says how the runtime would.
"""

from __future__ import annotations

import numpy as np

from microturn.data.corpus import Conversation, Event
from microturn.model.queues import arrival_turn


def delegate_events(conversation: Conversation) -> list[Event]:
    """One `delegate` event per background item that answers a user turn (see the module docstring)."""
    utterances = conversation.utterances
    events = []
    for item in sorted(conversation.background, key=lambda b: b.time):
        if not 0 <= item.utterance < len(utterances):
            continue
        content = utterances[item.utterance]
        users = [
            i
            for i, u in enumerate(utterances)
            if u.speaker == "user" and u.kind == "turn" and u.start < content.start
        ]
        if not users:
            continue  # the assistant opens: nothing was asked
        user = users[-1]
        request = min(utterances[user].end, item.time)
        acks = [
            i
            for i, u in enumerate(utterances)
            if u.speaker == "assistant" and u.kind == "filler" and request <= u.start < content.start
        ]
        detail = {
            "utterance": item.utterance,
            "user_utterance": user,
            "ack": acks[0] if acks else None,
            "lead_s": round(item.time - request, 5),
        }
        events.append(Event("delegate", "assistant", round(request, 5), round(item.time, 5), None, detail))
    return events


def delegate_targets(conversation: Conversation, n_turns: int, turn_s: float = 0.2) -> np.ndarray:
    """float32 [n_turns]: 1 at the micro-turn whose step first sees each request moment, else 0."""
    targets = np.zeros(n_turns, np.float32)
    for event in delegate_events(conversation):
        turn = arrival_turn(event.start, turn_s)
        if turn < n_turns:
            targets[turn] = 1.0
    return targets


def delegate_stats(conversations: list[Conversation]) -> dict:
    """How the label falls over a corpus: requests, the share with a wait act, user turns answered by
    content against all user turns, and the request-to-arrival lead."""
    per_conversation = [delegate_events(c) for c in conversations]
    events = [e for found in per_conversation for e in found]
    user_turns = sum(u.speaker == "user" and u.kind == "turn" for c in conversations for u in c.utterances)
    answered = sum(len({e.detail["user_utterance"] for e in found}) for found in per_conversation)
    leads = [e.detail["lead_s"] for e in events]
    return {
        "delegates": len(events),
        "with_ack": sum(e.detail["ack"] is not None for e in events),
        "user_turns": user_turns,
        "user_turns_answered": answered,
        "lead_s_p50": round(float(np.median(leads)), 3) if leads else None,
        "lead_s_p90": round(float(np.quantile(leads, 0.9)), 3) if leads else None,
    }
