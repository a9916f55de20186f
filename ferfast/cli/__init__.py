"""ferfast's command line, ``python -m ferfast.train COMMAND ...``: one module per command.

Each command module (``ferfast/cli/<command>.py``) has ``add_parser(subparsers)``, which adds its
sub-parser, and ``run(args) -> int``, which does the work and returns the exit code. Progress bars
(tqdm) live here, not in the library: library functions take a ``progress(done, total)`` callback.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

__all__ = ["COMMANDS", "build_parser", "main", "nonnegative_int", "positive_int", "progress_bar"]

#: The command modules under ``ferfast.cli``, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("data", "demo")

_DESCRIPTION = """\
ferfast: fast semi-supervised facial-expression recognition (SSFER).

Run `python -m ferfast.train COMMAND --help` for the options of a command.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m ferfast.train`` parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="python -m ferfast.train", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    from ferfast.cli.stages import add_parsers

    add_parsers(subparsers)  # pretrain, finetune, semisup, evaluate
    for name in COMMANDS:
        module = importlib.import_module(f"ferfast.cli.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(command_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run the command; returns its exit code.

    Bad options exit with status 2 and a message naming the option (argparse's convention).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.command_run(args))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option in its error)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
    return value


@contextmanager
def progress_bar(desc: str, unit: str = "img") -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr (only on a terminal)."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None)
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
