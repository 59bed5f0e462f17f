"""The one queue rule for text streams that arrive faster than the model consumes them.

Background-model text and typed user text enter the model at most one token per micro-turn; tokens that
arrive faster wait in FIFO order. The training renderer (`render_queued_stream`) and the runtime (one
`TokenQueue` per stream per session) both use `TokenQueue`, so the model sees the same timing in both.
A new background message supersedes what is left of the previous one (`replace`): its answer is to a newer
user turn, and the rest of the old text, unsaid when the assistant yielded, would only delay it.
Assistant text targets use the same rule with K tokens per micro-turn (words that start in a crowded
window spill into the next one instead of being dropped).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable


def arrival_turn(time_s: float, turn_s: float) -> int:
    """The first micro-turn whose step can see text that arrived at `time_s`: the step for micro-turn t runs
    once its input is complete, at (t + 1) * turn_s."""
    return max(0, math.ceil(time_s / turn_s - 1e-9) - 1)


class TokenQueue:
    """FIFO of token ids; each micro-turn `pop` releases at most `per_turn` of them."""

    def __init__(self, per_turn: int = 1):
        self.per_turn = per_turn
        self.pending: deque[int] = deque()

    def push(self, ids: Iterable[int]) -> None:
        self.pending.extend(int(i) for i in ids)

    def replace(self, ids: Iterable[int]) -> None:
        """Drop what is pending and queue `ids` (a new message superseding the rest of the last one)."""
        self.pending.clear()
        self.push(ids)

    def pop(self) -> list[int]:
        return [self.pending.popleft() for _ in range(min(self.per_turn, len(self.pending)))]

    def __len__(self) -> int:
        return len(self.pending)


def render_queued_stream(
    arrivals: Iterable[tuple[int, list[int]]], n_turns: int, per_turn: int = 1, supersede: bool = False
) -> list[list[int]]:
    """Tokens released per micro-turn for `arrivals` [(turn, ids)] (in arrival order): what a `TokenQueue`
    fed at those turns would pop, micro-turn by micro-turn, for turns 0..n_turns-1. `supersede`: each
    arrival is a new message that `replace`s what is pending (background text)."""
    by_turn: dict[int, list[list[int]]] = {}
    for turn, ids in arrivals:
        by_turn.setdefault(max(turn, 0), []).append(list(ids))
    queue = TokenQueue(per_turn)
    released = []
    for t in range(n_turns):
        for ids in by_turn.get(t, []):
            if supersede:
                queue.replace(ids)
            else:
                queue.push(ids)
        released.append(queue.pop())
    return released
