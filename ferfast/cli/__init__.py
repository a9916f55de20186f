"""ferfast's command line, ``python -m ferfast.train COMMAND ...``: one module per command.

Each command module (``ferfast/cli/<command>.py``) has ``add_parser(subparsers)``, which adds its
sub-parser, and ``run(args) -> int``, which does the work and returns the exit code. Progress bars
(tqdm) live here, not in the library: library functions take a ``progress(done, total)`` callback.

Every parser is an :class:`ArgumentParser`, which refuses abbreviated options (the Python API takes
only whole keys, so the command line does too) and suggests the closest options for an unknown one.

Failures (:func:`main`, the one place they are mapped; the Python API raises as before). A failure the
user can cause ends the command with one line on stderr, ``python -m ferfast.train CMD: error: MESSAGE``
(the first line of the exception's message; for ``raise X from Y`` the outermost exception of the table),
and the exit status below; with ``--debug`` (before or after the command) the full traceback comes first.

exit  exception (checked in this order; the first match decides)
----  --------------------------------------------------------------------------------------------
2     a bad option or value found while parsing (argparse, ``parser.error``; an unknown
      ``--model.name`` is one: the config's validation names the option)
2     :class:`ferfast.config.ConfigError` (a bad setting), :class:`argparse.ArgumentError`
130   ``KeyboardInterrupt`` (one line: ``interrupted``)
1     runtime: ``OSError`` and all its kinds (``FileNotFoundError``, ``NotADirectoryError``,
      ``IsADirectoryError``, ``FileExistsError``, ``PermissionError``, :class:`ferfast._io.DiskFullError`,
      :class:`ferfast.data.check.UnreadableImageError`), ``MemoryError``, ``torch.OutOfMemoryError``,
      :class:`ferfast.models.checkpoint.CheckpointError` (and ``CorruptCheckpointError``,
      ``UnsafeCheckpointError``), :class:`ferfast.data.splits.SplitMismatchError`,
      :class:`ferfast.engine.runlock.RunLockedError`, :class:`ferfast.engine.logging.NonFiniteLossError`
2     usage: any other ``ValueError`` or ``TypeError`` (a bad value, e.g. an unknown model name
      reaching the API)
1     internal error (a bug): anything else (``AssertionError``, other ``RuntimeError``s, ``IndexError``,
      ``KeyError``...): the traceback, then one line asking to report it

The table is checked in the order above (the runtime ``ValueError`` subclasses before plain ``ValueError``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = [
    "COMMANDS",
    "EXIT_INTERRUPTED",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "ArgumentParser",
    "build_parser",
    "classify_error",
    "main",
    "nonnegative_int",
    "positive_int",
    "progress_bar",
]

#: The command modules under ``ferfast.cli``, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("data", "demo", "export", "models")

_DESCRIPTION = """\
ferfast: fast semi-supervised facial-expression recognition (SSFER).

Run `python -m ferfast.train COMMAND --help` for the options of a command.
"""

_EPILOG = """\
models: `python -m ferfast.train list-models` lists the names --model.name accepts, with their sizes
(vit_demo for a quick CPU run, ..., vit_base_patch16, SSFER's); a classifier name (vit_demo) and its MAE's
(mae_vit_demo) select the same architecture in every command.
"""


#: Exit statuses of :func:`main`: a failure at run time (missing file, locked folder...), a bad option or
#: setting (argparse's convention), and Ctrl-C (128 + SIGINT).
EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

_PROG = "python -m ferfast.train"

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

    def error(self, message: str) -> Any:  # type: ignore[override]
        """One line, ``PROG: error: MESSAGE`` (without argparse's usage lines: ``--help`` shows them), exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_first_line(message)}\n")

    def unrecognized_message(self, extras: Sequence[str]) -> str:
        """``unrecognized arguments: ...``, then for each unknown ``--option`` the options of this parser it may mean:
        those it abbreviates (said to be refused), else the closest by spelling."""
        from ferfast.config.keys import _close_keys

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
        prog="python -m ferfast.train",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", help="on a failure, print the full traceback (also accepted after the command)"
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

    Bad options exit with status 2 and one line naming the option (argparse's convention). An exception
    from the command is mapped by :func:`classify_error` (the table in this module's docstring): a user's
    error prints one line and returns 1 or 2, Ctrl-C returns 130, a bug prints its traceback and a line
    asking to report it. With ``--debug`` anywhere before ``--``, every failure prints its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    argv = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    prog = _PROG
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        prog = f"{_PROG} {args.command}"
        return int(args.command_run(args))
    except (KeyboardInterrupt, Exception) as e:
        status, message = classify_error(e)
        if debug:
            traceback.print_exc()
        if message is None:  # a bug: its traceback, then how to report it
            if not debug:
                traceback.print_exc()
            print(
                f"{prog}: internal error ({type(e).__name__}): this is a bug in ferfast; please report it with "
                "the traceback above and the command line",
                file=sys.stderr,
            )
        else:
            print(f"{prog}: error: {message}", file=sys.stderr)
        return status


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else e
    return _first_line(str(text)) or type(e).__name__


def _user_status(e: BaseException) -> int | None:
    """The exit status of a user's error ``e`` by the module's table (its type alone); None for a bug."""
    from ferfast.config import ConfigError

    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(e, ConfigError | argparse.ArgumentError):
        return EXIT_USAGE
    runtime: list[type] = [OSError, MemoryError]
    for module, name in (
        ("ferfast.models.checkpoint", "CheckpointError"),
        ("ferfast.data.splits", "SplitMismatchError"),
        ("ferfast.engine.runlock", "RunLockedError"),
        ("ferfast.engine.logging", "NonFiniteLossError"),
        ("torch", "OutOfMemoryError"),
    ):
        cls = getattr(sys.modules.get(module), name, None)  # not imported: none of them was raised
        if isinstance(cls, type):
            runtime.append(cls)
    if isinstance(e, tuple(runtime)):
        return EXIT_RUNTIME
    if isinstance(e, ValueError | TypeError):
        return EXIT_USAGE
    return None


def classify_error(e: BaseException) -> tuple[int, str | None]:
    """``(exit status, one-line message)`` for an exception reaching the CLI; the message is None for a bug.

    Follows ``raise ... from`` causes (``__cause__``, not the implicit ``__context__``): the outermost
    exception the table knows gives the status and the message, so ``RuntimeError(...) from
    FileNotFoundError(...)`` reports the missing file once.
    """
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        status = _user_status(cause)
        if status is not None:
            message = "interrupted" if status == EXIT_INTERRUPTED else _message(cause)
            return status, message
        cause = cause.__cause__
    return EXIT_RUNTIME, None


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
