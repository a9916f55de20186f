"""ferfast's command line, ``python -m ferfast.train COMMAND ...``: one module per command.

Each command module (``ferfast/cli/<command>.py``) has ``add_parser(subparsers)``, which adds its
sub-parser, and ``run(args) -> int``, which does the work and returns the exit code. Progress bars
(tqdm) live here, not in the library: library functions take a ``progress(done, total)`` callback.

Every parser is an :class:`ArgumentParser`, which refuses abbreviated options (the Python API takes
only whole keys, so the command line does too) and suggests the closest options for an unknown one.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["COMMANDS", "ArgumentParser", "build_parser", "main", "nonnegative_int", "positive_int", "progress_bar"]

#: The command modules under ``ferfast.cli``, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("data", "demo", "models")

_DESCRIPTION = """\
ferfast: fast semi-supervised facial-expression recognition (SSFER).

Run `python -m ferfast.train COMMAND --help` for the options of a command.
"""

_EPILOG = """\
models: `python -m ferfast.train list-models` lists the names --model.name accepts, with their sizes
(vit_demo for a quick CPU run, ..., vit_base_patch16, SSFER's); a classifier name (vit_demo) and its MAE's
(mae_vit_demo) select the same architecture in every command.
"""


#: Set on the namespace by the innermost parser that met unknown arguments, so that the error names its usage.
_UNKNOWN_OWNER = "_ferfast_unknown_owner"


class ArgumentParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` without prefix matching and with suggestions for unknown options.

    argparse's default (``allow_abbrev=True``) takes ``--stage1.epoch 3`` for ``--stage1.epochs 3``, while
    the Python API (:func:`ferfast.config.build_config`) rejects the key ``stage1.epoch``: here an abbreviated
    or misspelt option is an error (exit status 2) naming it, with the closest options (``did you mean
    --stage1.epochs?``). ``add_subparsers`` makes its sub-parsers of the parent's class, so every command and
    sub-command parser behaves the same way.
    """

    def __init__(self, *args: Any, allow_abbrev: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, noting on the namespace the innermost parser (a command's) that left arguments over."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and not hasattr(namespace, _UNKNOWN_OWNER):
            setattr(namespace, _UNKNOWN_OWNER, self)
        return namespace, extras

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """argparse's; unknown arguments exit through the error of the command that met them, with suggestions."""
        namespace, extras = self.parse_known_args(args, namespace)
        owner = vars(namespace).pop(_UNKNOWN_OWNER, self)
        if extras:
            owner.error(owner.unrecognized_message(extras))
        return namespace

    def unrecognized_message(self, extras: Sequence[str]) -> str:
        """``unrecognized arguments: ...``, then for each unknown ``--option`` the options of this parser it may mean:
        those it abbreviates (said to be refused), else the closest by spelling."""
        from ferfast.config import _close_keys

        hints = []
        names = [s[2:] for s in self._option_string_actions if s.startswith("--")]
        for arg in extras:
            if not arg.startswith("--") or len(arg) == 2:
                continue
            option = arg.split("=", 1)[0]
            longer = [n for n in names if n.startswith(option[2:])][:5]
            close = longer or _close_keys(option[2:], names)
            if close:
                refused = " is not accepted (options are not abbreviated)" if longer else ""
                hints.append(f"{option}{refused}: did you mean {' or '.join('--' + c for c in close)}?")
        return "; ".join([f"unrecognized arguments: {' '.join(extras)}", *hints])


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m ferfast.train`` parser with every command of :data:`COMMANDS` (no abbreviated options)."""
    parser = ArgumentParser(
        prog="python -m ferfast.train", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
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
