"""One runner per backend behind one interface.

``load_runner(path)`` reads the manifest beside an engine (or a checkpoint folder's) and returns
a :class:`Runner`: a context manager with ``.contract``, ``.manifest``, ``.preset`` whose call
``runner(sample, timestep, class_labels) -> output`` takes and returns CPU float32 tensors, so it
plugs straight into ``sampling.sample(denoise=runner, ...)``.

=========  ==========================================  =================================
backend    artifact                                    device
=========  ==========================================  =================================
torch      checkpoint folder                           CPU, or CUDA
torch24    sparse checkpoint folder                    CUDA (8.0+), 2:4 Linear kernels
ort        ``*.ort.onnx`` engine or exported ``.onnx``  CPU; CUDA/TensorRT providers
trt        ``*.trt.plan`` engine                        CUDA, built on this GPU + TensorRT
=========  ==========================================  =================================

Backend modules import their heavy libraries lazily: importing this package needs no GPU.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SparseDeployError
from .base import ENGINE_FORMAT, Runner, read_engine_manifest

__all__ = ["BACKENDS", "ENGINE_FORMAT", "Runner", "load_runner", "read_engine_manifest"]

BACKENDS = ("auto", "torch", "torch24", "onnxruntime", "tensorrt")
_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}


def load_runner(path: str | Path, device: str = "auto", backend: str = "auto") -> Runner:
    """Open an engine file, its manifest, an exported graph or a checkpoint folder as a runner.

    Args:
        path: ``engines/<model>/<kind>-<precision>.{ort.onnx,trt.plan}`` (or its ``.json``),
            ``export/<model>/<kind>-<precision>.onnx``, or a checkpoint folder.
        device: ``auto`` | ``cpu`` | ``cuda``.
        backend: ``auto`` follows the manifest; for a checkpoint folder ``torch`` (default) or
            ``torch24``; for an engine it must match the manifest's backend.
    """
    backend = _ALIASES.get(backend, backend)
    if backend not in BACKENDS:
        raise SparseDeployError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    path = Path(path)
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise SparseDeployError(f"'{path}' is a folder without manifest.json: neither an engine nor a checkpoint")
        if backend == "torch24":
            from .torch24 import Torch24Runner

            return Torch24Runner(path, device)
        if backend not in ("auto", "torch"):
            raise SparseDeployError(
                f"'{path}' is a checkpoint folder: it runs on the torch or torch24 backend, not {backend}"
            )
        from .pytorch import TorchRunner

        return TorchRunner(path, device)

    engine, manifest = read_engine_manifest(path)
    engine_backend = manifest.get("backend", "onnxruntime")  # exported graphs run on ONNX Runtime
    if backend not in ("auto", engine_backend):
        raise SparseDeployError(f"'{engine}' is a {engine_backend} engine; it cannot run on the {backend} backend")
    if engine_backend == "onnxruntime":
        from .ort import OrtRunner

        return OrtRunner(engine, manifest, device)
    if engine_backend == "tensorrt":
        from .trt import TrtRunner

        return TrtRunner(engine, manifest, device)
    raise SparseDeployError(f"'{engine}' names an unknown backend '{engine_backend}' in its manifest; rebuild it")
