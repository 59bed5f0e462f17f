"""`python -m microturn.train ...` (what torchrun launches): the arguments of `microturn train`."""

import argparse
import sys

from .cli import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m microturn.train")
    add_arguments(parser)
    try:
        sys.exit(run(parser.parse_args()))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"microturn.train: error: {exc}", file=sys.stderr)
        sys.exit(2)
