"""User-facing errors and the one place CLI entry points turn them into one-line messages."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["SparseDeployError", "cli_entry", "os_error_sentence", "LOG_LEVELS", "log_level", "configure_logging"]

#: ``--log-level`` choices (every command has the flag and ``-q``: ``cliargs.finish_parser``).
LOG_LEVELS = ("debug", "info", "warning", "error")


class SparseDeployError(Exception):
    """A problem with the user's input or environment; the message says what and how to fix it."""


def os_error_sentence(exc: OSError) -> str:
    """An OSError as one sentence with what to do (written files stay whole: they are renamed into place)."""
    where = f" on '{exc.filename}'" if exc.filename else ""
    what = exc.strerror or str(exc) or exc.__class__.__name__
    hint = {
        errno.ENOSPC: "free some space and run the command again (finished artifacts are kept, "
        "half-written ones were never renamed into place)",
        errno.EDQUOT: "free some space and run the command again",
        errno.EACCES: "check the permissions or pass another path",
        errno.EPERM: "check the permissions or pass another path",
        errno.EROFS: "pass a path on a writable filesystem",
        errno.ENOTDIR: "a folder in that path is a file; fix the path",
        errno.EISDIR: "that path is a folder; pass a file",
    }.get(exc.errno, "check the path and run the command again")
    return f"{what}{where}; {hint}"


def log_level(argv: Sequence[str]) -> int | None:
    """The logging level a command line asks for: ``--log-level LEVEL`` (last wins), ``-q``/``--quiet`` = warning.

    None when it asks for none (the default, info).
    """
    level = None
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in ("-q", "--quiet"):
            level = "warning"
        elif arg == "--log-level" and i + 1 < len(args):
            level = args[i + 1]
        elif arg.startswith("--log-level="):
            level = arg.split("=", 1)[1]
    return getattr(logging, level.upper()) if level in LOG_LEVELS else None


def configure_logging(argv: Sequence[str]) -> int:
    """Set up logging for a command from its ``--log-level`` / ``-q`` (before its parser runs); returns the level.

    One format for every command. At warning and above, progress bars (tqdm) and diffusers' own
    notices are off too.
    """
    asked = log_level(argv)
    level = logging.INFO if asked is None else asked
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if asked is not None:  # said on the command line: also when logging was set up before (an embedding program)
        logging.getLogger().setLevel(level)
    if level >= logging.WARNING:
        os.environ["TQDM_DISABLE"] = "1"
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    return level


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI ``main`` so that a SparseDeployError prints ``error: ...`` and exits with status 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        configure_logging(sys.argv[1:] if argv is None else argv)
        try:
            return int(main(argv) or 0)
        except SparseDeployError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # disk full, permissions, a path that is a file: one sentence, not a traceback
            print(f"error: {os_error_sentence(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    wrapper.is_cli_entry = True  # every command's main is one of these (tests/unit/test_package.py)
    return wrapper
