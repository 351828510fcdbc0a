"""Argument parsing shared by every command line: comma-separated lists.

One parser per kind of list, so every flag reads ``a,b,,c`` the same way (empty parts dropped,
whitespace stripped) and says what it expected in one sentence when it cannot.
"""

from __future__ import annotations

from .errors import SparseDeployError

__all__ = ["comma_list", "comma_ints", "comma_floats"]


def comma_list(text: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``; None or empty text -> ``()``."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def comma_ints(text: str, what: str = "comma-separated integers like 1,2,4,8") -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; anything else is one error naming ``what`` was expected."""
    try:
        return tuple(int(part) for part in comma_list(text))
    except ValueError:
        raise SparseDeployError(f"expected {what}; got '{text}'") from None


def comma_floats(text: str, count: int | None = None, what: str | None = None) -> tuple[float, ...]:
    """``"1,0.1"`` -> ``(1.0, 0.1)``; with ``count``, exactly that many numbers."""
    expected = what or (f"{count} comma-separated numbers" if count else "comma-separated numbers")
    try:
        values = tuple(float(part) for part in comma_list(text))
    except ValueError:
        raise SparseDeployError(f"expected {expected}; got '{text}'") from None
    if count is not None and len(values) != count:
        raise SparseDeployError(f"expected {expected}; got '{text}'")
    return values
