"""The runner interface and the engine manifest every backend reads.

An engine is a file plus a manifest beside it (``dense-fp16.trt.plan`` + ``dense-fp16.trt.json``,
``dense-fp32.ort.onnx`` + ``dense-fp32.ort.json``; an exported graph ``sparse-fp32.onnx`` +
``sparse-fp32.json`` works too). The manifest says which backend runs it, its I/O contract and the
sha256 of the file, so a runner never guesses and never runs a file that was swapped or edited.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..contract import IOContract, contract_problem
from ..errors import SparseDeployError
from ..export import ONNX_FORMAT  # an exported graph; ONNX Runtime runs it directly
from ..onnx_files import data_problem
from ..presets import Preset, preset_from_manifest
from ..provenance import seal_problem, sha256_file

__all__ = ["ENGINE_FORMAT", "ONNX_FORMAT", "Runner", "engine_manifest_path", "read_engine_manifest", "rebuild_hint"]

log = logging.getLogger(__name__)

ENGINE_FORMAT = "sparse-deploy-engine/1"
_KNOWN = (ENGINE_FORMAT, ONNX_FORMAT)


def rebuild_hint(path: Path, preset: str | None = None) -> str:
    """How to (re)build the engine at ``path``: for ``preset``, else the preset its folder is named after."""
    from ..presets import PRESETS

    model = next((m for m in (preset, Path(path).parent.name) if m in PRESETS), None)
    if model is None:
        return "make engine MODEL=<preset> (python -m sparse_deploy.build --model <preset>; presets: " + ", ".join(PRESETS) + ")"
    return f"make engine MODEL={model} (python -m sparse_deploy.build --model {model})"


def _hint_preset(manifest: dict[str, Any]) -> str | None:
    """The preset to rebuild for: the contract's (written from the graph) before the top-level field."""
    contract = manifest.get("contract")
    for value in (contract.get("preset") if isinstance(contract, dict) else None, manifest.get("preset")):
        if isinstance(value, str):
            return value
    return None


def engine_manifest_path(engine: str | Path) -> Path:
    """``x.trt.plan`` -> ``x.trt.json``; ``x.ort.onnx`` -> ``x.ort.json``; ``x.onnx`` -> ``x.json``."""
    return Path(engine).with_suffix(".json")


def _load_json(manifest_path: Path, engine: Path) -> dict[str, Any]:
    try:
        data = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparseDeployError(f"engine manifest '{manifest_path}' is corrupt ({exc}); rebuild with {rebuild_hint(engine)}") from exc
    if not isinstance(data, dict):
        raise SparseDeployError(f"'{manifest_path}' is not a sparse-deploy engine manifest")
    return data


