"""Per-layer and total MACs of a model, cross-checked against its exported ONNX graph.

The graph comes from the exporter (:func:`sparse_deploy.export.export_graph`) without its
verification (``verify=False``): counting MACs reads the graph's structure, and the graphs that
ship are verified by ``export`` itself.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import SparseDeployError
from ..sources import run_preset
from .machine import record

__all__ = ["macs_crosscheck", "mac_report"]

log = logging.getLogger(__name__)


def _layer_calls(model, inputs) -> dict[str, int]:
    import torch
    from torch import nn

    from ..models import short_name

    calls: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):

            def hook(_m, _i, _o, name=name):
                calls[name] = calls.get(name, 0) + 1

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return {short_name(k): v for k, v in calls.items()}


def macs_crosscheck(model, onnx_path: str | Path) -> dict[str, Any]:
    """Model MACs (PyTorch FLOP counter and Linear/Conv hooks) against the graph's MACs at batch 1.

    The exporter computes an expression once where the PyTorch module calls a layer twice
    (diffusers' DiT re-runs block 0's timestep embedder for the output layer); such layers are
    listed, and ``model_single_call`` removes the repeats, which is what the graph should equal.
    ``onnx_path`` must be a graph exported from this model's weights (layers are matched by content).
    """
    import onnx

    from ..export import layer_initializers
    from ..macs import layer_macs, onnx_macs, total_macs
    from ..models import example_inputs, short_name

    model = model.eval()
    inputs = example_inputs(model.preset, 1)
    per_layer = {short_name(k): v for k, v in layer_macs(model, inputs).items()}
    calls = _layer_calls(model, inputs)
    model_total = total_macs(model, inputs)
    graph = onnx.load(str(onnx_path))
    counted = onnx_macs(graph, batch=1)
    inits = layer_initializers(graph, model, "fp32")
    shared = {i for i in inits.values() if list(inits.values()).count(i) > 1}
    layers = []
    repeats = 0
    for name, macs in per_layer.items():
        n = calls.get(name, 1)
        repeats += macs - macs // n
        init = inits.get(name)
        graph_macs = counted.by_weight.get(init) if init is not None and init not in shared else None
        layers.append(
            {
                "layer": name,
                "model_macs": macs,
                "calls": n,
                "onnx_macs": graph_macs,
                "agrees": None if graph_macs is None else graph_macs == macs // n,
            }
        )
    single = model_total - repeats
    return {
        "onnx_graph": str(onnx_path),
        "batch": 1,
        "model_total": model_total,
        "model_single_call": single,
        "onnx_total": counted.total,
        "onnx_by_op": counted.by_op,
        "relative_difference": (counted.total - model_total) / max(model_total, 1),
        "relative_difference_single_call": (counted.total - single) / max(single, 1),
        "repeated_layers": [l["layer"] for l in layers if l["calls"] > 1],
        "unmatched_layers": [l["layer"] for l in layers if l["onnx_macs"] is None],
        "disagreeing_layers": [l["layer"] for l in layers if l["agrees"] is False],
        "layers": layers,
    }


def _load_model(model_name: str | None, checkpoint: str | Path | None):
    """``(model, sparse layers, masked layers, skipped layers, source)`` of the report's model, masks baked."""
    from ..checkpoint import load_checkpoint, read_manifest
    from ..models import build_model
    from ..sparsify import SparsityConfig, bake_, select_layers

    if checkpoint is not None:
        manifest = read_manifest(checkpoint)
        if model_name is not None and manifest["preset"] != model_name:
            raise SparseDeployError(
                f"checkpoint '{checkpoint}' holds preset '{manifest['preset']}', not '{model_name}'"
            )
        model, manifest = load_checkpoint(checkpoint)
        sparse_layers = list(manifest.get("masked_layers") or [])
        masked = list(sparse_layers)  # baked below: the graph's weights of these layers are 2:4
        skipped: dict[str, str] = {}
        source = f"checkpoint {checkpoint}"
    else:
        if model_name is None:
            raise SparseDeployError("macs needs --model or --checkpoint")
        import torch

        torch.manual_seed(0)
        model = build_model(run_preset(model_name), announce_random=False)
        sparse_layers, skipped, source = [], {}, "random init (MACs do not depend on weights)"
        masked = []
    if not sparse_layers:
        choice = select_layers(model, SparsityConfig())
        sparse_layers, skipped = choice.selected, choice.skipped
    bake_(model)
    return model.eval(), sparse_layers, masked, skipped, source


def _graph_check(model, masked: Sequence[str], sparse_layers: Sequence[str]) -> tuple[dict[str, Any], int]:
    """The per-layer cross-check against a fresh, unverified fp32 export, and the graph's MACs in the 2:4 layers."""
    from ..contract import contract_for
    from ..export import export_graph

    with tempfile.TemporaryDirectory(prefix="bench-macs-") as tmp:
        graph = Path(tmp) / "model-fp32.onnx"
        export_graph(
            model, masked, contract_for(model.preset, "fp32"), graph, kind="sparse" if masked else "dense", verify=False
        )
        check = macs_crosscheck(model, graph)
    check["onnx_graph"] = "fresh fp32 export of this model (temporary)"
    sparse_onnx = sum(l["onnx_macs"] or 0 for l in check["layers"] if l["layer"] in set(sparse_layers))
    return check, sparse_onnx


def mac_report(
    model_name: str | None = None,
    checkpoint: str | Path | None = None,
    onnx_graphs: Sequence[str | Path] = (),
    command: str | None = None,
) -> dict[str, Any]:
    """Per-layer MACs, sparse coverage (dense vs effective MACs) and the ONNX cross-check.

    The model is the checkpoint's (its masked layers are the sparse ones), or a random-init model
    of the preset with the default layer selection. A fresh fp32 graph of the model is exported
    (unverified: only its structure is read) to a temporary folder for the per-layer cross-check;
    ``onnx_graphs`` (e.g. engines' source graphs) are counted too.
    """
    from ..macs import onnx_macs
    from ..models import example_inputs
    from ..sparsify import coverage_report, pruned_macs

    started = time.perf_counter()
    model, sparse_layers, masked, skipped, source = _load_model(model_name, checkpoint)
    preset = model.preset
    coverage = coverage_report(model, example_inputs(preset, 1), sparse_layers, skipped)
    check, sparse_onnx = _graph_check(model, masked, sparse_layers)
    graphs = {}
    for path in onnx_graphs:
        counted = onnx_macs(path, batch=1)
        graphs[str(path)] = {"total": counted.total, "by_op": counted.by_op}
    cov = coverage.to_dict()
    results = {
        "model": preset.name,
        "source": source,
        "per_sample": True,
        "dense_macs": coverage.model_macs,
        "sparse_layer_macs": coverage.sparse_macs,
        "effective_sparse_macs": coverage.effective_macs,
        "sparse_share": coverage.sparse_share,
        "linear_conv_macs": sum(coverage.layer_macs.values()),
        "effective_over_dense": coverage.effective_macs / max(coverage.model_macs, 1),
        "summary": coverage.summary(),
        "sparse_layers": sorted(sparse_layers),
        "skipped": skipped,
        "onnx_check": check,
        "onnx_dense_macs": check["onnx_total"],
        "onnx_effective_sparse_macs": check["onnx_total"] - pruned_macs(sparse_onnx),
        "onnx_graphs": graphs,
        "coverage": {k: v for k, v in cov.items() if k != "layer_macs"},
    }
    settings = {
        "model": preset.name,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "onnx": [str(p) for p in onnx_graphs],
    }
    return record("macs", command, settings, results, started)
