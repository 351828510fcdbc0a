"""ONNX export of dense and 2:4-sparse denoisers, each graph verified before it is kept.

For one preset this writes up to four graphs, ``<out>/{dense,sparse}-{fp32,fp16}.onnx``, each
with a manifest ``<stem>.json`` beside it. Where the two graphs come from:

* a **sparse checkpoint** (its manifest lists ``masked_layers``): the sparse graph is that model
  with its masks baked into the weights; the dense graph comes from the dense checkpoint its
  manifest names (``dense_checkpoint``) or from ``--dense-checkpoint``.
* a **dense checkpoint**, ``--weights`` or random init: the dense graph is that model, the sparse
  graph a one-shot magnitude 2:4 prune of it with **no fine-tuning** (a baseline, said loudly), or
  an error with ``--require-masks``.

Graphs whose weights exceed protobuf's 2 GiB limit (DiT-XL in fp32), or any graph with
``--external-data``, keep their weights in ``<stem>.onnx.data`` beside the graph (see
:mod:`sparse_deploy.onnx_files`).

Every graph is verified in a staging folder and only then renamed into place:

1. parity - ONNX Runtime (CPU) against the PyTorch fp32 model on fresh random inputs at batch
   1 and 3 (the last label of batch 3 is the null label: the guidance path), within
   :data:`PARITY_TOLERANCE`; for fp16 graphs also the fp16 PyTorch model, which really computes
   in fp16 (ONNX Runtime's CPU provider computes most fp16 ops in fp32), against the fp32 one and
   against ONNX Runtime, and the ops that must stay fp32 (:mod:`sparse_deploy.precision`) are
   read back from the graph;
2. sparsity - Polygraphy's ``SparsityPruner.check()``: in a sparse graph every masked layer's
   weight initializer must be reported 2:4-sparse; a dense graph should report none.

The TorchScript exporter is used (``dynamo=False``, opset 18): in probes here the dynamo exporter
produced a wrong graph at opset 18 with a dynamic batch, which the parity check exists to catch.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from . import models
from .contract import PRECISIONS, BatchProfile, IOContract, contract_for
from .cliargs import comma_list
from .errors import SparseDeployError, cli_entry
from .guards import check_output_dir
from .models import Denoiser, short_name
from .precision import FP32_OPS, fp16_attention, fp32_op_dtypes, fp32_ops_problem, to_fp16
from .presets import PRESET_SPEC, Preset, get_preset, preset_from_manifest
from .schedule import schedule_record
from .sources import is_path, run_preset
from .onnx_files import data_path, data_problem, describe_data, save_with_external_data
from .provenance import library_versions, seal_problem, sha256_file, timestamp, write_json_atomic, write_manifest
from .masks import PATTERN
from .sparsify import SparsityConfig, bake_, select_layers, sparsify_

__all__ = [
    "KINDS",
    "ONNX_FORMAT",
    "OPSET",
    "PARITY_BATCHES",
    "PARITY_TOLERANCE",
    "ExportConfig",
    "GraphSource",
    "ExportedGraph",
    "load_checkpoint_model",
    "plan_sources",
    "export_all",
    "export_graph",
    "check_parity",
    "ort_cpu_session",
    "check_sparsity",
    "layer_initializers",
    "read_onnx_manifest",
    "onnx_manifest_path",
    "main",
]

log = logging.getLogger(__name__)

KINDS = ("dense", "sparse")
ONNX_FORMAT = "sparse-deploy-onnx/1"
OPSET = 18
EXPORTER = "torch.onnx.export(dynamo=False)"
PARITY_BATCHES = (1, 3)
# Parity passes when max|onnx - torch| <= atol + rtol * max|torch| over the whole output.
# fp32: the ONNX Runtime graph against the same fp32 model (seen here: ~1e-6 on DiT-S).
# fp16: the ONNX Runtime fp16 graph against the *fp32* PyTorch model, so the bound also covers
# rounding the weights and activations to half precision (seen here: 5e-4 of the output scale on
# random-init DiT-S and tiny-dit, 7e-4 on tiny-unet); the same bound holds the fp16 PyTorch model
# (fp16 arithmetic) against the fp32 one and against ONNX Runtime (seen here on tiny-dit/tiny-unet:
# 8e-4 and 7e-4 of the output scale). Both bounds leave ~10x headroom or more.
PARITY_TOLERANCE: dict[str, dict[str, float]] = {
    "fp32": {"atol": 1e-5, "rtol": 1e-4},
    "fp16": {"atol": 2e-3, "rtol": 5e-3},
}
# protobuf's 2 GiB message limit, less room for the graph itself.
_ONNX_SINGLE_FILE_LIMIT = 2**31 - 64 * 2**20
# Libraries whose versions shape an ONNX graph (TensorRT only matters for engines).
_ONNX_LIBS = ("python", "sparse_deploy", "torch", "diffusers", "onnx", "onnxruntime", "polygraphy", "numpy", "safetensors")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


MAX_BATCH = 4096  # largest batch profile accepted; far beyond what one GPU holds for these models


@dataclass
class ExportConfig:
    """What to export, from which weights, and where.

    Attributes:
        model: preset name; taken from the checkpoint when omitted.
        checkpoint: a checkpoint folder (``checkpoint.save_checkpoint``), dense or sparse.
        dense_checkpoint: the dense checkpoint for the dense graph of a sparse checkpoint (overrides
            the sparse checkpoint manifest's ``dense_checkpoint``).
        weights: a diffusers model folder or a ``.safetensors`` file (dense).
        out: folder for the graphs; default ``export/<preset>``.
        precisions: ``fp32`` and/or ``fp16``.
        kinds: ``dense`` and/or ``sparse``.
        max_batch / opt_batch: the batch profile recorded in the contract (the graph's batch axis
            is dynamic either way; engines are built for this profile).
        require_masks: refuse a sparse export of a model without masks instead of pruning it
            one-shot.
        seed: seed of the random initialisation when there is neither checkpoint nor weights.
        external_data: write every graph's weights to ``<graph>.onnx.data`` (ONNX external
            data); graphs over 2 GiB of weights get it regardless.
    """

    model: str | None = None
    checkpoint: Path | None = None
    dense_checkpoint: Path | None = None
    weights: Path | None = None
    out: Path | None = None
    precisions: tuple[str, ...] = PRECISIONS
    kinds: tuple[str, ...] = KINDS
    max_batch: int = 64
    opt_batch: int | None = None
    require_masks: bool = False
    seed: int = 0
    external_data: bool = False

    def validate(self) -> "ExportConfig":
        if is_path(self.model):  # a pipeline/model folder or file given as --model: it is the weights
            if self.weights is not None:
                raise SparseDeployError(f"--model '{self.model}' is a path and --weights '{self.weights}' too; pass the model once")
            self.model, self.weights = None, Path(self.model)
        if self.model is not None:
            get_preset(self.model)
        if self.checkpoint is not None and self.weights is not None:
            raise SparseDeployError("pass either --checkpoint or --weights, not both")
        if self.model is None and self.checkpoint is None and self.weights is None:
            raise SparseDeployError(
                "--model is required unless --checkpoint names a checkpoint or --weights a diffusers pipeline/model folder (whose config names the layout)"
            )
        _check_choices("--precision", self.precisions, PRECISIONS)
        _check_choices("--kinds", self.kinds, KINDS)
        self.profile.validate()
        if self.out is not None:
            check_output_dir(self.out, "--out")
        return self

    @property
    def profile(self) -> BatchProfile:
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise SparseDeployError(f"--max-batch must be between 1 and {MAX_BATCH}, got {self.max_batch}")
        opt = self.opt_batch if self.opt_batch is not None else min(8, self.max_batch)
        if not 1 <= opt <= self.max_batch:
            raise SparseDeployError(f"--opt-batch must be between 1 and --max-batch {self.max_batch}, got {opt}")
        return BatchProfile(min=1, opt=opt, max=self.max_batch)


def _check_choices(flag: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    if not values:
        raise SparseDeployError(f"{flag} needs at least one of: {', '.join(allowed)}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise SparseDeployError(f"unknown {flag} value(s) {bad}; choose from: {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise SparseDeployError(f"{flag} lists a value twice: {list(values)}")


# --------------------------------------------------------------------------------------------
# Where the graphs come from
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def load_checkpoint_model(path: str | Path) -> tuple[Denoiser, dict[str, Any]]:
    """``checkpoint.load_checkpoint`` (hash check, masks, strict load), model in eval mode."""
    return ckpt.load_checkpoint(path)


def _hash_weights_path(path: Path) -> str:
    """sha256 of a weights file, or of the sorted file hashes of a diffusers folder."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"))
    for p in files:
        digest.update(f"{p.name}:{sha256_file(p)}\n".encode())
    return digest.hexdigest()


