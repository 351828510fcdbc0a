"""Checks every CLI runs on its flags before any work starts (one sentence each, as SparseDeployError)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import SparseDeployError

__all__ = [
    "check_output_dir",
    "check_output_file",
    "check_positive",
    "check_finite",
    "check_device",
    "check_seed",
    "SEED_MAX",
]

#: Seeds are unsigned 64-bit numbers (what ``torch.Generator.manual_seed`` takes).
SEED_MAX = 2**64 - 1


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | Path, flag: str) -> Path:
    """``path`` is a folder that exists or can be created, and can be written to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SparseDeployError(f"{flag} '{path}' is a file, not a folder; pass a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise SparseDeployError(f"{flag} '{path}' cannot be created: '{base}' is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise SparseDeployError(
            f"{flag} '{path}' is not writable (no write permission on '{base}'); pass another folder"
        )
    return path


def check_output_file(path: str | Path, flag: str) -> Path:
    """``path`` names a file (not a folder) in a folder that exists or can be created and written."""
    path = Path(path)
    if path.is_dir():
        raise SparseDeployError(f"{flag} '{path}' is a folder; pass a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise SparseDeployError(f"{flag} '{path}' is not writable; pass another file")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise SparseDeployError(f"{flag} '{path}' cannot be created: '{base}' is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise SparseDeployError(f"{flag} '{path}' is not writable (no write permission on '{base}'); pass another path")
    return path


def check_finite(flag: str, value: float, low: float | None = None, *, strict: bool = False) -> float:
    """``value`` is a finite number, at least (or, strict, above) ``low`` when given."""
    if not math.isfinite(value) or (low is not None and (value <= low if strict else value < low)):
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise SparseDeployError(f"{flag} must be a finite number{bound}, got {value}")
    return value


def _shown(value: int) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} digits)"


def check_positive(flag: str, value: int, low: int = 1, high: int | None = None) -> int:
    """``low <= value <= high`` for an integer flag."""
    if value < low or (high is not None and value > high):
        span = f"at least {low}" if high is None else f"between {low} and {high}"
        raise SparseDeployError(f"{flag} must be {span}, got {_shown(value)}")
    return value


def check_seed(value: int, flag: str = "--seed") -> int:
    """A seed: an integer from 0 to 2**64 - 1."""
    if not 0 <= value <= SEED_MAX:
        raise SparseDeployError(f"{flag} must be between 0 and 2**64 - 1 ({SEED_MAX}), got {_shown(value)}")
    return value


def check_device(name: str, flag: str = "--device") -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise SparseDeployError(f"unknown {flag} '{name}'; use auto, cpu, cuda or cuda:N")
