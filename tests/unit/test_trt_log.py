"""TensorRT's sparsity log lines, inspector output and layer names, mapped back to our modules."""

from __future__ import annotations

import json

from sparse_deploy import trt_log as tl


def test_parse_sparsity_log_and_inspector():
    lines = [
        "[V] some other line",
        "[V] [TRT] (Sparsity) Layers eligible for sparse math: /net/a/MatMul, /net/b/MatMul + /net/b/Add, /net/c/Conv",
        "[V] (Sparsity) TRT inference plan picked sparse implementation for layers: /net/b/MatMul + /net/b/Add",
    ]
    eligible, picked = tl.parse_sparsity_log(lines)
    assert eligible == ["/net/a/MatMul", "/net/b/MatMul + /net/b/Add", "/net/c/Conv"]
    assert picked == ["/net/b/MatMul + /net/b/Add"]
    assert tl.parse_sparsity_log(["nothing"]) == (None, None)
    nodes = {"blocks.0.a": ["/net/a/MatMul"], "blocks.0.b": ["/net/b/MatMul"], "c": ["/net/c/Conv"]}
    assert tl.picked_modules(picked, nodes) == ["blocks.0.b"]
    assert tl.picked_modules(eligible, nodes) == ["blocks.0.a", "blocks.0.b", "c"]
    info = {
        "Layers": [
            {"Name": "/net/a/MatMul", "HasSparseWeights": 1, "TacticName": "sm80_xmma_gemm_f16f16_sptensor16x8x32"},
            {"Name": "/net/b/MatMul", "HasSparseWeights": 0, "TacticName": "sm80_xmma_gemm_f16f16"},
        ]
    }
    parsed = tl.parse_inspector(json.dumps(info))
    assert parsed == {"layers": 2, "has_sparse_weights": ["/net/a/MatMul"], "sparse_tactics": ["/net/a/MatMul"]}
    assert tl.parse_inspector({"Layers": ["name only"]})["has_sparse_weights"] == []


def test_tensorrt_layer_names_are_matched_exactly():
    nodes = {"a": ["/net/a/MatMul"], "a1": ["/net/a/MatMul_1"], "b": ["/net/b/Gemm"], "c": ["/net/c/MatMul"]}
    # A substring test would let "/net/a/MatMul" claim TensorRT's "/net/a/MatMul_1".
    assert tl.picked_modules(["/net/a/MatMul_1"], nodes) == ["a1"]
    assert tl.picked_modules(["/net/a/MatMul_1 + /net/b/Gemm"], nodes) == ["a1", "b"]
    assert tl.picked_modules(["{ForeignNode[/net/c/MatMul.../net/a/MatMul]}"], nodes) == ["a", "c"]
    assert tl.picked_modules(["/net/a/MatMul_12"], nodes) == [] and tl.picked_modules([], nodes) == []
    assert tl.trt_layer_nodes("/net/x/MatMul + /net/x/Add") == {"/net/x/MatMul", "/net/x/Add"}