def _weights_file_or_dir(path: Path) -> Path:
    """The file or model folder holding the weights of a pipeline, model folder or file."""
    from .sources import resolve_source

    return resolve_source(path).weights


def _resolve_relative(value: str, base: Path) -> Path:
    """A path from a manifest: as given, else relative to the folder holding the manifest's folder."""
    p = Path(value)
    if p.is_absolute() or p.exists():
        return p
    for root in (base.parent, base):
        if (root / p).exists():
            return root / p
    return p


@dataclass
class GraphSource:
    """Where one kind of graph (dense or sparse) comes from, and how to build its model.

    ``identity`` is what the manifest records and what decides whether an existing export is
    still current; ``load`` builds the fp32 model (baked, eval mode) only when it is needed.
    """

    kind: str
    identity: dict[str, Any]
    load: Callable[[], tuple[Denoiser, list[str]]]
    notes: list[str] = field(default_factory=list)


class _Once:
    """Memoise a zero-argument loader (the dense and sparse graphs may share one base model)."""

    def __init__(self, fn: Callable[[], Any]):
        self._fn = fn
        self._value: Any = None
        self._done = False

    def __call__(self) -> Any:
        if not self._done:
            self._value = self._fn()
            self._done = True
        return self._value


def _checkpoint_identity(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    weights = path / ckpt.WEIGHTS
    if not weights.is_file():
        raise SparseDeployError(f"checkpoint '{path}' has no {ckpt.WEIGHTS}; re-create the checkpoint")
    return {
        "type": "checkpoint",
        "path": str(path.resolve()),
        "weights_sha256": sha256_file(weights),
        "step": manifest.get("step"),
        "sparsity_mode": (manifest.get("sparsity") or {}).get("mode") if manifest.get("masked_layers") else None,
    }


def _load_dense_checkpoint(path: Path) -> tuple[Denoiser, list[str]]:
    model, manifest = load_checkpoint_model(path)
    if manifest.get("masked_layers"):
        raise SparseDeployError(
            f"'{path}' is a sparse checkpoint ({len(manifest['masked_layers'])} masked layers) but was given as the "
            "dense checkpoint; point --dense-checkpoint at the dense model the sparse one was fine-tuned from"
        )
    return model, []


def _oneshot(base: Callable[[], tuple[Denoiser, list[str]]]) -> Callable[[], tuple[Denoiser, list[str]]]:
    def load() -> tuple[Denoiser, list[str]]:
        model = copy.deepcopy(base()[0])
        config = SparsityConfig(mode="oneshot")
        choice = select_layers(model, config)
        sparsify_(model, config, layers=choice.selected)
        layers = bake_(model)
        log.warning(
            "sparse graph = ONE-SHOT magnitude 2:4 pruning of %d layers with NO FINE-TUNING: a baseline, expect "
            "worse samples than a fine-tuned sparse checkpoint",
            len(layers),
        )
        return model.eval(), sorted(layers)

    return load


def plan_sources(config: ExportConfig) -> tuple[Preset, dict[str, GraphSource]]:
    """Work out the preset and where each requested kind of graph comes from (no model is built)."""
    config.validate()
    sources: dict[str, GraphSource] = {}
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
        manifest = ckpt.read_manifest(path)
        preset_name = manifest.get("preset")
        if config.model is not None and preset_name != config.model:
            raise SparseDeployError(
                f"checkpoint '{path}' holds preset '{preset_name}', not '{config.model}'; drop --model or pick the matching one"
            )
        preset = preset_from_manifest(manifest)
        identity = _checkpoint_identity(path, manifest)
        masked = list(manifest.get("masked_layers") or [])
        if masked:
            mode = identity["sparsity_mode"]

            def load_sparse() -> tuple[Denoiser, list[str]]:
                model, _ = load_checkpoint_model(path)
                return model.eval(), sorted(bake_(model))

            if "sparse" in config.kinds:
                sources["sparse"] = GraphSource(
                    "sparse", {**identity, "masks": "checkpoint", "fine_tuned": mode != "oneshot"}, _Once(load_sparse),
                    [f"sparse graph: {len(masked)} masked layers of checkpoint {path} (mode {mode}), masks baked into the weights"],
                )
            if "dense" in config.kinds:
                dense_path = config.dense_checkpoint
                named = manifest.get("dense_checkpoint")
                dense_weights = manifest.get("dense_weights")
                if dense_path is None and not named and dense_weights:
                    # Fine-tuned from diffusers weights: the dense graph is those weights.
                    weights = Path(dense_weights)
                    if not weights.exists():
                        raise SparseDeployError(
                            f"checkpoint '{path}' was fine-tuned from '{weights}', which no longer exists; pass --dense-checkpoint or --kinds sparse"
                        )
                    sources["dense"] = GraphSource(
                        "dense", {"type": "weights", "path": str(weights.resolve()), "weights_sha256": _hash_weights_path(_weights_file_or_dir(weights))},
                        _Once(lambda: (models.build_model(preset, weights).eval(), [])), [f"dense graph: weights {weights}"],
                    )
                    return preset, sources
                if dense_path is None and named:
                    dense_path = _resolve_relative(str(named), path)
                elif dense_path is not None and named and Path(dense_path).resolve() != _resolve_relative(str(named), path).resolve():
                    log.warning("--dense-checkpoint %s overrides the dense checkpoint %s named in %s", dense_path, named, path)
                if dense_path is None:
                    raise SparseDeployError(
                        f"checkpoint '{path}' is sparse and its manifest names no dense_checkpoint, so there is no dense "
                        "model to export; pass --dense-checkpoint DIR (the model it was fine-tuned from) or --kinds sparse"
                    )
                dense_path = Path(dense_path)
                dense_manifest = ckpt.read_manifest(dense_path)
                if dense_manifest.get("preset") != preset.name:
                    raise SparseDeployError(
                        f"dense checkpoint '{dense_path}' holds preset '{dense_manifest.get('preset')}', but the sparse "
                        f"checkpoint is '{preset.name}'; pass the dense checkpoint of the same model"
                    )
                sources["dense"] = GraphSource(
                    "dense", _checkpoint_identity(dense_path, dense_manifest), _Once(lambda: _load_dense_checkpoint(dense_path)),
                    [f"dense graph: checkpoint {dense_path}"],
                )
            return preset, sources
        base_identity = identity
        base = _Once(lambda: _load_dense_checkpoint(path))
        base_note = f"checkpoint {path} (dense: no masks)"
    elif config.weights is not None:
        weights = Path(config.weights)
        if not weights.exists():
            raise SparseDeployError(f"weights '{weights}' do not exist; check the path")
        preset = run_preset(config.model, weights)
        base_identity = {"type": "weights", "path": str(weights.resolve()), "weights_sha256": _hash_weights_path(_weights_file_or_dir(weights))}
        base = _Once(lambda: (models.build_model(preset, weights).eval(), []))
        base_note = f"weights {weights}"
    else:
        preset = get_preset(config.model)
        log.warning(
            "no --checkpoint or --weights: exporting preset '%s' with RANDOM weights (seed %d); the graphs are "
            "fine for latency work and MEANINGLESS for image quality",
            preset.name, config.seed,
        )

        def random_model() -> tuple[Denoiser, list[str]]:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                with _quiet(models.log):  # announced above, once
                    return models.build_model(preset, None, announce_random=True).eval(), []

        base_identity = {"type": "random", "seed": config.seed, "quality": "meaningless (random init)"}
        base = _Once(random_model)
        base_note = f"RANDOM init (seed {config.seed})"

    if "dense" in config.kinds:
        sources["dense"] = GraphSource("dense", dict(base_identity), base, [f"dense graph: {base_note}"])
    if "sparse" in config.kinds:
        where = f"checkpoint '{config.checkpoint}'" if config.checkpoint is not None else base_note
        if config.require_masks:
            raise SparseDeployError(
                f"a sparse export of a model with no masks: {where} has no masked layers and --require-masks forbids "
                "one-shot pruning; export a sparse (fine-tuned) checkpoint, or drop --require-masks for a one-shot "
                "magnitude 2:4 baseline with no fine-tuning"
            )
        oneshot = SparsityConfig(mode="oneshot")
        sources["sparse"] = GraphSource(
            "sparse",
            {**base_identity, "masks": "oneshot-magnitude", "fine_tuned": False, "sparsity": oneshot.to_dict()},
            _Once(_oneshot(base)),
            [f"sparse graph: ONE-SHOT magnitude 2:4 of {base_note}, NO FINE-TUNING"],
        )
    return preset, sources


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def ort_cpu_session(path: Path, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An ONNX Runtime session (CPU provider by default) with one-sentence load errors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise SparseDeployError(f"ONNX Runtime cannot load '{path}' ({str(exc).splitlines()[0]})") from exc


def _torch_inputs(feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
    tensors = []
    for name, value in feeds.items():
        t = torch.from_numpy(value)
        tensors.append(t.float() if name == "sample" else t)
    return tensors


def _max_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if np.isfinite(a).all() and np.isfinite(b).all() else float("inf")


@torch.no_grad()
def _run_fp16(model: nn.Module, feeds: dict[str, np.ndarray], device: torch.device) -> np.ndarray:
    tensors = [t.to(device) for t in _torch_inputs(feeds)]
    with fp16_attention():
        return model(tensors[0].half(), *tensors[1:]).float().cpu().numpy()


def check_parity(
    onnx_path: str | Path,
    reference: nn.Module,
    contract: IOContract,
    batches: Sequence[int] = PARITY_BATCHES,
    seed: int = 1234,
    fp16_reference: nn.Module | None = None,
) -> dict[str, Any]:
    """Compare ONNX Runtime (CPU) with the fp32 PyTorch ``reference`` on fresh random inputs.

    With ``fp16_reference`` (the fp16 model the graph was exported from, :func:`precision.to_fp16`),
    that model is run too - on the GPU where there is one, else on the CPU, in fp16 either way - and
    held against the fp32 reference (the fp16 arithmetic error) and against ONNX Runtime.

    Returns:
        The results per batch size; raises :class:`SparseDeployError` when any exceeds
        ``PARITY_TOLERANCE[contract.precision]``.
    """
    tol = PARITY_TOLERANCE[contract.precision]
    session = ort_cpu_session(Path(onnx_path))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, Any] = {
        "reference": "torch fp32 (CPU)",
        "runtime": "onnxruntime CPUExecutionProvider",
        "criterion": "max|onnx - torch| <= atol + rtol * max|torch|",
        "tolerance": tol,
        # contract.sample_inputs puts the null label last in every batch of 2+: the CFG path is checked
        "null_label_batches": [b for b in batches if b > 1] if contract.null_label is not None else [],
        "batches": {},
    }
    if fp16_reference is not None:
        results["fp16_reference"] = f"torch fp16 ({device.type}), fp32 ops: {', '.join(FP32_OPS)}"
        fp16_reference.to(device)
    failures = []
    try:
        for batch in batches:
            feeds = contract.sample_inputs(batch, seed=seed + batch)
            got = session.run([contract.output_names[0]], feeds)[0].astype(np.float32)
            with torch.no_grad():
                want = reference(*_torch_inputs(feeds)).float().numpy()
            if got.shape != want.shape:
                raise SparseDeployError(f"ONNX output shape {got.shape} differs from PyTorch's {want.shape} at batch {batch}")
            scale = float(np.max(np.abs(want)))
            bound = tol["atol"] + tol["rtol"] * scale
            errors = {"max_abs_err": _max_err(got, want)}
            if fp16_reference is not None:
                half = _run_fp16(fp16_reference, feeds, device)
                errors.update(fp16_arithmetic_err=_max_err(half, want), onnx_vs_fp16_err=_max_err(got, half))
            ok = all(e <= bound for e in errors.values())
            results["batches"][str(batch)] = {**errors, "max_abs_ref": scale, "bound": bound, "passed": ok}
            log.info("parity %s batch %d: %s (bound %.3g)", contract.precision, batch, ", ".join(f"{k} {v:.3g}" for k, v in errors.items()), bound)
            if not ok:
                failures.append(f"batch {batch}: " + ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in errors.items() if not v <= bound) + f" > {bound:.3g}")
    finally:
        if fp16_reference is not None:
            fp16_reference.cpu()
    results["passed"] = not failures
    if failures:
        raise SparseDeployError(
            f"ONNX graph '{onnx_path}' does not match PyTorch ({'; '.join(failures)}); the export is wrong and was not kept"
        )
    return results


def _content_key(array: np.ndarray) -> tuple:
    array = np.ascontiguousarray(array)
    return array.dtype.str, array.shape, hashlib.sha1(array.tobytes()).hexdigest()


def layer_initializers(onnx_model, model: nn.Module, precision: str) -> dict[str, str]:
    """Map every Linear/Conv2d of ``model`` to the ONNX initializer holding its weight.

    Matched by content: the exporter keeps Gemm and Conv weights as they are (``[out, in]``,
    ``[K, C, R, S]``) but pre-transposes MatMul weights to ``[in, out]`` and renames them.
    """
    from onnx import numpy_helper

    by_content: dict[tuple, str] = {}
    for init in onnx_model.graph.initializer:
        if init.data_type in (1, 10):  # FLOAT, FLOAT16
            by_content.setdefault(_content_key(numpy_helper.to_array(init)), init.name)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    found: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        weight = module.weight.detach().to(dtype).cpu().numpy()
        candidates = [weight] + ([weight.T] if weight.ndim == 2 else [])
        for candidate in candidates:
            init = by_content.get(_content_key(candidate))
            if init is not None:
                found[short_name(name)] = init
                break
    return found


def _consumer_nodes(onnx_model, initializer: str) -> list[str]:
    """Names of the MatMul/Gemm/Conv nodes reading ``initializer`` (through Transpose/Cast)."""
    consumers: dict[str, list] = {}
    for node in onnx_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found, frontier, seen = [], [initializer], set()
    while frontier:
        tensor = frontier.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for node in consumers.get(tensor, []):
            if node.op_type in ("MatMul", "Gemm", "Conv"):
                found.append(node.name)
            elif node.op_type in ("Transpose", "Cast"):
                frontier.extend(node.output)
    return sorted(found)


def check_sparsity(onnx_model, model: nn.Module, precision: str, sparse_layers: Sequence[str], kind: str) -> dict[str, Any]:
    """Ask Polygraphy which weight initializers are 2:4-sparse and check them against the masks.

    A sparse graph fails (:class:`SparseDeployError`, naming the layers) unless every masked
    layer's weight is reported sparse. A dense graph should report none; any it does report is
    recorded and logged (a dense checkpoint may hold structured zeros of its own).
    """
    from polygraphy.logger import G_LOGGER
    from polygraphy.tools.sparse import SparsityPruner

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = SparsityPruner(onnx_model)
        pruner.check()
    sparse_tensors = set(pruner.sparse_tensors)
    inits = layer_initializers(onnx_model, model, precision)
    by_init: dict[str, list[str]] = {}
    for layer, init in inits.items():
        by_init.setdefault(init, []).append(layer)
    reported_layers = sorted(layer for t in sparse_tensors for layer in by_init.get(t, []))
    result: dict[str, Any] = {
        "tool": "polygraphy.tools.sparse.SparsityPruner.check",
        "sparse_tensors": sorted(sparse_tensors),
        "sparse_tensor_layers": reported_layers,
        "unmapped_sparse_tensors": sorted(t for t in sparse_tensors if t not in by_init),
    }
    if kind == "sparse":
        missing = [layer for layer in sparse_layers if layer not in inits]
        not_sparse = [layer for layer in sparse_layers if layer in inits and inits[layer] not in sparse_tensors]
        result.update(
            masked_layers=len(sparse_layers),
            sparse_ok=[layer for layer in sparse_layers if inits.get(layer) in sparse_tensors],
            failed_layers=sorted(missing + not_sparse),
            unexpected_sparse=[layer for layer in reported_layers if layer not in set(sparse_layers)],
            layer_initializers={layer: inits[layer] for layer in sparse_layers if layer in inits},
            layer_nodes={layer: _consumer_nodes(onnx_model, inits[layer]) for layer in sparse_layers if layer in inits},
        )
        result["passed"] = not result["failed_layers"]
        if missing or not_sparse:
            parts = []
            if not_sparse:
                parts.append(f"{len(not_sparse)} masked layer(s) not reported 2:4-sparse by Polygraphy: {not_sparse[:6]}")
            if missing:
                parts.append(f"{len(missing)} masked layer(s) whose weight is not an initializer of the graph: {missing[:6]}")
            raise SparseDeployError(f"sparse export failed its sparsity check ({'; '.join(parts)}); the graph was not kept")
        log.info("sparsity check: all %d masked layers are 2:4-sparse in the graph", len(sparse_layers))
    else:
        result["passed"] = True
        if sparse_tensors:
            log.warning(
                "the dense graph holds %d weight tensor(s) that are already 2:4-sparse (%s); TensorRT would treat them as sparse",
                len(sparse_tensors), reported_layers[:4] or sorted(sparse_tensors)[:4],
            )
    return result


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def onnx_manifest_path(onnx_path: str | Path) -> Path:
    """``dense-fp32.onnx`` -> ``dense-fp32.json``."""
    return Path(onnx_path).with_suffix(".json")


def read_onnx_manifest(onnx_path: str | Path) -> dict[str, Any]:
    """The manifest beside an exported graph, with one-line errors for missing/foreign files."""
    onnx_path = Path(onnx_path)
    path = onnx_manifest_path(onnx_path)
    if not onnx_path.is_file():
        raise SparseDeployError(f"ONNX graph '{onnx_path}' does not exist; export it with python -m sparse_deploy.export")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise SparseDeployError(f"'{onnx_path}' has no manifest '{path.name}' beside it: not a sparse-deploy export") from None
    except json.JSONDecodeError as exc:
        raise SparseDeployError(f"manifest '{path}' is corrupt ({exc}); re-export the graph") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != ONNX_FORMAT:
        raise SparseDeployError(f"'{path}' is not a sparse-deploy ONNX manifest (format {ONNX_FORMAT} expected)")
    problem = seal_problem(manifest)
    if problem:
        raise SparseDeployError(f"manifest '{path}': {problem}; re-export the graph")
    return manifest


def _fingerprint_inputs(preset: Preset, kind: str, precision: str, source: GraphSource, external_data: bool = False) -> dict[str, Any]:
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
        "parity": {"batches": list(PARITY_BATCHES), "tolerance": PARITY_TOLERANCE[precision], "null_label": True,
                   "fp16_reference": precision == "fp16"},
        "fp32_ops": list(FP32_OPS) if precision == "fp16" else None,
        "versions": {lib: versions.get(lib) for lib in _ONNX_LIBS},
    }


