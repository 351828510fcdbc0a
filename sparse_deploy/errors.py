"""User-facing errors and the one place CLI entry points turn them into one-line messages."""

from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable

__all__ = ["SparseDeployError", "cli_entry", "os_error_sentence"]


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


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI ``main`` so that a SparseDeployError prints ``error: ...`` and exits with status 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
