"""TensorRT runner: a serialized plan run through Polygraphy's TrtRunner (TensorRT imported lazily).

TensorRT engines only run on the GPU model (compute capability) and TensorRT version they were
built with; the manifest records both and a mismatch is refused before deserialization.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..contract import IOContract
from ..errors import SparseDeployError
from .base import Runner, rebuild_hint
from .device import cuda_device, import_tensorrt

__all__ = ["TrtRunner", "check_engine_compatible"]

log = logging.getLogger(__name__)


def check_engine_compatible(path: Path, manifest: dict[str, Any], trt_version: str, gpu: dict[str, Any] | None) -> None:
    """Refuse an engine built for another TensorRT version or GPU generation."""
    if gpu is None:
        raise SparseDeployError(
            f"TensorRT engine '{path}' needs a CUDA GPU and none is visible; run an ONNX Runtime engine instead"
        )
    built_trt, built_cc = manifest.get("tensorrt_version"), manifest.get("compute_capability")
    problems = []
    if built_trt != trt_version:
        problems.append(f"TensorRT {built_trt} (this machine has {trt_version})")
    if built_cc != gpu["compute_capability"]:
        problems.append(
            f"compute capability {built_cc} ({manifest.get('gpu', '?')}; this GPU is {gpu['name']}, {gpu['compute_capability']})"
        )
    if problems:
        raise SparseDeployError(
            f"engine '{path}' was built for {' and '.join(problems)}; TensorRT engines only run where they were built: "
            f"rebuild it here with {rebuild_hint(path, manifest.get('preset'))}"
        )


class TrtRunner(Runner):
    """A TensorRT plan; inputs are copied to the GPU and outputs back to CPU float32."""

    backend = "tensorrt"

    def __init__(self, path: Path, manifest: dict[str, Any], device: str = "auto"):
        if device == "cpu":
            raise SparseDeployError(
                f"'{path}' is a TensorRT engine, which runs on a CUDA GPU only; use an ONNX Runtime engine for --device cpu"
            )
        super().__init__(path, manifest, IOContract.from_dict(manifest["contract"]))
        trt = import_tensorrt()
        check_engine_compatible(path, manifest, str(trt.__version__), cuda_device())
        from polygraphy.backend.trt import EngineFromBytes
        from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner

        try:
            self.engine = EngineFromBytes(path.read_bytes())()
        except Exception as exc:  # Polygraphy raises PolygraphyException on a bad plan
            raise SparseDeployError(
                f"TensorRT cannot deserialize '{path}' ({str(exc).splitlines()[0]}); rebuild with {rebuild_hint(path, manifest.get('preset'))}"
            ) from exc
        if self.engine is None:
            raise SparseDeployError(
                f"TensorRT cannot deserialize '{path}'; rebuild with {rebuild_hint(path, manifest.get('preset'))}"
            )
        self._runner = PolygraphyTrtRunner(self.engine)

    @property
    def device_type(self) -> str:
        return "cuda"

    @property
    def details(self) -> dict[str, Any]:
        return {key: self.manifest.get(key) for key in ("sparse_picked_modules", "sparse_eligible_modules")}

    def activate(self) -> None:
        if not self._active:
            self._runner.activate()
        super().activate()

    def close(self) -> None:
        if self._active:
            self._runner.deactivate()
        super().close()

    def _infer(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        outputs = self._runner.infer(self.numpy_feeds(sample, timestep, class_labels))
        # Polygraphy reuses its output buffers between calls: copy before handing the result out.
        return torch.from_numpy(np.array(outputs[self.contract.output_names[0]], dtype=np.float32))
