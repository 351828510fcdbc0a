"""The runner interface every backend implements.

An engine is a file plus a manifest beside it (``dense-fp16.trt.plan`` + ``dense-fp16.trt.json``,
``dense-fp32.ort.onnx`` + ``dense-fp32.ort.json``; an exported graph ``sparse-fp32.onnx`` +
``sparse-fp32.json`` works too). The manifest says which backend runs it, its I/O contract and the
sha256 of the file, so a runner never guesses and never runs a file that was swapped or edited;
reading and checking it is :mod:`sparse_deploy.artifacts`' job (re-exported here).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import ENGINE_FORMAT, ONNX_FORMAT, read_engine_manifest, rebuild_hint
from ..contract import IOContract
from ..errors import SparseDeployError
from ..presets import Preset, preset_from_manifest

__all__ = ["ENGINE_FORMAT", "ONNX_FORMAT", "Runner", "read_engine_manifest", "rebuild_hint"]

log = logging.getLogger(__name__)


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

    def numpy_feeds(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None
    ) -> dict[str, np.ndarray]:
        """The inputs as contiguous numpy arrays in the contract's dtypes, keyed by input name."""
        values = {"sample": sample, "timestep": timestep, "class_labels": class_labels}
        return {
            spec.name: np.ascontiguousarray(values[spec.name].detach().cpu().numpy().astype(spec.dtype, copy=False))
            for spec in self.contract.inputs
        }

    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if timestep.dim() == 0:
            timestep = timestep.expand(sample.shape[0])
        self.check_inputs(sample, timestep, class_labels)
        if not self._active:
            self.activate()
        return self._infer(sample, timestep.long(), None if class_labels is None else class_labels.long()).float().cpu()

    def _infer(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError
