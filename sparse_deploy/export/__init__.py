"""ONNX export of dense and 2:4-sparse denoisers, each graph verified before it is kept.

One module per job:

=============  ==============================================================================
``config``     :class:`ExportConfig`: what to export, from which weights, and where
``plan``       :func:`plan_sources`: where the dense and sparse graphs come from (no model built)
``graph``      :func:`export_all` / :func:`export_graph`: the export, staged and renamed into place
``verify``     :func:`check_parity` (ONNX Runtime vs PyTorch, the fp16 reference) and
               :func:`check_sparsity` (Polygraphy's 2:4 check), :func:`layer_initializers`
``cli``        ``python -m sparse_deploy.export``
=============  ==============================================================================

Names, formats, manifest reading and the staleness rule belong to :mod:`sparse_deploy.artifacts`
(re-exported here: ``ONNX_FORMAT``, ``KINDS``, ``read_onnx_manifest``).
"""

from __future__ import annotations

from ..artifacts import KINDS, ONNX_FORMAT, read_onnx_manifest
from .cli import add_profile_arguments, add_source_arguments, config_from_args, main
from .config import ExportConfig
from .graph import EXPORTER, OPSET, ExportedGraph, export_all, export_graph
from .plan import GraphSource, plan_sources
from .verify import (
    PARITY_BATCHES,
    PARITY_TOLERANCE,
    check_parity,
    check_sparsity,
    layer_initializers,
)

__all__ = [
    "KINDS",
    "ONNX_FORMAT",
    "OPSET",
    "EXPORTER",
    "PARITY_BATCHES",
    "PARITY_TOLERANCE",
    "ExportConfig",
    "GraphSource",
    "ExportedGraph",
    "plan_sources",
    "export_all",
    "export_graph",
    "check_parity",
    "check_sparsity",
    "layer_initializers",
    "read_onnx_manifest",
    "add_profile_arguments",
    "add_source_arguments",
    "config_from_args",
    "main",
]
