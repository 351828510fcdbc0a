"""Nested training state (model, optimizer, scheduler, scaler, step) in one safetensors file, no pickle.

Tensors go into the safetensors payload; everything around them (dicts, lists, tuples, numbers,
strings) goes into its metadata as JSON, with tensors replaced by ``{"$tensor": key}``. Loading
never executes code from the file, unlike ``torch.load(weights_only=False)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import SparseDeployError

__all__ = ["save_state", "load_state", "STATE_FORMAT"]

STATE_FORMAT = "sparse-deploy-state/1"


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu").clone().contiguous()
        return {"$tensor": key}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"$items": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"training state holds a {type(value).__name__}, which is not stored (tensors, numbers, strings, lists, dicts only)"
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "$tensor" in value:
            return tensors[value["$tensor"]]
        if "$tuple" in value:
            return tuple(_decode(v, tensors) for v in value["$tuple"])
        if "$items" in value:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value["$items"]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` (the caller makes it atomic, e.g. inside ``atomic_dir``)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors)
    save_file(tensors, str(path), metadata={"format": STATE_FORMAT, "state": json.dumps(skeleton)})
    return Path(path)


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a state written by :func:`save_state`; a damaged file is one SparseDeployError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != STATE_FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, not {STATE_FORMAT!r}")
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        return _decode(json.loads(meta["state"]), tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise SparseDeployError(
            f"training state '{path}' is unreadable ({exc.__class__.__name__}: {exc}); delete '{path.parent}' to restart"
        ) from exc
