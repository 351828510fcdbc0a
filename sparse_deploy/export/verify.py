"""Verification of an exported graph before it is kept.

1. parity - ONNX Runtime (CPU) against the PyTorch fp32 model on fresh random inputs at batch
   1 and 3 (the last label of batch 3 is the null label: the guidance path), within
   :data:`PARITY_TOLERANCE`; for fp16 graphs also the fp16 PyTorch model, which really computes
   in fp16 (ONNX Runtime's CPU provider computes most fp16 ops in fp32), against the fp32 one and
   against ONNX Runtime (:func:`check_parity`); the ops that must stay fp32
   (:mod:`sparse_deploy.precision`) are read back from the graph by the exporter;
2. sparsity - Polygraphy's ``SparsityPruner.check()``: in a sparse graph every masked layer's
   weight initializer must be reported 2:4-sparse; a dense graph should report none
   (:func:`check_sparsity`).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..backends.ort import ort_session
from ..contract import IOContract, float_dtype
from ..errors import SparseDeployError
from ..models import short_name
from ..precision import FP32_OPS, fp16_attention

__all__ = [
    "PARITY_BATCHES",
    "PARITY_TOLERANCE",
    "max_abs_err",
    "tolerance_bound",
    "check_parity",
    "check_sparsity",
    "layer_initializers",
    "torch_inputs",
]

log = logging.getLogger(__name__)

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


def torch_inputs(feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
    """Contract sample inputs as torch tensors, ``sample`` in fp32 (the fp32 reference's dtype)."""
    tensors = []
    for name, value in feeds.items():
        t = torch.from_numpy(value)
        tensors.append(t.float() if name == "sample" else t)
    return tensors


def max_abs_err(got: np.ndarray, want: np.ndarray) -> float:
    """max|got - want|; infinite when either holds a non-finite value or the shapes differ."""
    if got.shape != want.shape or not (np.isfinite(got).all() and np.isfinite(want).all()):
        return float("inf")
    return float(np.max(np.abs(got - want)))


def tolerance_bound(tol: dict[str, float], want: np.ndarray) -> float:
    """The parity criterion's bound ``atol + rtol * max|want|`` (one rule for export, build and engine checks)."""
    return tol["atol"] + tol["rtol"] * float(np.max(np.abs(want)))


@torch.no_grad()
def _run_fp16(model: nn.Module, feeds: dict[str, np.ndarray], device: torch.device) -> np.ndarray:
    tensors = [t.to(device) for t in torch_inputs(feeds)]
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
    session = ort_session(onnx_path)
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
                want = reference(*torch_inputs(feeds)).float().numpy()
            if got.shape != want.shape:
                raise SparseDeployError(
                    f"ONNX output shape {got.shape} differs from PyTorch's {want.shape} at batch {batch}"
                )
            scale, bound = float(np.max(np.abs(want))), tolerance_bound(tol, want)
            errors = {"max_abs_err": max_abs_err(got, want)}
            if fp16_reference is not None:
                half = _run_fp16(fp16_reference, feeds, device)
                errors.update(fp16_arithmetic_err=max_abs_err(half, want), onnx_vs_fp16_err=max_abs_err(got, half))
            ok = all(e <= bound for e in errors.values())
            results["batches"][str(batch)] = {**errors, "max_abs_ref": scale, "bound": bound, "passed": ok}
            log.info(
                "parity %s batch %d: %s (bound %.3g)",
                contract.precision,
                batch,
                ", ".join(f"{k} {v:.3g}" for k, v in errors.items()),
                bound,
            )
            if not ok:
                failures.append(
                    f"batch {batch}: "
                    + ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in errors.items() if not v <= bound)
                    + f" > {bound:.3g}"
                )
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
    dtype = getattr(torch, float_dtype(precision))
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


def check_sparsity(
    onnx_model, model: nn.Module, precision: str, sparse_layers: Sequence[str], kind: str
) -> dict[str, Any]:
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
                parts.append(
                    f"{len(not_sparse)} masked layer(s) not reported 2:4-sparse by Polygraphy: {not_sparse[:6]}"
                )
            if missing:
                parts.append(
                    f"{len(missing)} masked layer(s) whose weight is not an initializer of the graph: {missing[:6]}"
                )
            raise SparseDeployError(
                f"sparse export failed its sparsity check ({'; '.join(parts)}); the graph was not kept"
            )
        log.info("sparsity check: all %d masked layers are 2:4-sparse in the graph", len(sparse_layers))
    else:
        result["passed"] = True
        if sparse_tensors:
            log.warning(
                "the dense graph holds %d weight tensor(s) that are already 2:4-sparse (%s); TensorRT would treat them as sparse",
                len(sparse_tensors),
                reported_layers[:4] or sorted(sparse_tensors)[:4],
            )
    return result
