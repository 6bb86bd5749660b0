"""Command-line pieces a plug-in may declare: data generators (`largekernel make-data KIND`) and
extra subcommands, each as argparse arguments plus a function; the CLI builds the parsers."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable


def arg(*names: str, **kwargs: Any) -> tuple[tuple, dict]:
    """One `add_argument` call, recorded for a command."""
    return names, kwargs


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# the data generators' seed option
RANDOM_SEED = arg("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")


@dataclass
class Command:
    """A subcommand: `name`, a one-line `help`, a longer `description`, its arguments, and `run`
    (parsed arguments -> exit code; it writes its result to stdout)."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: list[tuple[tuple, dict]] = field(default_factory=list)
    description: str = ""
