"""What TensorRT says about sparsity.

The builder's sparse-layer log lines, the engine inspector's tactics, and TensorRT layer names mapped back
to our modules (``build`` records them in the engine manifest).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

from .lazy import lazy_import

ort = lazy_import(
    "onnxruntime", "building an ONNX Runtime engine", "pip install onnxruntime (or onnxruntime-gpu on a CUDA machine)"
)
poly_trt = lazy_import("polygraphy.backend.trt", "building a TensorRT engine")
poly_logger = lazy_import("polygraphy.logger", "building a TensorRT engine")


log = logging.getLogger("sparse_deploy.build")  # TensorRT's messages are logged as the build's

_ELIGIBLE = "(Sparsity) Layers eligible for sparse math:"
_PICKED = "(Sparsity) TRT inference plan picked sparse implementation for layers:"


def parse_sparsity_log(lines: Sequence[str]) -> tuple[list[str] | None, list[str] | None]:
    """Layer names from TensorRT's two ``(Sparsity)`` builder log lines (None where a line is absent)."""

    def after(marker: str) -> list[str] | None:
        found = None
        for line in lines:
            if marker in line:
                rest = line.split(marker, 1)[1].strip()
                found = (found or []) + [name.strip() for name in rest.split(", ") if name.strip()]
        return found

    return after(_ELIGIBLE), after(_PICKED)


_SPARSE_TACTIC = re.compile(r"sptensor|sparse", re.IGNORECASE)


def parse_inspector(info: str | dict[str, Any]) -> dict[str, Any]:
    """Per-layer sparsity facts from the engine inspector's JSON (detailed profiling verbosity)."""
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    with_sparse_weights, sparse_tactics = [], []
    for layer in layers:
        if isinstance(layer, str):  # layer names only: the engine was built without detailed verbosity
            continue
        name = str(layer.get("Name", "?"))
        if str(layer.get("HasSparseWeights", "0")) not in ("0", "False", "false", ""):
            with_sparse_weights.append(name)
        if _SPARSE_TACTIC.search(str(layer.get("TacticName", ""))):
            sparse_tactics.append(name)
    return {"layers": len(layers), "has_sparse_weights": with_sparse_weights, "sparse_tactics": sparse_tactics}


_FOREIGN = re.compile(r"^\{?ForeignNode\[(.*)\]\}?$")


def trt_layer_nodes(trt_layer: str) -> set[str]:
    """The ONNX node names a TensorRT layer name is made of.

    TensorRT names a fused layer by joining its nodes with ``" + "`` and a Myelin region as
    ``{ForeignNode[first...last]}``; the parts are whole node names, compared exactly (a substring
    test would let ``/x/MatMul`` claim the layer ``/x/MatMul_1``).
    """
    foreign = _FOREIGN.match(trt_layer.strip())
    body = foreign.group(1) if foreign else trt_layer
    parts = [p for chunk in body.split(" + ") for p in (chunk.split("...") if foreign else [chunk])]
    return {p.strip() for p in parts if p.strip()}


def picked_modules(trt_layers: Sequence[str], layer_nodes: dict[str, list[str]]) -> list[str]:
    """Model layer names one of whose ONNX nodes is, exactly, part of one of the TensorRT layer names."""
    named = set().union(*(trt_layer_nodes(name) for name in trt_layers)) if trt_layers else set()
    return sorted(module for module, nodes in layer_nodes.items() if any(node in named for node in nodes if node))


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=1)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.lines.append(message)
        if record.levelno >= logging.WARNING:
            log.warning("TensorRT: %s", message)


@contextlib.contextmanager
def _capture_polygraphy_log() -> Iterator[list[str]]:
    """Route Polygraphy's logger (which carries TensorRT's INFO lines at VERBOSE) into a list."""
    handler = _ListHandler()
    py_logger = logging.getLogger("Polygraphy")
    g_logger = poly_logger.G_LOGGER
    saved = (g_logger.use_python_logging_system, g_logger.module_severity, py_logger.level, py_logger.propagate)
    g_logger.use_python_logging_system = True
    g_logger.module_severity = g_logger.VERBOSE
    py_logger.addHandler(handler)
    py_logger.setLevel(1)
    py_logger.propagate = False
    try:
        yield handler.lines
    finally:
        py_logger.removeHandler(handler)
        g_logger.use_python_logging_system, g_logger.module_severity = saved[0], saved[1]
        py_logger.setLevel(saved[2])
        py_logger.propagate = saved[3]
