"""Step latency of the streaming path: `python -m microturn.model.bench --config small [--sessions 1]
[--heard-tokens N]` (N = 0: without the heard-words pointer, which runs the user-transcript head each step).

Reports wall time and thread CPU time per micro-turn step (one torch thread). CPU time is what the step
costs when the machine is shared (wall time then includes waiting for the core); the two agree on an
idle machine. Untrained weights; the gate is forced open or shut to time speaking and silent steps.
"""

from __future__ import annotations

import argparse
import time

import torch

from .config import CONFIGS, get_config
from .interaction import InteractionModel
from .streaming import StepInputs


def time_steps(
    config: str, sessions: int, steps: int, speaking: bool, heard_tokens: int | None = None
) -> dict[str, float]:
    torch.manual_seed(0)
    overrides = {} if heard_tokens is None else {"heard_tokens": heard_tokens}
    model = InteractionModel(get_config(config, **overrides)).eval()
    with torch.no_grad():
        model.gate.bias.fill_(8.0 if speaking else -8.0)
    cfg = model.cfg
    state = model.new_state(sessions)
    inputs = StepInputs(user_dmel=torch.randint(0, cfg.dmel_bins, (sessions, cfg.frames, cfg.n_mels)))
    for _ in range(20):  # warm up (allocator, caches)
        model.step(state, inputs)
    wall, cpu = [], []
    for _ in range(steps):
        w, c = time.perf_counter(), time.thread_time()
        model.step(state, inputs)
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - w)
    wall.sort()
    cpu.sort()
    return {
        "wall_median_ms": 1e3 * wall[steps // 2],
        "wall_min_ms": 1e3 * wall[0],
        "cpu_median_ms": 1e3 * cpu[steps // 2],
        "cpu_p90_ms": 1e3 * cpu[int(steps * 0.9)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m microturn.model.bench", description=__doc__)
    parser.add_argument("--config", default="small", choices=sorted(CONFIGS))
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--heard-tokens", type=int, default=None, help="override the config's heard_tokens")
    args = parser.parse_args()
    torch.set_num_threads(1)
    heard = "" if args.heard_tokens is None else f" heard {args.heard_tokens}"
    for speaking in (False, True):
        r = time_steps(args.config, args.sessions, args.steps, speaking, args.heard_tokens)
        print(
            f"{args.config}{heard} x{args.sessions} {'speaking' if speaking else 'silent  '}: "
            f"CPU median {r['cpu_median_ms']:.2f} ms (p90 {r['cpu_p90_ms']:.2f}), "
            f"wall median {r['wall_median_ms']:.2f} ms (min {r['wall_min_ms']:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