def _fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _stale_reason(onnx_path: Path, inputs: dict[str, Any]) -> str | None:
    """None if the export at ``onnx_path`` is current for ``inputs``, else why not."""
    if not onnx_path.is_file():
        return "no graph yet"
    try:
        manifest = read_onnx_manifest(onnx_path)
    except SparseDeployError as exc:
        return str(exc)
    if manifest.get("fingerprint") != _fingerprint(inputs):
        old = manifest.get("fingerprint_inputs") or {}
        changed = sorted(k for k in set(old) | set(inputs) if json.dumps(old.get(k), sort_keys=True, default=str) != json.dumps(inputs.get(k), sort_keys=True, default=str))
        return f"changed: {', '.join(changed) or 'fingerprint'}"
    if sha256_file(onnx_path) != manifest.get("onnx_sha256"):
        return "the graph does not match the sha256 in its manifest"
    problem = data_problem(onnx_path, manifest)
    if problem:
        return problem
    if not (manifest.get("parity", {}).get("passed") and manifest.get("sparsity_check", {}).get("passed")):
        return "its verification did not pass"
    return None


@dataclass
class ExportedGraph:
    """One graph on disk with its manifest."""

    kind: str
    precision: str
    path: Path
    manifest: dict[str, Any]
    reused: bool = False

    @property
    def manifest_path(self) -> Path:
        return onnx_manifest_path(self.path)


