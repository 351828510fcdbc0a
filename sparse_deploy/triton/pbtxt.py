"""A tiny writer for protobuf text format, enough for Triton's ``config.pbtxt``.

Messages are plain dicts (fields in insertion order); lists are repeated fields; map fields are
lists of ``{"key": ..., "value": ...}``; enum values are :class:`Enum` strings, written bare.
Pure functions, no protobuf dependency: tests parse the output with Triton's own schema.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Enum", "to_pbtxt"]


class Enum(str):
    """An enum value (``TYPE_FP32``, ``KIND_CPU``): written without quotes."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    raise TypeError(f"cannot write {type(value).__name__} {value!r} in protobuf text format")


def _message(fields: dict[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines.append(f"{pad}{name} {{")
            lines.extend(_message(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, (list, tuple)):
            if not value:  # an explicitly empty repeated field, e.g. reshape { shape: [ ] }
                lines.append(f"{pad}{name}: [ ]")
            elif all(isinstance(v, dict) for v in value):
                lines.append(f"{pad}{name} [")
                for i, item in enumerate(value):
                    lines.append(f"{pad}  {{")
                    lines.extend(_message(item, indent + 2))
                    lines.append(f"{pad}  }}{',' if i < len(value) - 1 else ''}")
                lines.append(f"{pad}]")
            else:
                lines.append(f"{pad}{name}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}")
    return lines


def to_pbtxt(message: dict[str, Any], header: str = "") -> str:
    """Render ``message`` as protobuf text; ``header`` lines become ``#`` comments on top."""
    comments = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    return "\n".join(comments + _message(message, 0)) + "\n"
