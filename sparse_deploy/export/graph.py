"""The export itself: one verified ONNX graph per kind x precision (:func:`export_all`).

For one preset this writes up to four graphs, ``<out>/{dense,sparse}-{fp32,fp16}.onnx``, each
with a manifest ``<stem>.json`` beside it (names, formats and the staleness rule are
:mod:`sparse_deploy.artifacts`'). Graphs whose weights exceed protobuf's 2 GiB limit (DiT-XL in
fp32), or any graph with ``--external-data``, keep their weights in ``<stem>.onnx.data`` beside
the graph (:mod:`sparse_deploy.onnx_files`).

Every graph is written and verified (:mod:`.verify`) in a staging folder and only then renamed
into place. A graph that is still current is reused as it is: its manifest is not rewritten.

The TorchScript exporter is used (``dynamo=False``, opset 18): in probes here the dynamo exporter
produced a wrong graph at opset 18 with a dynamic batch, which the parity check exists to catch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from tqdm.auto import tqdm

from ..artifacts import (
    KINDS,
    ONNX_FORMAT,
    Artifact,
    graph_path,
    manifest_path,
    read_onnx_manifest,
    stale_reason,
    write_artifact_manifest,
)
from ..contract import PRECISIONS, IOContract, contract_for, float_dtype
from ..errors import SparseDeployError
from ..masks import PATTERN
from ..models import Denoiser
from ..onnx_files import data_path, describe_data, save_with_external_data
from ..outputs import claim_output
from ..precision import (
    FP32_OPS,
    fp16_attention,
    fp32_op_dtypes,
    fp32_ops_problem,
    to_fp16,
)
from ..presets import PRESET_SPEC, Preset
from ..provenance import library_versions, settle_modes, sha256_file, temp_dir, timestamp
from ..schedule import schedule_record
from . import verify
from .config import ExportConfig
from .plan import GraphSource, plan_sources

__all__ = ["OPSET", "EXPORTER", "ExportedGraph", "export_graph", "export_all"]

log = logging.getLogger(__name__)

OPSET = 18
EXPORTER = "torch.onnx.export(dynamo=False)"
# protobuf's 2 GiB message limit, less room for the graph itself.
_ONNX_SINGLE_FILE_LIMIT = 2**31 - 64 * 2**20
# Libraries whose versions shape an ONNX graph (TensorRT only matters for engines).
_ONNX_LIBS = (
    "python",
    "sparse_deploy",
    "torch",
    "diffusers",
    "onnx",
    "onnxruntime",
    "polygraphy",
    "numpy",
    "safetensors",
)


def _fingerprint_inputs(
    preset: Preset, kind: str, precision: str, source: GraphSource, external_data: bool = False
) -> dict[str, Any]:
    """Everything that decides a graph: what its manifest's ``fingerprint`` hashes."""
    versions = library_versions()
    return {
        "format": ONNX_FORMAT,
        "preset": preset.to_dict(),
        "kind": kind,
        "precision": precision,
        "opset": OPSET,
        "exporter": EXPORTER,
        "source": source.identity,
        "external_data": external_data,
        "parity": {
            "batches": list(verify.PARITY_BATCHES),
            "tolerance": verify.PARITY_TOLERANCE[precision],
            "null_label": True,
            "fp16_reference": precision == "fp16",
        },
        "fp32_ops": list(FP32_OPS) if precision == "fp16" else None,
        "versions": {lib: versions.get(lib) for lib in _ONNX_LIBS},
    }


class ExportedGraph(Artifact):
    """One graph on disk with its manifest."""


