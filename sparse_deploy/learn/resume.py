"""Resuming a training run without mixing runs: its identity, and its metrics log.

A run's identity is its whole serialized config except the settings that do not change the
weights (:data:`NOT_IDENTITY`): a new field added to ``TrainConfig`` or ``SparsityConfig`` is part
of the identity automatically. A run folder is resumed only by the same config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from ..checkpoint import LEGACY_TRAINING_STATE, TRAINING_STATE, read_manifest
from ..errors import SparseDeployError
from ..provenance import write_text_atomic
from ..sparsify import SparsityConfig

__all__ = ["NOT_IDENTITY", "differing_settings", "check_resumable", "read_metrics", "rewrite_metrics", "sync_file"]

log = logging.getLogger(__name__)

#: TrainConfig fields that do not change the trained weights (where and how the run is observed).
NOT_IDENTITY = frozenset({"out", "device", "preview", "preview_steps", "checkpoint_every"})
_PATH_FIELDS = ("init", "weights", "teacher", "masks", "vae", "data")


def _normal(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), so a manifest and a live config compare equal."""
    return json.loads(json.dumps(value, default=str))


def _normal_path(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    prefix, sep, rest = value.partition(":")
    if sep and re.fullmatch(r"[a-z][a-z-]*", prefix):  # fashion-mnist:DIR, synthetic:N
        return f"{prefix}:{Path(rest).resolve()}" if prefix == "fashion-mnist" and rest else value
    return str(Path(value).resolve())


def _identity(config_dict: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    values = {k: config_dict.get(k, default) for k, default in defaults.items() if k not in NOT_IDENTITY}
    for key in _PATH_FIELDS:
        if key in values:
            values[key] = _normal_path(values[key])
    sparsity = values.get("sparsity")
    if isinstance(sparsity, dict):  # fill fields a newer SparsityConfig added with their defaults
        values["sparsity"] = SparsityConfig.from_dict(sparsity).to_dict()
    return _normal(values)


def _defaults(config) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = None
    return out


def differing_settings(prior: dict[str, Any], config) -> list[str]:
    """Settings (``name (old -> new)``) in which ``config`` differs from a manifest's ``train_config``."""
    defaults = _defaults(config)
    old, new = _identity(prior, defaults), _identity(config.to_dict(), defaults)
    diffs = []
    for key in new:
        a, b = old.get(key), new[key]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in b if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key} ({a!r} -> {b!r})")
    return diffs


def check_resumable(out: Path, ckpt_dir: Path, config) -> dict[str, Any] | None:
    """The manifest of the run in ``ckpt_dir`` if ``config`` may resume it, None if there is none.

    Raises one sentence naming the differing settings and the ways out when the folder holds
    another run, a pickled (legacy) state, or a checkpoint without training state.
    """
    ways_out = f"pass another --out, or delete '{out}' to start over"
    if not ckpt_dir.exists():
        return None
    if not (ckpt_dir / TRAINING_STATE).exists():
        if (ckpt_dir / LEGACY_TRAINING_STATE).exists():
            raise SparseDeployError(
                f"'{ckpt_dir}' holds a pickled training state ({LEGACY_TRAINING_STATE}), which is "
                "never loaded "
                f"because unpickling can run code; {ways_out}"
            )
        raise SparseDeployError(
            f"'{ckpt_dir}' holds a checkpoint without training state (an export, not a run); {ways_out}"
        )
    manifest = read_manifest(ckpt_dir)
    if not isinstance(manifest.get("train_config"), dict):
        raise SparseDeployError(f"'{ckpt_dir}' does not record the config it was trained with; {ways_out}")
    diffs = differing_settings(manifest["train_config"], config)
    if diffs:
        raise SparseDeployError(f"'{out}' holds a different run (differs in {', '.join(diffs)}); {ways_out}")
    return manifest


def read_metrics(path: Path, upto: int) -> list[str]:
    """The rows of a metrics log with ``step <= upto``; a torn or garbled line is dropped with a warning."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s line %d is torn or not a metrics row; dropped", path, number)
            continue
        if isinstance(step, int) and step <= upto:
            rows.append(line)
    return rows


def rewrite_metrics(path: Path, upto: int) -> None:
    """Keep only the rows a resumed run does not redo (steps after the checkpoint are redone)."""
    if path.exists():
        write_text_atomic(path, "".join(r + "\n" for r in read_metrics(path, upto)))


def sync_file(fh) -> None:
    """Flush an open file to disk (called before every checkpoint, so its rows survive a kill)."""
    fh.flush()
    os.fsync(fh.fileno())