def read_engine_manifest(path: str | Path, *, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """Find and check the manifest of an engine (or take the manifest itself).

    Returns:
        ``(engine_path, manifest)``. Raises a one-line :class:`SparseDeployError` for a missing
        file, a file without a (valid) manifest, or a file whose sha256 differs from the manifest's.
    """
    path = Path(path)
    if path.suffix == ".json" and path.is_file():  # the manifest itself was given
        manifest_path = path
        data = _load_json(path, path)
        name = data.get("engine") or data.get("file")
        if not isinstance(name, str) or not name:
            raise SparseDeployError(f"'{path}' is not a sparse-deploy engine manifest (no 'engine' entry)")
        path = path.parent / name
    else:
        manifest_path = engine_manifest_path(path)
    if not path.exists():
        raise SparseDeployError(f"engine '{path}' does not exist; build it with {rebuild_hint(path)}")
    if path.is_dir():
        raise SparseDeployError(f"'{path}' is a folder, not an engine file (a checkpoint folder needs a manifest.json)")
    if not manifest_path.is_file():
        raise SparseDeployError(
            f"'{path}' has no manifest '{manifest_path.name}' beside it, so it is not a sparse-deploy engine; "
            f"build one with {rebuild_hint(path)}"
        )
    manifest = _load_json(manifest_path, path)
    problem = seal_problem(manifest)
    if problem:
        raise SparseDeployError(f"engine manifest '{manifest_path}': {problem}; rebuild with {rebuild_hint(path, _hint_preset(manifest))}")
    if manifest.get("format") not in _KNOWN:
        raise SparseDeployError(
            f"'{manifest_path}' is not a sparse-deploy engine manifest (format {ENGINE_FORMAT} expected); "
            f"'{path}' is a foreign file"
        )
    hint = rebuild_hint(path, _hint_preset(manifest))
    named = manifest.get("engine") if manifest["format"] == ENGINE_FORMAT else manifest.get("file")
    if named != path.name:
        raise SparseDeployError(f"manifest '{manifest_path}' describes '{named}', not '{path.name}'; rebuild with {hint}")
    for key in ("preset", "precision", "contract"):
        if key not in manifest:
            raise SparseDeployError(f"engine manifest '{manifest_path}' lacks '{key}'; rebuild with {hint}")
    problem = contract_problem(manifest)
    if problem:
        raise SparseDeployError(f"engine manifest '{manifest_path}': {problem}; rebuild with {hint}")
    if verify:
        want = manifest.get("engine_sha256") if manifest["format"] == ENGINE_FORMAT else manifest.get("onnx_sha256")
        if want != sha256_file(path):
            raise SparseDeployError(
                f"'{path}' does not match the sha256 in its manifest (edited, truncated or replaced); rebuild with {hint}"
            )
        problem = data_problem(path, manifest)
        if problem:
            raise SparseDeployError(f"'{path}': {problem}; rebuild with {hint}")
    return path, manifest


class Runner:
    """One denoiser behind ``(sample, timestep, class_labels) -> output`` on CPU float32 tensors.

    Subclasses set up their device state in :meth:`activate` (called by ``__enter__`` or on the
    first call) and implement :meth:`_infer`. Inputs are checked against the contract (shape,
    labels, batch profile) before any backend sees them; fp16 engines get fp16 inputs and their
    outputs come back as float32.

    Attributes:
        backend: ``torch`` | ``torch24`` | ``onnxruntime`` | ``tensorrt``.
        path: the engine file or checkpoint folder.
        manifest: its manifest.
        contract: the I/O contract (names, dtypes, batch profile).
        preset: the model's preset.
    """

    backend = "?"

    def __init__(self, path: Path, manifest: dict[str, Any], contract: IOContract, preset: Preset | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.contract = contract
        self.preset: Preset = preset or preset_from_manifest({"preset": contract.preset, **manifest})
        self._active = False

    # -- lifecycle --------------------------------------------------------------------------
    def activate(self) -> None:
        """Acquire device state (sessions, CUDA contexts). Idempotent."""
        self._active = True

    def close(self) -> None:
        """Release device state. Idempotent."""
        self._active = False

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({str(self.path)!r}, preset={self.preset.name}, precision={self.contract.precision})"

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "dense" if not self.manifest.get("masked_layers") else "sparse"))

    @property
    def device_type(self) -> str:
        """Where the denoiser computes: ``cuda`` or ``cpu`` (what a timer must synchronise)."""
        return "cpu"

    @property
    def sha256(self) -> str | None:
        """The sha256 the manifest records for the artifact (engine, graph or checkpoint weights)."""
        m = self.manifest
        return m.get("engine_sha256") or m.get("onnx_sha256") or m.get("weights_sha256")

    @property
    def details(self) -> dict[str, Any]:
        """Backend-specific facts worth reporting next to a measurement (providers, 2:4 layers picked, ...)."""
        return {}

    # -- calls ------------------------------------------------------------------------------
    def check_inputs(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None) -> int:
        """Refuse inputs the contract does not accept; return the batch size."""
        spec = self.contract.inputs[0]
        if sample.dim() != len(spec.shape) or tuple(sample.shape[1:]) != tuple(spec.shape[1:]):
            raise SparseDeployError(
                f"sample of shape {tuple(sample.shape)} does not fit {self.preset.name}'s [B, {', '.join(map(str, spec.shape[1:]))}]"
            )
        batch = int(sample.shape[0])
        if tuple(timestep.shape) != (batch,):
            raise SparseDeployError(f"timestep must have shape [{batch}], got {tuple(timestep.shape)}")
        wants_labels = "class_labels" in self.contract.input_names
        if wants_labels and class_labels is None:
            raise SparseDeployError(f"preset '{self.preset.name}' is class-conditional: pass class_labels")
        if not wants_labels and class_labels is not None:
            raise SparseDeployError(f"preset '{self.preset.name}' is unconditional: class_labels must be None")
        if class_labels is not None and tuple(class_labels.shape) != (batch,):
            raise SparseDeployError(f"class_labels must have shape [{batch}], got {tuple(class_labels.shape)}")
        self.contract.profile.check(batch, where=f"{self.backend} engine '{self.path.name}'")
        return batch

    def numpy_feeds(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None) -> dict[str, np.ndarray]:
        """The inputs as contiguous numpy arrays in the contract's dtypes, keyed by input name."""
        values = {"sample": sample, "timestep": timestep, "class_labels": class_labels}
        return {
            spec.name: np.ascontiguousarray(values[spec.name].detach().cpu().numpy().astype(spec.dtype, copy=False))
            for spec in self.contract.inputs
        }

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if timestep.dim() == 0:
            timestep = timestep.expand(sample.shape[0])
        self.check_inputs(sample, timestep, class_labels)
        if not self._active:
            self.activate()
        return self._infer(sample, timestep.long(), None if class_labels is None else class_labels.long()).float().cpu()

    def _infer(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError
