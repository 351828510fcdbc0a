"""fp16 graphs: which ops stay fp32, and a PyTorch reference that really computes in fp16.

TensorRT 11 networks are strongly typed: an fp16 engine runs every op in the dtype its ONNX graph
gives it, so the graph itself decides where fp16 is safe. The decision here (:data:`FP32_OPS`):

* **LayerNorm and GroupNorm run in fp32** (input cast up, output cast back): their mean and
  variance sum hundreds to thousands of values, which loses digits (and can overflow) in fp16.
  The modules are swapped for fp32 twins by :func:`to_fp16`; their affine parameters stay fp32.
* **The attention softmax runs in fp32**: the scores ``(q / sqrt(d)) @ k^T`` are computed in fp16
  (q is scaled first, which keeps them small), cast up for the softmax, and the probabilities
  cast back to fp16 for ``P @ V`` (:func:`fp16_attention`).
* **The timestep sinusoid stays fp32**: diffusers computes ``sin``/``cos`` of ``t * freq`` in
  fp32 already (at t = 999 the spacing of fp16 is 0.5 rad, which would scramble the embedding);
  the timestep MLP after it runs in fp16.

Everything else (the Linear/Conv GEMMs that 2:4 accelerates, GELU/SiLU, residual adds, adaLN
modulation) is fp16. :func:`fp32_op_dtypes` reads the dtypes back from an exported graph, so the
export proves the decision held.

ONNX Runtime's CPU provider, which checks every export, inserts casts and computes most fp16 ops
in fp32: comparing it with the fp32 model mostly measures weight rounding. :func:`to_fp16` under
:func:`fp16_attention` is the reference that computes in fp16 (every op's output rounded to fp16,
as on the GPU), and the export's parity check compares it with the fp32 model too.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Iterator

import torch
from torch import nn

from .contract import PRECISION_DTYPES

__all__ = ["FP32_OPS", "to_fp16", "fp16_attention", "fp32_op_dtypes", "fp32_ops_problem"]

#: ONNX op types that must read fp32 inputs in an fp16 graph (the norms, the softmax, the sinusoid).
FP32_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax", "Sin", "Cos")


class _Fp32LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class _Fp32GroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


_FP32_TWINS = {nn.LayerNorm: _Fp32LayerNorm, nn.GroupNorm: _Fp32GroupNorm}


def to_fp16(model: nn.Module) -> nn.Module:
    """An fp16 copy of ``model`` whose LayerNorm/GroupNorm modules compute in fp32 (see module docstring)."""
    half = copy.deepcopy(model).half()
    for module in half.modules():
        twin = _FP32_TWINS.get(type(module))
        if twin is not None:
            module.float()
            module.__class__ = twin
    return half.eval()


_SDPA = torch.nn.functional.scaled_dot_product_attention


def _attention_fp32_softmax(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    if query.dtype != torch.float16 or dropout_p or is_causal or kwargs:
        return _SDPA(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kwargs
        )
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = ((query * scale) @ key.transpose(-2, -1)).float()
    if attn_mask is not None:
        scores = (
            scores.masked_fill(~attn_mask, float("-inf"))
            if attn_mask.dtype == torch.bool
            else scores + attn_mask.float()
        )
    return scores.softmax(dim=-1).to(value.dtype) @ value


@contextlib.contextmanager
def fp16_attention() -> Iterator[None]:
    """Within this block, fp16 ``scaled_dot_product_attention`` takes its softmax in fp32.

    diffusers' attention processors call ``torch.nn.functional.scaled_dot_product_attention``; it
    is replaced for the duration of the block (an export or a reference forward pass, one thread),
    and other dtypes pass through unchanged.
    """
    functional = torch.nn.functional
    saved = functional.scaled_dot_product_attention
    functional.scaled_dot_product_attention = _attention_fp32_softmax
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = saved


def fp32_op_dtypes(onnx_model) -> dict[str, dict[str, int]]:
    """For each op type of :data:`FP32_OPS` in the graph, how many nodes read fp32 / fp16 / other inputs.

    The dtype of a node's first input comes from ONNX shape inference (graph inputs, initializers
    and inferred value infos).
    """
    import numpy as np
    import onnx

    inferred = onnx.shape_inference.infer_shapes(onnx_model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({init.name: init.data_type for init in graph.initializer})
    names = {
        onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)): precision
        for precision, dtype in PRECISION_DTYPES.items()
    }
    counts: dict[str, dict[str, int]] = {}
    for node in graph.node:
        if node.op_type in FP32_OPS and node.input:
            dtype = names.get(types.get(node.input[0], 0), "other")
            entry = counts.setdefault(node.op_type, {"fp32": 0, "fp16": 0, "other": 0})
            entry[dtype] += 1
    return counts


def fp32_ops_problem(counts: dict[str, dict[str, Any]]) -> str | None:
    """Why an fp16 graph breaks the fp32 decision (an op of :data:`FP32_OPS` reading fp16), or None."""
    wrong = {op: c["fp16"] for op, c in counts.items() if c.get("fp16")}
    if wrong:
        return f"ops that must compute in fp32 read fp16 inputs: {wrong}"
    return None
