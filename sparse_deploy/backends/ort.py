"""ONNX Runtime runner: CPU execution provider, or CUDA / TensorRT providers where installed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..artifacts import ENGINE_FORMAT, rebuild_hint, source_graph
from ..contract import IOContract
from ..errors import SparseDeployError, require
from .base import Runner
from .device import cuda_device

__all__ = ["OrtRunner", "choose_providers", "ort_session", "provider_name", "session_problem"]

log = logging.getLogger(__name__)

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_INSTALL = "pip install onnxruntime (or onnxruntime-gpu on a CUDA machine)"


def ort_session(
    path: str | Path,
    providers: Sequence[Any] = ("CPUExecutionProvider",),
    *,
    configure: Callable[[Any], None] | None = None,
    fix: str = "",
):
    """An ONNX Runtime session over ``path`` (CPU provider by default), quiet, with one-sentence load errors.

    Args:
        providers: execution providers, best first (names or ``(name, options)``).
        configure: called with the ``SessionOptions`` before the session is made (optimization
            level, where to save the optimized model, ...).
        fix: appended to the error, e.g. ``"; rebuild the engine with make engine"``.
    """
    ort = require("onnxruntime", "ONNX Runtime sessions", _INSTALL)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if configure is not None:
        configure(options)
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise SparseDeployError(f"ONNX Runtime cannot load '{path}' ({str(exc).splitlines()[0]}){fix}") from exc


def provider_name(provider: str | tuple[str, dict[str, Any]]) -> str:
    """The name of an execution provider entry: ``"CPUExecutionProvider"`` or ``("TensorrtExecutionProvider", options)``."""
    return provider if isinstance(provider, str) else provider[0]


def _shapes(contract: IOContract, batch: int) -> str:
    return ",".join(f"{t.name}:{'x'.join(str(d) for d in t.concrete(batch))}" for t in contract.inputs)


def choose_providers(device: str, contract: IOContract, *, sparse: bool, cache_dir: Path | None = None) -> list[Any]:
    """Execution providers for ``device`` (``auto`` | ``cpu`` | ``cuda``), best first.

    With the TensorRT provider, 2:4 sparse kernels are enabled for sparse graphs
    (``trt_sparsity_enable``) and the engine is built for the contract's batch profile.
    """
    ort = require("onnxruntime", "the ONNX Runtime backend", _INSTALL)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device not in ("auto", "cuda"):
        raise SparseDeployError(f"unknown device '{device}' for ONNX Runtime; use auto, cpu or cuda")
    available = ort.get_available_providers()
    gpu = cuda_device() is not None
    providers: list[Any] = []
    if gpu and "TensorrtExecutionProvider" in available:
        p = contract.profile
        options = {
            "trt_sparsity_enable": "True" if sparse else "False",
            "trt_profile_min_shapes": _shapes(contract, p.min),
            "trt_profile_opt_shapes": _shapes(contract, p.opt),
            "trt_profile_max_shapes": _shapes(contract, p.max),
        }
        if cache_dir is not None:
            options.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(cache_dir))
        providers.append(("TensorrtExecutionProvider", options))
    if gpu and "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    if device == "cuda" and not providers:
        raise SparseDeployError(
            f"device 'cuda' needs onnxruntime-gpu and a CUDA GPU; this onnxruntime offers {available} "
            f"and {'a' if gpu else 'no'} GPU is visible; use --device cpu"
        )
    return providers + ["CPUExecutionProvider"]


class OrtRunner(Runner):
    """An ONNX Runtime session over an ``.ort.onnx`` engine or an exported ``.onnx`` graph."""

    backend = "onnxruntime"

    def __init__(self, path: Path, manifest: dict[str, Any], device: str = "auto"):
        super().__init__(path, manifest, IOContract.from_dict(manifest["contract"]))
        cache = path.parent / f".{path.stem}.ort-trt-cache"
        self.providers = choose_providers(device, self.contract, sparse=self.kind == "sparse", cache_dir=cache)
        first = provider_name(self.providers[0])
        if first == "TensorrtExecutionProvider":
            cache.mkdir(exist_ok=True)
        model_path = path
        if first != "CPUExecutionProvider" and manifest.get("format") == ENGINE_FORMAT:
            # The engine was optimized offline for the CPU provider, and ONNX Runtime's offline
            # optimizations are only valid for the provider they ran with: use the source graph.
            model_path = source_graph(path, manifest)
            if model_path is None:
                log.warning(
                    "source graph %s of %s is missing or changed; running the CPU-optimized engine on the GPU",
                    manifest.get("source_onnx"),
                    path.name,
                )
                model_path = path
        self.session = ort_session(model_path, self.providers, fix="; rebuild the engine with make engine")
        self.model_path = model_path
        problem = session_problem(self.session, self.contract)
        if problem:
            raise SparseDeployError(f"'{model_path}' {problem}; rebuild it with {rebuild_hint(path, self.preset.name)}")
        log.info("%s on %s", model_path.name, self.session.get_providers()[0])

    @property
    def device_type(self) -> str:
        return "cpu" if self.session.get_providers()[0] == "CPUExecutionProvider" else "cuda"

    @property
    def details(self) -> dict[str, Any]:
        return {"providers": self.session.get_providers()}

    def _infer(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        out = self.session.run([self.contract.output_names[0]], self.numpy_feeds(sample, timestep, class_labels))[0]
        return torch.from_numpy(out.astype("float32", copy=False))


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}


def session_problem(session, contract: IOContract) -> str | None:
    """How an ONNX Runtime session's inputs/outputs differ from the manifest's contract; None if they match.

    Names, dtypes and ranks must match; a fixed dimension of the graph must equal the contract's
    (symbolic dimensions are taken as matching).
    """
    for what, args, specs in (
        ("inputs", session.get_inputs(), contract.inputs),
        ("outputs", session.get_outputs(), contract.outputs),
    ):
        got = [(a.name, _ORT_TYPES.get(a.type, a.type), list(a.shape)) for a in args]
        want = [(s.name, s.dtype, list(s.shape)) for s in specs]
        fits = len(got) == len(want) and all(
            gn == wn
            and gt == wt
            and len(gs) == len(ws)
            and all(not isinstance(g, int) or w == -1 or g == w for g, w in zip(gs, ws))
            for (gn, gt, gs), (wn, wt, ws) in zip(got, want)
        )
        if not fits:
            return f"has {what} {got}, but its manifest promises {want}"
    return None
