"""Checkpoint I/O: one folder per checkpoint, written atomically.

Layout of a checkpoint folder::

    manifest.json         preset (name + full spec: model config, schedule), sparsity config, masked layers, step, config, versions, hashes
    model.safetensors     inference weights (the EMA model), masks as ``*.weight_mask`` buffers
    training_state.safetensors  student weights, optimizer, scheduler, step (absent in exports);
                          tensors plus JSON metadata, never a pickle (``statefile``)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .errors import SparseDeployError
from .models import Denoiser, build_model
from .presets import PRESET_SPEC, preset_from_manifest
from .provenance import atomic_dir, library_versions, seal, seal_problem, sha256_file, timestamp
from .masks import PATTERN
from .sparsify import SparsityConfig, masked_modules, sparsify_
from .statefile import load_state, save_state

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "load_training_state",
    "read_manifest",
    "MANIFEST",
    "WEIGHTS",
    "TRAINING_STATE",
    "LEGACY_TRAINING_STATE",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
TRAINING_STATE = "training_state.safetensors"
LEGACY_TRAINING_STATE = "training_state.pt"  # pickled; never loaded (it could run code)


def _state_for_safetensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone makes every tensor its own.
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    path: str | Path,
    model: Denoiser,
    *,
    sparsity: SparsityConfig | None,
    info: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and optionally the training state) to the folder ``path``, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file(_state_for_safetensors(model), str(tmp / WEIGHTS))
        if training_state is not None:
            save_state(training_state, tmp / TRAINING_STATE)
        manifest = {
            "format": "sparse-deploy-checkpoint/1",
            "preset": model.preset.name,
            PRESET_SPEC: model.preset.to_dict(),  # the model's config and schedule: no --model needed later
            "sparsity": sparsity.to_dict() if sparsity else None,
            "masked_layers": sorted(masked_modules(model)),
            "pattern": PATTERN if masked_modules(model) else None,  # the one pattern; None: dense
            "weights_sha256": sha256_file(tmp / WEIGHTS),
            "training_state_sha256": sha256_file(tmp / TRAINING_STATE) if training_state is not None else None,
            "created": timestamp(),
            "versions": library_versions(),
            **(info or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(seal(manifest), indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint's manifest, with errors that say how to fix a wrong path."""
    path = Path(path)
    if not path.exists():
        raise SparseDeployError(
            f"checkpoint '{path}' does not exist; train one first ('make train-dense', 'make train-sparse') or fix the path"
        )
    if path.is_file():
        raise SparseDeployError(
            f"'{path}' is a file; --checkpoint takes a checkpoint folder holding {MANIFEST} and {WEIGHTS} "
            "(use --weights for a plain .safetensors file)"
        )
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise SparseDeployError(f"'{path}' has no {MANIFEST}: it is not a sparse-deploy checkpoint folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparseDeployError(
            f"checkpoint manifest '{path / MANIFEST}' is corrupt ({exc}); re-create the checkpoint"
        ) from exc
    problem = seal_problem(manifest) if isinstance(manifest, dict) else None
    if problem:
        raise SparseDeployError(f"checkpoint manifest '{path / MANIFEST}': {problem}; re-create the checkpoint")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("preset"), str):
        raise SparseDeployError(
            f"checkpoint manifest '{path / MANIFEST}' has no 'preset' entry (edited or truncated); re-create the checkpoint"
        )
    return manifest


def load_training_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The training state of the checkpoint folder ``path``, checked against its manifest's hash."""
    path = Path(path)
    state_file = path / TRAINING_STATE
    expected = read_manifest(path).get("training_state_sha256")
    if expected and sha256_file(state_file) != expected:
        raise SparseDeployError(
            f"'{state_file}' does not match the hash in its manifest (corrupt or edited); delete '{path}' to restart"
        )
    return load_state(state_file, device)


def load_checkpoint(path: str | Path, *, verify: bool = True) -> tuple[Denoiser, dict[str, Any]]:
    """Build the checkpoint's preset model, re-apply its masks and load its inference weights.

    Returns:
        ``(model, manifest)``; the model is in eval mode and keeps its masks (see ``bake_``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    manifest = read_manifest(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise SparseDeployError(f"checkpoint '{path}' has no {WEIGHTS}; re-create the checkpoint")
    if verify and manifest.get("weights_sha256") and sha256_file(weights) != manifest["weights_sha256"]:
        raise SparseDeployError(
            f"'{weights}' does not match the hash in its manifest (corrupt or edited); re-create the checkpoint"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SparseDeployError(f"'{weights}' is corrupt ({exc}); re-create the checkpoint") from exc
    if manifest.get("masked_layers") and manifest.get("pattern", PATTERN) != PATTERN:
        raise SparseDeployError(
            f"checkpoint '{path}' holds {manifest['pattern']} masks; only {PATTERN} is supported (TensorRT and cuSPARSELt run {PATTERN} only)"
        )
    preset = preset_from_manifest(manifest)
    model = build_model(preset, weights=None, announce_random=False)
    if manifest.get("sparsity") and manifest.get("masked_layers"):
        sparsify_(model, SparsityConfig.from_dict(manifest["sparsity"]), layers=manifest["masked_layers"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SparseDeployError(
            f"checkpoint '{path}' does not fit preset '{preset.name}' ({str(exc).splitlines()[0]}); re-create it"
        ) from exc
    model.eval()
    return model, manifest
