"""Multiply-accumulate counts: per layer and for the whole model from one real forward pass, and
from an exported ONNX graph (:func:`onnx_macs`) to cross-check what the engines run."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["forward_with_hooks", "layer_macs", "total_macs", "OnnxMacs", "onnx_macs"]


def _module_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.Conv2d):
        k_h, k_w = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * k_h * k_w
    return 0


def forward_with_hooks(
    model: nn.Module,
    inputs: Sequence[torch.Tensor | None],
    types: tuple[type, ...],
    on_call: Callable[[str, nn.Module, tuple, Any], None],
) -> None:
    """One forward pass of ``model`` on ``inputs`` calling ``on_call(name, module, args, output)`` for
    every call of a module of ``types`` (hooks removed afterwards, also on error)."""
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, types):
            hooks.append(module.register_forward_hook(lambda mod, args, out, name=name: on_call(name, mod, args, out)))
    try:
        model(*inputs)
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def layer_macs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, int]:
    """MACs of every Linear and Conv2d in ``model`` for one forward pass on ``inputs``.

    Counts dense MACs: the effective sparse count of an N:M layer is ``macs * n / m``.
    """
    counts: dict[str, int] = {}

    def count(name: str, module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        counts[name] = counts.get(name, 0) + _module_macs(module, out)

    forward_with_hooks(model, inputs, (nn.Linear, nn.Conv2d), count)
    return counts


@torch.no_grad()
def total_macs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """All MACs of one forward pass, attention matmuls included (PyTorch's FLOP counter / 2)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # The fused CPU attention kernel has no FLOP formula registered; the math backend
    # decomposes into matmuls the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops() // 2


# ----------------------------------------------------------------------------- ONNX graphs

_MAC_OPS = ("MatMul", "Gemm", "Conv", "Einsum", "FusedMatMul")


@dataclass
class OnnxMacs:
    """MACs of one ONNX graph at a fixed batch, from its MatMul/Gemm/Conv (and Einsum) nodes.

    Attributes:
        total: all counted MACs.
        batch: the batch size every graph input's first axis was fixed to.
        by_op: MACs per op type.
        by_node: MACs per node name (nodes with 0 MACs left out).
        by_weight: MACs per weight initializer (a node's constant B / W input, looked up through
            Transpose/Cast), for matching graph nodes to model layers (``export.layer_initializers``).
    """

    total: int
    batch: int
    by_op: dict[str, int] = field(default_factory=dict)
    by_node: dict[str, int] = field(default_factory=dict)
    by_weight: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"total": self.total, "batch": self.batch, "by_op": self.by_op, "by_weight": self.by_weight}


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _einsum_macs(equation: str, shapes: list[list[int]]) -> int:
    """Multiply-adds of a contraction: the product of every index size (0 for one operand: a permutation)."""
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    if len(lhs) < 2 or any("..." in term for term in lhs):
        return 0
    sizes: dict[str, int] = {}
    for term, shape in zip(lhs, shapes):
        for letter, size in zip(term, shape):
            sizes[letter] = int(size)
    return _prod(sizes.values())


def _node_macs(node, shape_of, attrs: dict) -> int:
    op = node.op_type
    out = shape_of(node.output[0])
    if op in ("MatMul", "FusedMatMul"):
        a = shape_of(node.input[0])
        k = a[-2] if op == "FusedMatMul" and attrs.get("transA") else a[-1]
        return _prod(out) * k
    if op == "Gemm":
        a = shape_of(node.input[0])
        return _prod(out) * (a[0] if attrs.get("transA") else a[1])
    if op == "Conv":
        w = shape_of(node.input[1])  # [K, C/groups, kh, kw]
        return _prod(out) * _prod(w[1:])
    if op == "Einsum":
        return _einsum_macs(attrs["equation"], [shape_of(x) for x in node.input])
    return 0


def _fix_batch(model, batch: int) -> None:
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch


def _infer_shapes(model):
    try:  # ONNX Runtime's symbolic inference follows shapes through Shape -> Gather -> Reshape chains
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except Exception:  # pragma: no cover - onnxruntime is a dependency
        from onnx import shape_inference

        return shape_inference.infer_shapes(model, data_prop=True)
    return SymbolicShapeInference.infer_shapes(model, auto_merge=False, guess_output_rank=False, verbose=0)


def onnx_macs(graph, batch: int = 1) -> OnnxMacs:
    """Count the MACs of an ONNX graph with every input's batch axis fixed to ``batch``.

    Shapes come from shape inference (ONNX Runtime's symbolic inference, which resolves the
    computed Reshape targets of diffusers graphs). Counted: ``MatMul`` / ``FusedMatMul`` (output
    elements x K, attention's activation-activation products included), ``Gemm`` (M x N x K),
    ``Conv`` (output elements x C/groups x kernel taps) and two-operand ``Einsum``; everything else
    counts 0, as in PyTorch's FLOP counter, so at batch 1 the total matches :func:`total_macs`.

    Args:
        graph: a path to an ``.onnx`` file, or a loaded ``onnx.ModelProto``.
        batch: the batch size to count at.

    Raises:
        ValueError: when a counted node's shapes cannot be inferred.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(graph)) if not isinstance(graph, onnx.ModelProto) else graph
    model = copy.deepcopy(model)
    _fix_batch(model, batch)
    inferred = _infer_shapes(model)
    shapes: dict[str, list] = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        shapes[value.name] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim
        ]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    producers = {out: node for node in inferred.graph.node for out in node.output}
    initializers = {init.name for init in inferred.graph.initializer}

    def shape_of(name: str) -> list[int]:
        shape = shapes.get(name)
        if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"shape inference left tensor '{name}' with shape {shape}; cannot count its MACs")
        return shape

    def weight_of(name: str) -> str | None:
        seen = 0
        while (
            name not in initializers
            and name in producers
            and producers[name].op_type in ("Transpose", "Cast", "Identity")
            and seen < 8
        ):
            name, seen = producers[name].input[0], seen + 1
        return name if name in initializers else None

    result = OnnxMacs(total=0, batch=batch)
    for node in inferred.graph.node:
        if node.op_type not in _MAC_OPS:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if isinstance(attrs.get("equation"), bytes):
            attrs["equation"] = attrs["equation"].decode()
        count = _node_macs(node, shape_of, attrs)
        if not count:
            continue
        result.total += count
        result.by_op[node.op_type] = result.by_op.get(node.op_type, 0) + count
        result.by_node[node.name or node.output[0]] = count
        weight = weight_of(node.input[1]) if len(node.input) > 1 else None
        if weight is not None:
            result.by_weight[weight] = result.by_weight.get(weight, 0) + count
    return result
