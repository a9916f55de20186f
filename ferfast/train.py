"""``python -m ferfast.train COMMAND ...``: ferfast's command line (see :mod:`ferfast.cli`).

Commands: ``data {check,detect,synth}`` prepares datasets. ``--help`` on any command explains it.

A failure prints one line ``python -m ferfast.train COMMAND: error: ...`` and exits 2 (a bad option or
setting) or 1 (at run time: a missing file, a locked folder, a damaged checkpoint...); ``--debug`` prints
the traceback too. The table of which error is which is in :mod:`ferfast.cli`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ferfast import cli
from ferfast.cli import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m ferfast.train`` with ``argv`` (default: the process's arguments); returns the exit code."""
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