def export_graph(
    model: Denoiser,
    sparse_layers: Sequence[str],
    contract: IOContract,
    path: str | Path,
    *,
    kind: str,
    manifest_extra: dict[str, Any] | None = None,
    external_data: bool = False,
    verify: bool = True,
) -> dict[str, Any]:
    """Export ``model`` (fp32, eval, masks baked) at ``contract.precision``, verify it, keep it.

    The graph is written in a staging folder, checked for parity and sparsity, and only then
    renamed to ``path``; its manifest follows. Any failure leaves nothing under ``path`` (an
    older graph there is left as it was). Weights go to ``<path>.data`` (ONNX external data)
    when ``external_data`` is set or when they would not fit ONNX's 2 GiB single-file limit.
    ``verify=False`` skips the parity and sparsity checks (for a caller that only reads the
    graph's structure, e.g. to count MACs); its manifest says so and ``export_all`` never reuses it.

    Returns:
        The manifest written beside the graph.
    """
    import onnx

    path = Path(path)
    weight_bytes = sum(p.numel() for p in model.parameters()) * (4 if contract.precision == "fp32" else 2)
    external = external_data or weight_bytes > _ONNX_SINGLE_FILE_LIMIT
    fp16 = contract.precision == "fp16"
    export_model = to_fp16(model) if fp16 else model  # fp16: norms stay fp32 (precision.py)
    example = tuple(_torch_inputs(contract.sample_inputs(2, seed=0)))
    if contract.precision == "fp16":
        example = (example[0].half(), *example[1:])
    manifest_path = onnx_manifest_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written and verified in a staging folder beside the target, under the final
    # file names (an external-data graph refers to its data file by name), then renamed into place.
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.stage-", dir=path.parent))
    try:
        raw = stage / "raw" / path.name  # over 2 GiB, torch writes one file per initializer here
        raw.parent.mkdir()
        log.info("exporting %s (%s%s) ...", path.name, EXPORTER, f", external data: {weight_bytes / 2**30:.2f} GiB of weights" if external else "")
        with warnings.catch_warnings(), torch.no_grad(), (fp16_attention() if fp16 else contextlib.nullcontext()):
            warnings.simplefilter("ignore")  # tracer warnings about python-side shape math
            try:
                torch.onnx.export(
                    export_model, example, str(raw), input_names=contract.input_names, output_names=contract.output_names,
                    dynamic_axes=contract.dynamic_axes(), opset_version=OPSET, do_constant_folding=True, dynamo=False,
                )
            except Exception as exc:
                raise SparseDeployError(f"ONNX export of {path.name} failed ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from exc
        staged = stage / path.name
        if external or len(list(raw.parent.iterdir())) > 1:
            save_with_external_data(onnx.load(str(raw)), staged)
        else:
            os.replace(raw, staged)
        shutil.rmtree(raw.parent)
        if verify:
            parity = check_parity(staged, model, contract, fp16_reference=export_model if fp16 else None)
            onnx_model = onnx.load(str(staged))
            fp32_ops = fp32_op_dtypes(onnx_model) if fp16 else None
            problem = fp32_ops_problem(fp32_ops) if fp16 else None
            if problem:
                raise SparseDeployError(f"fp16 export of {path.name}: {problem}; the graph was not kept")
            sparsity = check_sparsity(onnx_model, export_model, contract.precision, sparse_layers, kind)
            del onnx_model
        else:
            parity = sparsity = {"skipped": "exported with verify=False"}
            fp32_ops = None
        digest = sha256_file(staged)
        data_entry = describe_data(staged)
        # An older manifest must never describe the new graph, not even for a moment.
        manifest_path.unlink(missing_ok=True)
        if data_entry:
            os.replace(data_path(staged), data_path(path))
        else:
            data_path(path).unlink(missing_ok=True)
        os.replace(staged, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    manifest = {
        "format": ONNX_FORMAT,
        "file": path.name,
        "onnx_sha256": digest,
        "external_data": data_entry,
        "kind": kind,
        "precision": contract.precision,
        "preset": contract.preset,
        "contract": contract.to_dict(),
        "opset": OPSET,
        "exporter": EXPORTER,
        "sparse_layers": sorted(sparse_layers),
        "pattern": PATTERN if kind == "sparse" else None,
        "parity": parity,
        "fp32_ops": fp32_ops,  # fp16 graphs: per op type that must stay fp32, nodes reading fp32/fp16
        "sparsity_check": sparsity,
        "versions": library_versions(),
        "created": timestamp(),
        **(manifest_extra or {}),
    }
    return write_manifest(manifest_path, manifest)


def export_all(config: ExportConfig, *, reuse: bool = False) -> list[ExportedGraph]:
    """Export every requested kind x precision; with ``reuse``, keep graphs that are up to date."""
    from tqdm.auto import tqdm

    preset, sources = plan_sources(config)
    out = Path(config.out) if config.out is not None else Path("export") / preset.name
    results: list[ExportedGraph] = []
    todo = [(kind, precision) for kind in KINDS if kind in config.kinds for precision in PRECISIONS if precision in config.precisions]
    for kind, precision in tqdm(todo, desc=f"export {preset.name}", unit="graph", disable=len(todo) < 2):
        source = sources[kind]
        contract = contract_for(preset, precision, config.profile)
        path = out / f"{kind}-{precision}.onnx"
        inputs = _fingerprint_inputs(preset, kind, precision, source, config.external_data)
        reason = _stale_reason(path, inputs)
        if reuse and reason is None:
            manifest = read_onnx_manifest(path)
            wanted = json.loads(json.dumps(contract.to_dict()))
            if manifest.get("contract") != wanted:
                # The graph's batch axis is dynamic; only the recorded profile changes.
                manifest["contract"] = wanted
                manifest = write_manifest(onnx_manifest_path(path), manifest)
            log.info("%s is up to date; reusing it", path)
            results.append(ExportedGraph(kind, precision, path, manifest, reused=True))
            continue
        if reuse:
            log.info("re-exporting %s (%s)", path, reason)
        for note in source.notes:
            log.info(note)
        model, sparse_layers = source.load()
        manifest = export_graph(
            model, sparse_layers, contract, path, kind=kind,
            manifest_extra={
                "source": source.identity, "fingerprint": _fingerprint(inputs), "fingerprint_inputs": inputs,
                PRESET_SPEC: preset.to_dict(), "schedule": schedule_record(preset.schedule),
            },
            external_data=config.external_data,
        )
        results.append(ExportedGraph(kind, precision, path, manifest))
    return results


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``export`` and ``build``."""
    parser.add_argument("--model", help="preset name (default: the checkpoint's preset)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (dense or sparse)")
    parser.add_argument("--dense-checkpoint", type=Path, help="dense checkpoint for the dense graph of a sparse checkpoint")
    parser.add_argument("--weights", type=Path, help="diffusers model folder or .safetensors file (dense)")
    parser.add_argument("--precision", default="fp32,fp16", help="comma-separated: fp32,fp16 (default both)")
    parser.add_argument("--kinds", default="dense,sparse", help="comma-separated: dense,sparse (default both)")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch engines accept (default 64)")
    parser.add_argument("--opt-batch", type=int, help="batch engines are tuned for (default min(8, max-batch))")
    parser.add_argument(
        "--require-masks", action="store_true",
        help="refuse a sparse export of a model without masks instead of pruning it one-shot (no fine-tuning)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init when no weights are given")
    parser.add_argument(
        "--external-data", action="store_true",
        help="write weights to <graph>.onnx.data (ONNX external data); automatic for graphs over 2 GiB (DiT-XL fp32)",
    )


def config_from_args(args: argparse.Namespace, out: Path | None) -> ExportConfig:
    return ExportConfig(
        model=args.model, checkpoint=args.checkpoint, dense_checkpoint=args.dense_checkpoint, weights=args.weights,
        out=out, precisions=comma_list(args.precision), kinds=comma_list(args.kinds), max_batch=args.max_batch,
        opt_batch=args.opt_batch, require_masks=args.require_masks, seed=args.seed, external_data=args.external_data,
    ).validate()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparse_deploy.export",
        description="Export dense and 2:4-sparse ONNX graphs (fp32/fp16), each checked for parity with PyTorch "
        "and for 2:4 sparsity before it is kept.",
    )
    add_source_arguments(parser)
    parser.add_argument("--out", type=Path, help="output folder (default export/<preset>)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = export_all(config_from_args(args, args.out))
    for r in results:
        m = r.manifest
        worst = max(b["max_abs_err"] for b in m["parity"]["batches"].values())
        sparse = f", {len(m['sparse_layers'])} layers 2:4-sparse" if r.kind == "sparse" else ""
        print(f"{r.path}  ({r.precision}, parity max err {worst:.2g}{sparse})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
