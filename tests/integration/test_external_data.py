"""ONNX external data (graphs over 2 GiB, e.g. DiT-XL fp32), exercised on tiny-dit with it forced on."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import torch
import onnx
import onnxruntime as ort
import pytest
from onnx.external_data_helper import uses_external_data

from sparse_deploy import build as bd
from sparse_deploy import export as ex
from sparse_deploy.artifacts import manifest_path
from sparse_deploy.export import graph as export_graph_module
from sparse_deploy.backends import load_runner
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.onnx_files import data_path
from sparse_deploy.provenance import sha256_file
from sparse_deploy.triton import repository as repo


def _config(tmp_path, **export):
    export = {"model": "tiny-dit", "out": tmp_path / "export", "max_batch": 4, "precisions": ("fp32",), **export}
    return bd.BuildConfig(export=ex.ExportConfig(**export), backend="onnxruntime", engine_dir=tmp_path / "engines")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("external")
    config = _config(tmp, external_data=True)
    return config, {e.kind: e for e in bd.build_engines(config).engines}


def _outputs(path, contract, batch=2):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, contract.sample_inputs(batch, seed=3))[0]


def test_graph_and_weights_are_two_files_recorded_in_the_manifest(built):
    config, engines = built
    for kind in ("dense", "sparse"):
        graph = config.export.out / f"{kind}-fp32.onnx"
        data = data_path(graph)
        manifest = ex.read_onnx_manifest(graph)
        assert manifest["external_data"] == {
            "file": data.name,
            "bytes": data.stat().st_size,
            "sha256": sha256_file(data),
        }
        proto = onnx.load(str(graph), load_external_data=False)
        inline = [t for t in proto.graph.initializer if not uses_external_data(t)]
        assert all(len(t.raw_data) < 1024 for t in inline)  # every weight matrix left the protobuf
        locations = {
            e.value
            for t in proto.graph.initializer
            if uses_external_data(t)
            for e in t.external_data
            if e.key == "location"
        }
        assert locations == {data.name}  # one file, referred to by its bare name
        assert manifest["parity"]["passed"] and manifest["sparsity_check"]["passed"]
    assert not [p.name for p in config.export.out.iterdir() if p.name.startswith(".")]  # no staging litter
    for graph in [*config.export.out.glob("*.onnx"), *(e.path for e in engines.values())]:
        assert data_path(graph).stat().st_mode == graph.stat().st_mode  # as readable as the graph (onnx/ORT write 0600)


def test_masked_layers_are_2to4_in_the_external_weights(built):
    from polygraphy.tools.sparse import SparsityPruner

    config, engines = built
    graph = config.export.out / "sparse-fp32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy overflow casts inside Polygraphy's check loop
        pruner = SparsityPruner(onnx.load(str(graph)))  # loads the weights from the data file
        pruner.check()
    want = set(ex.read_onnx_manifest(graph)["sparsity_check"]["layer_initializers"].values())
    assert want and want <= set(pruner.sparse_tensors)


def test_ort_engine_keeps_external_weights_and_matches_its_source(built):
    config, engines = built
    for kind, engine in engines.items():
        assert (
            data_path(engine.path).is_file() and engine.manifest["external_data"]["file"] == data_path(engine.path).name
        )
        runner = load_runner(engine.path)
        contract = runner.contract
        source = _outputs(config.export.out / f"{kind}-fp32.onnx", contract)
        np.testing.assert_allclose(_outputs(engine.path, contract), source, atol=1e-5, rtol=1e-4)
        feeds = contract.sample_inputs(2, seed=3)
        got = runner(*(torch.from_numpy(feeds[n]) for n in contract.input_names)).numpy()
        np.testing.assert_allclose(got, source, atol=1e-5, rtol=1e-4)


def test_a_changed_or_missing_data_file_is_named_and_rebuilt(tmp_path):
    config = _config(tmp_path, external_data=True, kinds=("sparse",))
    engine = bd.build_engines(config).engines[0]
    data = data_path(engine.path)
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(SparseDeployError, match="external-data file .* does not match"):
        load_runner(engine.path)
    again = bd.build_engines(config).engines[0]  # stale: rebuilt, not reused
    assert not again.reused and load_runner(again.path).manifest["external_data"]["sha256"] == sha256_file(data)

    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(engine.path, moved / engine.path.name)
    shutil.copy(manifest_path(engine.path), moved / manifest_path(engine.path).name)
    with pytest.raises(SparseDeployError, match="external-data file .* is missing"):
        load_runner(moved / engine.path.name)

    graph = config.export.out / "sparse-fp32.onnx"
    data_path(graph).unlink()
    redone = ex.export_all(config.export, reuse=True)[0]  # the graph is re-exported with its weights
    assert not redone.reused and data_path(graph).is_file()


def test_graphs_over_the_protobuf_limit_get_external_data_without_the_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(export_graph_module, "_ONNX_SINGLE_FILE_LIMIT", 1024)  # as if tiny-dit were DiT-XL fp32
    graph = ex.export_all(ex.ExportConfig(model="tiny-dit", out=tmp_path, kinds=("dense",), precisions=("fp32",)))[0]
    assert graph.manifest["external_data"]["file"] == "dense-fp32.onnx.data"


def test_back_to_one_file_removes_the_old_data_file(built, tmp_path):
    config, _ = built
    out = tmp_path / "export"
    shutil.copytree(config.export.out, out)
    graph = ex.export_all(
        ex.ExportConfig(model="tiny-dit", out=out, kinds=("dense",), precisions=("fp32",)), reuse=True
    )[0]
    assert not graph.reused and graph.manifest["external_data"] is None and not data_path(graph.path).exists()


@pytest.mark.parametrize("flavour", ["onnxruntime", "python"])
def test_triton_repository_carries_the_data_file(built, tmp_path, flavour):
    _, engines = built
    repo.generate_repository(repo.RepositoryConfig(engine=engines["sparse"].path, out=tmp_path, flavour=flavour))
    version = tmp_path / "denoiser" / "1"
    graph = version / ("model.onnx" if flavour == "onnxruntime" else engines["sparse"].path.name)
    assert graph.is_file()
    proto = onnx.load(str(graph), load_external_data=False)
    names = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert names and all((version / n).is_file() for n in names)
    onnx.load(str(graph))  # resolvable from inside the repository