def _torch_export(model: nn.Module, contract: IOContract, raw: Path) -> None:
    """``torch.onnx.export`` of ``model`` (fp16 attention softmax in fp32 for fp16 graphs) to ``raw``."""
    fp16 = contract.precision == "fp16"
    example = verify.torch_inputs(contract.sample_inputs(2, seed=0))
    example = (example[0].to(getattr(torch, float_dtype(contract.precision))), *example[1:])
    with warnings.catch_warnings(), torch.no_grad(), fp16_attention() if fp16 else contextlib.nullcontext():
        warnings.simplefilter("ignore")  # tracer warnings about python-side shape math
        try:
            torch.onnx.export(
                model,
                example,
                str(raw),
                input_names=contract.input_names,
                output_names=contract.output_names,
                dynamic_axes=contract.dynamic_axes(),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:
            raise SparseDeployError(
                f"ONNX export of {raw.name} failed ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
            ) from exc


def _write_staged(model: nn.Module, contract: IOContract, stage: Path, name: str, external: bool) -> Path:
    """Export into ``stage`` under the final file name (an external-data graph names its data file)."""
    raw = stage / "raw" / name  # over 2 GiB, torch writes one file per initializer here
    raw.parent.mkdir()
    _torch_export(model, contract, raw)
    staged = stage / name
    if external or len(list(raw.parent.iterdir())) > 1:
        save_with_external_data(onnx.load(str(raw)), staged)
    else:
        os.replace(raw, staged)
    shutil.rmtree(raw.parent)
    return staged


def _verify(
    staged: Path,
    model: Denoiser,
    export_model: nn.Module,
    contract: IOContract,
    sparse_layers: Sequence[str],
    kind: str,
) -> dict[str, Any]:
    """Parity, the fp32 ops of an fp16 graph, and 2:4 sparsity: the manifest entries, or an error."""
    fp16 = contract.precision == "fp16"
    parity = verify.check_parity(staged, model, contract, fp16_reference=export_model if fp16 else None)
    onnx_model = onnx.load(str(staged))
    fp32_ops = fp32_op_dtypes(onnx_model) if fp16 else None
    problem = fp32_ops_problem(fp32_ops) if fp16 else None
    if problem:
        raise SparseDeployError(f"fp16 export of {staged.name}: {problem}; the graph was not kept")
    sparsity = verify.check_sparsity(onnx_model, export_model, contract.precision, sparse_layers, kind)
    return {"parity": parity, "fp32_ops": fp32_ops, "sparsity_check": sparsity}


def _install(staged: Path, path: Path) -> tuple[str, dict[str, Any] | None]:
    """Rename a verified graph (and its data file) into place; ``(sha256, data-file entry)``."""
    digest, data_entry = sha256_file(staged), describe_data(staged)
    # An older manifest must never describe the new graph, not even for a moment.
    manifest_path(path).unlink(missing_ok=True)
    if data_entry:
        os.replace(data_path(staged), data_path(path))
    else:
        data_path(path).unlink(missing_ok=True)
    os.replace(staged, path)
    return digest, data_entry


_UNVERIFIED = {
    "parity": {"skipped": "exported with verify=False"},
    "fp32_ops": None,
    "sparsity_check": {"skipped": "exported with verify=False"},
}


def export_graph(
    model: Denoiser,
    sparse_layers: Sequence[str],
    contract: IOContract,
    path: str | Path,
    *,
    kind: str,
    manifest_extra: dict[str, Any] | None = None,
    external_data: bool = False,
    inputs: dict[str, Any] | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Export ``model`` (fp32, eval, masks baked) at ``contract.precision``, verify it, keep it.

    The graph is written in a staging folder, checked for parity and sparsity, and only then
    renamed to ``path``; its manifest follows (with ``inputs`` and their fingerprint when given).
    Any failure leaves nothing under ``path`` (an older graph there is left as it was). Weights go
    to ``<path>.data`` (ONNX external data) when ``external_data`` is set or when they would not
    fit ONNX's 2 GiB single-file limit. ``verify=False`` skips the parity and sparsity checks (for a
    caller that only reads the graph's structure, e.g. to count MACs); its manifest says so and
    ``export_all`` never reuses it.

    Returns:
        The manifest written beside the graph.
    """
    path = Path(path)
    weight_bytes = sum(p.numel() for p in model.parameters()) * np.dtype(float_dtype(contract.precision)).itemsize
    external = external_data or weight_bytes > _ONNX_SINGLE_FILE_LIMIT
    export_model = to_fp16(model) if contract.precision == "fp16" else model  # fp16: norms stay fp32 (precision.py)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info(
        "exporting %s (%s%s) ...",
        path.name,
        EXPORTER,
        f", external data: {weight_bytes / 2**30:.2f} GiB of weights" if external else "",
    )
    # .<name>.stage-<pid>: a killed export's stage (graph-sized) is removed by the next export of this graph.
    with temp_dir(path, "stage") as stage:
        staged = _write_staged(export_model, contract, stage, path.name, external)
        checks = _verify(staged, model, export_model, contract, sparse_layers, kind) if verify else _UNVERIFIED
        settle_modes(stage)
        digest, data_entry = _install(staged, path)
    manifest = {
        "format": ONNX_FORMAT,
        "file": path.name,
        "onnx_sha256": digest,
        "external_data": data_entry,
        "kind": kind,
        "preset": contract.preset,
        "contract": contract.to_dict(),  # its precision is the graph's
        "opset": OPSET,
        "exporter": EXPORTER,
        "sparse_layers": sorted(sparse_layers),
        "pattern": PATTERN if kind == "sparse" else None,
        **checks,  # parity, fp32_ops (fp16: per op type that must stay fp32, nodes reading fp32/fp16), sparsity_check
        "versions": library_versions(),
        "created": timestamp(),
        **(manifest_extra or {}),
    }
    return write_artifact_manifest(path, manifest, inputs)


def export_all(config: ExportConfig, *, reuse: bool = False) -> list[ExportedGraph]:
    """Export every requested kind x precision; with ``reuse``, keep graphs that are up to date.

    A reused graph is returned with the manifest it has on disk, untouched (its contract keeps the
    batch profile it was exported with: the graph's batch axis is dynamic either way).
    """
    preset, sources = plan_sources(config)
    out = Path(config.out) if config.out is not None else Path("export") / preset.name
    with claim_output(out, "export", "--out" if config.out is not None else "the export folder"):
        return _export_all(config, preset, sources, out, reuse)


def _export_all(
    config: ExportConfig, preset: Preset, sources: dict[str, GraphSource], out: Path, reuse: bool
) -> list[ExportedGraph]:

    results: list[ExportedGraph] = []
    todo = [
        (kind, precision)
        for kind in KINDS
        if kind in config.kinds
        for precision in PRECISIONS
        if precision in config.precisions
    ]
    for kind, precision in tqdm(todo, desc=f"export {preset.name}", unit="graph", disable=len(todo) < 2):
        source, path = sources[kind], graph_path(out, kind, precision)
        inputs = _fingerprint_inputs(preset, kind, precision, source, config.external_data)
        reason = stale_reason(path, inputs) if reuse else "not asked to reuse"
        if reason is None:
            log.info("%s is up to date; reusing it", path)
            results.append(ExportedGraph(kind, precision, path, read_onnx_manifest(path), reused=True))
            continue
        if reuse:
            log.info("re-exporting %s (%s)", path, reason)
        for note in source.notes:
            log.info(note)
        model, sparse_layers = source.load()
        manifest = export_graph(
            model,
            sparse_layers,
            contract_for(preset, precision, config.profile),
            path,
            kind=kind,
            inputs=inputs,
            manifest_extra={
                "source": source.identity,
                PRESET_SPEC: preset.to_dict(),
                "schedule": schedule_record(preset.schedule),
            },
            external_data=config.external_data,
        )
        results.append(ExportedGraph(kind, precision, path, manifest))
    return results
