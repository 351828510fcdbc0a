"""ONNX export: parity with PyTorch, Polygraphy's sparsity check, sources, atomicity (tiny presets, CPU)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sparse_deploy import export as ex
from sparse_deploy.checkpoint import save_checkpoint
from sparse_deploy.contract import contract_for
from sparse_deploy.export import verify
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.provenance import seal
from sparse_deploy.sparsify import SparsityConfig, sparsify_


def _export(tmp_path_factory, preset: str) -> dict:
    out = tmp_path_factory.mktemp(f"export-{preset}") / preset
    config = ex.ExportConfig(model=preset, out=out, max_batch=4)
    graphs = {(g.kind, g.precision): g for g in ex.export_all(config)}
    # The same sources, planned again: each kind's model is built once and shared by the tests.
    return {"config": config, "graphs": graphs, "sources": ex.plan_sources(config)[1]}


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    return _export(tmp_path_factory, "tiny-dit")


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    return _export(tmp_path_factory, "tiny-unet")


def _polygraphy_sparse(path) -> set[str]:
    from polygraphy.logger import G_LOGGER
    from polygraphy.tools.sparse import SparsityPruner

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy overflow casts inside Polygraphy's fp16 loop
        pruner = SparsityPruner(onnx.load(str(path)))
        pruner.check()
    return set(pruner.sparse_tensors)


@pytest.mark.parametrize("which", ["dit", "unet"])
def test_writes_four_graphs_with_manifests(which, request):
    exported = request.getfixturevalue(which)
    assert set(exported["graphs"]) == {(k, p) for k in ("dense", "sparse") for p in ("fp32", "fp16")}
    for (kind, precision), graph in exported["graphs"].items():
        assert graph.path.name == f"{kind}-{precision}.onnx"
        manifest = json.loads(graph.manifest_path.read_text())
        assert manifest["format"] == ex.ONNX_FORMAT
        assert manifest["opset"] == ex.OPSET
        assert manifest["contract"]["precision"] == precision
        assert manifest["contract"]["profile"] == {"min": 1, "opt": 4, "max": 4}
        assert manifest["source"]["type"] == "random"
        assert manifest["parity"]["passed"] and set(manifest["parity"]["batches"]) == {"1", "3"}
        assert manifest["versions"]["torch"] and manifest["versions"]["onnxruntime"]
        assert (len(manifest["sparse_layers"]) > 0) == (kind == "sparse")
        assert manifest["pattern"] == ("2:4" if kind == "sparse" else None)
        assert manifest["parity"]["null_label_batches"] == [3]  # both tiny presets are class-conditional
        if kind == "sparse":
            assert manifest["source"]["masks"] == "oneshot-magnitude" and manifest["source"]["fine_tuned"] is False
    assert not [p for p in exported["graphs"][("dense", "fp32")].path.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("which", ["dit", "unet"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_onnx_equals_pytorch(which, precision, kind, request):
    exported = request.getfixturevalue(which)
    graph = exported["graphs"][(kind, precision)]
    model, _ = exported["sources"][kind].load()
    session = ort.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"])
    contract = contract_for(get_preset(graph.manifest["preset"]), precision)
    tol = ex.PARITY_TOLERANCE[precision]
    for batch in (2,):  # a batch size the exporter's own check (1 and 3) did not use
        feeds = contract.sample_inputs(batch, seed=99)
        got = session.run(None, feeds)[0]
        assert got.dtype == (np.float16 if precision == "fp16" else np.float32)
        with torch.no_grad():
            want = model(
                *[torch.from_numpy(v).float() if k == "sample" else torch.from_numpy(v) for k, v in feeds.items()]
            ).numpy()
        assert np.max(np.abs(got.astype(np.float32) - want)) <= tol["atol"] + tol["rtol"] * np.max(np.abs(want))


@pytest.mark.parametrize("which", ["dit", "unet"])
def test_polygraphy_sees_every_masked_layer_sparse_and_dense_graph_none(which, request):
    exported = request.getfixturevalue(which)
    for precision in ("fp32", "fp16"):
        sparse = exported["graphs"][("sparse", precision)]
        check = sparse.manifest["sparsity_check"]
        assert check["failed_layers"] == [] and check["passed"]
        assert sorted(check["sparse_ok"]) == sorted(sparse.manifest["sparse_layers"])
        found = _polygraphy_sparse(sparse.path)
        assert set(check["layer_initializers"].values()) <= found
        assert all(check["layer_nodes"][layer] for layer in sparse.manifest["sparse_layers"])
        dense = exported["graphs"][("dense", precision)]
        assert _polygraphy_sparse(dense.path) == set()
        assert dense.manifest["sparsity_check"]["sparse_tensors"] == []


def test_sparse_check_fails_when_a_masked_layer_is_dense(dit):
    graph = dit["graphs"][("sparse", "fp32")]
    model, _ = dit["sources"]["dense"].load()  # dense weights, but claim the masked layers
    dense_graph = onnx.load(str(dit["graphs"][("dense", "fp32")].path))
    with pytest.raises(SparseDeployError, match="not reported 2:4-sparse"):
        ex.check_sparsity(dense_graph, model, "fp32", graph.manifest["sparse_layers"], "sparse")


def test_require_masks_refuses_a_maskless_model(tmp_path):
    config = ex.ExportConfig(model="tiny-dit", out=tmp_path, kinds=("sparse",), require_masks=True)
    with pytest.raises(SparseDeployError, match="a sparse export of a model with no masks"):
        ex.export_all(config)
    assert list(tmp_path.iterdir()) == []
    rc = ex.main(["--model", "tiny-dit", "--out", str(tmp_path), "--kinds", "sparse", "--require-masks"])
    assert rc == 2


def test_failed_verification_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were interrupted mid-check

    monkeypatch.setattr(verify, "check_parity", killed)
    config = ex.ExportConfig(model="tiny-dit", out=tmp_path, kinds=("dense",), precisions=("fp32",))
    with pytest.raises(KeyboardInterrupt):
        ex.export_all(config)
    assert list(tmp_path.iterdir()) == []  # no graph, no manifest, no temporary litter


def test_reuse_keeps_current_graphs_and_redoes_stale_ones(tmp_path):
    config = ex.ExportConfig(model="tiny-dit", out=tmp_path, kinds=("dense",), precisions=("fp32",))
    first = ex.export_all(config)[0]
    again = ex.export_all(config, reuse=True)[0]
    assert again.reused and again.manifest["onnx_sha256"] == first.manifest["onnx_sha256"]
    config.seed = 1  # other weights: the graph is stale
    redone = ex.export_all(config, reuse=True)[0]
    assert not redone.reused and redone.manifest["onnx_sha256"] != first.manifest["onnx_sha256"]
    manifest = json.loads(redone.manifest_path.read_text())
    manifest["fingerprint_inputs"]["versions"]["torch"] = "0.0"
    manifest["fingerprint"] = "0" * 64  # as written by another torch version
    redone.manifest_path.write_text(json.dumps(seal(manifest)))
    assert not ex.export_all(config, reuse=True)[0].reused


def test_sparse_checkpoint_exports_its_masks_and_its_dense_parent(tmp_path):
    preset = get_preset("tiny-dit")
    torch.manual_seed(3)
    dense = build_model(preset)
    dense_dir = save_checkpoint(tmp_path / "dense", dense, sparsity=None)
    sparse_cfg = SparsityConfig(mode="srste")
    sparse = build_model(preset)
    sparse.load_state_dict(dense.state_dict())
    with torch.no_grad():
        for p in sparse.parameters():
            p.add_(0.01 * torch.randn_like(p))  # "fine-tuned"
    masked = sparsify_(sparse, sparse_cfg)
    sparse_dir = save_checkpoint(
        tmp_path / "sparse", sparse, sparsity=sparse_cfg, info={"dense_checkpoint": str(dense_dir)}
    )

    out = tmp_path / "export"
    graphs = {g.kind: g for g in ex.export_all(ex.ExportConfig(checkpoint=sparse_dir, out=out, precisions=("fp32",)))}
    s, d = graphs["sparse"].manifest, graphs["dense"].manifest
    assert s["preset"] == "tiny-dit" and sorted(s["sparse_layers"]) == sorted(masked)
    assert s["source"]["masks"] == "checkpoint" and s["source"]["fine_tuned"] is True
    assert s["source"]["path"] == str(sparse_dir.resolve())
    assert d["source"]["path"] == str(dense_dir.resolve()) and d["sparse_layers"] == []

    # Without a named dense parent, a dense graph cannot be made: say how to fix it.
    orphan = save_checkpoint(tmp_path / "orphan", sparse, sparsity=sparse_cfg)
    with pytest.raises(SparseDeployError, match="--dense-checkpoint"):
        ex.export_all(ex.ExportConfig(checkpoint=orphan, out=out, precisions=("fp32",)))
    only_sparse = ex.export_all(
        ex.ExportConfig(checkpoint=orphan, out=tmp_path / "o", kinds=("sparse",), precisions=("fp32",))
    )
    assert only_sparse[0].manifest["sparsity_check"]["passed"]
    # A dense checkpoint with --require-masks: the same clear refusal.
    with pytest.raises(SparseDeployError, match="a sparse export of a model with no masks"):
        ex.export_all(ex.ExportConfig(checkpoint=dense_dir, out=out, kinds=("sparse",), require_masks=True))
    with pytest.raises(SparseDeployError, match="holds preset"):
        ex.export_all(ex.ExportConfig(model="tiny-unet", checkpoint=dense_dir, out=out))


def test_cli_and_config_errors(tmp_path, capsys):
    assert ex.main(["--model", "tiny-dit", "--out", str(tmp_path), "--precision", "fp32", "--kinds", "dense"]) == 0
    assert "dense-fp32.onnx" in capsys.readouterr().out
    assert ex.main(["--model", "tiny-dit", "--precision", "fp8"]) == 2
    assert "unknown --precision" in capsys.readouterr().err
    assert ex.main(["--model", "nope"]) == 2
    assert ex.main(["--model", "tiny-dit", "--max-batch", "4", "--opt-batch", "9"]) == 2
    assert ex.main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_parity_inputs_hold_the_null_label():
    contract = contract_for(get_preset("tiny-dit"), "fp32")
    assert contract.null_label == 10
    assert contract.sample_inputs(3, seed=1)["class_labels"][-1] == 10  # classifier-free guidance's null row
    assert (contract.sample_inputs(3, seed=1)["class_labels"][:-1] < 10).all()
    assert contract.sample_inputs(1, seed=1)["class_labels"][0] < 10
    assert contract_for(get_preset("ddpm-cifar10"), "fp32").null_label is None  # unconditional: no labels


@pytest.mark.parametrize("which,norm", [("dit", "LayerNormalization"), ("unet", "InstanceNormalization")])
def test_fp16_graph_keeps_norms_softmax_and_sinusoid_fp32_and_is_checked_in_fp16(which, norm, request):
    from sparse_deploy.precision import FP32_OPS

    for kind in ("dense", "sparse"):
        manifest = request.getfixturevalue(which)["graphs"][(kind, "fp16")].manifest
        ops = manifest["fp32_ops"]
        assert set(ops) <= set(FP32_OPS) and {norm, "Softmax", "Sin", "Cos"} <= set(ops)
        assert all(c["fp16"] == 0 and c["fp32"] > 0 for c in ops.values()), ops
        parity = manifest["parity"]
        assert parity["fp16_reference"].startswith("torch fp16")
        for entry in parity["batches"].values():
            # the fp16 model against the fp32 one (fp16 arithmetic), and ONNX Runtime against the fp16 model
            assert 0 < entry["fp16_arithmetic_err"] <= entry["bound"] and entry["onnx_vs_fp16_err"] <= entry["bound"]
    assert request.getfixturevalue(which)["graphs"][("dense", "fp32")].manifest["fp32_ops"] is None


def test_fp16_arithmetic_beyond_the_bound_fails_the_export(dit, monkeypatch):
    from sparse_deploy.precision import to_fp16

    graph = dit["graphs"][("dense", "fp16")]
    model, _ = dit["sources"]["dense"].load()
    contract = contract_for(get_preset("tiny-dit"), "fp16")
    real = verify._run_fp16
    monkeypatch.setattr(verify, "_run_fp16", lambda *a: real(*a) + 1.0)  # as if fp16 arithmetic drifted
    with pytest.raises(SparseDeployError, match="fp16 arithmetic err"):
        ex.check_parity(graph.path, model, contract, batches=(2,), fp16_reference=to_fp16(model))


def test_fp32_ops_are_read_back_from_the_graph():
    from onnx import TensorProto, helper

    from sparse_deploy.precision import fp32_op_dtypes, fp32_ops_problem, to_fp16

    def graph(dtype):
        x = helper.make_tensor_value_info("x", dtype, [2, 8])
        y = helper.make_tensor_value_info("y", dtype, [2, 8])
        node = helper.make_node("Softmax", ["x"], ["y"])
        return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])

    assert fp32_op_dtypes(graph(TensorProto.FLOAT)) == {"Softmax": {"fp32": 1, "fp16": 0, "other": 0}}
    half = fp32_op_dtypes(graph(TensorProto.FLOAT16))
    assert fp32_ops_problem(half) == "ops that must compute in fp32 read fp16 inputs: {'Softmax': 1}"
    model = to_fp16(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)))
    assert model[0].weight.dtype == torch.float16 and model[1].weight.dtype == torch.float32
    out = model(torch.randn(2, 8).half())
    assert out.dtype == torch.float16  # the norm computes in fp32 and hands fp16 back
