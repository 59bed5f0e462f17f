"""The `microturn` command: a thin layer that hands each subcommand to the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes `register(subparsers)`, adding its subcommands with `set_defaults(func=...)`.
COMMAND_MODULES = [
    "microturn.data.cli",
    "microturn.train.cli",
    "microturn.train.vocoder",
    "microturn.runtime.cli",
    "microturn.eval.cli",
    "microturn.server.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microturn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"microturn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
