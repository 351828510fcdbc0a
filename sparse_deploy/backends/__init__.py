"""One runner per backend behind one interface.

``load_runner(path)`` reads the manifest beside an engine (or a checkpoint folder's) and returns
a :class:`Runner`: a context manager with ``.contract``, ``.manifest``, ``.preset`` whose call
``runner(sample, timestep, class_labels) -> output`` takes and returns CPU float32 tensors, so it
plugs straight into ``sampling.sample(denoise=runner, ...)``.

=========  ==========================================  =================================
backend    artifact                                    device
=========  ==========================================  =================================
torch      checkpoint folder or diffusers weights      CPU, or CUDA
torch24    sparse checkpoint or 2:4 diffusers weights  CUDA (8.0+), 2:4 Linear kernels
ort        ``*.ort.onnx`` engine or exported ``.onnx``  CPU; CUDA/TensorRT providers
trt        ``*.trt.plan`` engine                        CUDA, built on this GPU + TensorRT
=========  ==========================================  =================================

Backend modules import their heavy libraries lazily: importing this package needs no GPU.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SparseDeployError
from .base import ENGINE_FORMAT, Runner, read_engine_manifest
from .ort import OrtRunner
from .pytorch import TorchRunner
from .torch24 import Torch24Runner
from .trt import TrtRunner

__all__ = [
    "BACKENDS",
    "BACKEND_ALIASES",
    "ENGINE_FORMAT",
    "Runner",
    "backend_name",
    "load_runner",
    "read_engine_manifest",
]

BACKENDS = ("auto", "torch", "torch24", "onnxruntime", "tensorrt")
#: Other names of the backends, accepted wherever a backend is named (``run``, ``build``, ``bench``).
BACKEND_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}
_ALIASES = BACKEND_ALIASES


def backend_name(name: str, allowed: tuple[str, ...] = BACKENDS) -> str:
    """The backend ``name`` (or an alias of it: :data:`BACKEND_ALIASES`) means, refused unless in ``allowed``."""
    backend = BACKEND_ALIASES.get(name, name)
    if backend not in allowed:
        aliases = [a for a, b in BACKEND_ALIASES.items() if b in allowed]
        raise SparseDeployError(
            f"unknown --backend '{name}'; choose one of: {', '.join(allowed)}"
            + (f" (or {', '.join(aliases)})" if aliases else "")
        )
    return backend


def load_runner(path: str | Path, device: str = "auto", backend: str = "auto") -> Runner:
    """Open an engine file, its manifest, an exported graph or a checkpoint folder as a runner.

    Args:
        path: ``engines/<model>/<kind>-<precision>.{ort.onnx,trt.plan}`` (or its ``.json``),
            ``export/<model>/<kind>-<precision>.onnx``, a checkpoint folder, or diffusers weights (a
            pipeline or model folder, ``.safetensors``) run by PyTorch.
        device: ``auto`` | ``cpu`` | ``cuda``.
        backend: ``auto`` follows the manifest; for a checkpoint folder ``torch`` (default) or
            ``torch24``; for an engine it must match the manifest's backend.
    """
    backend = backend_name(backend)
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":  # a checkpoint folder, or diffusers weights (open_model)
        if backend == "torch24":
            return Torch24Runner(path, device)
        if backend not in ("auto", "torch"):
            raise SparseDeployError(
                f"'{path}' is a checkpoint or diffusers model: it runs on the torch or torch24 backend, not {backend} "
                "(build an engine from it first: python -m sparse_deploy.build)"
            )

        return TorchRunner(path, device)

    engine, manifest = read_engine_manifest(path)
    engine_backend = manifest.get("backend", "onnxruntime")  # exported graphs run on ONNX Runtime
    if backend not in ("auto", engine_backend):
        raise SparseDeployError(f"'{engine}' is a {engine_backend} engine; it cannot run on the {backend} backend")
    if engine_backend == "onnxruntime":
        return OrtRunner(engine, manifest, device)
    if engine_backend == "tensorrt":
        return TrtRunner(engine, manifest, device)
    raise SparseDeployError(f"'{engine}' names an unknown backend '{engine_backend}' in its manifest; rebuild it")
