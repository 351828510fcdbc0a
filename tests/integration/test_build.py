"""Engine builds on CPU: ONNX Runtime engines + manifests, reuse vs rebuild, the TensorRT fallback."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sparse_deploy import build as bd
from sparse_deploy.backends import ENGINE_FORMAT, load_runner
from sparse_deploy.backends.device import tensorrt_unavailable_reason
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.export import ExportConfig
from sparse_deploy.provenance import sha256_file

TRT_REASON = tensorrt_unavailable_reason()
needs_no_trt = pytest.mark.skipif(
    TRT_REASON is None, reason="TensorRT and a GPU are available here: the fallback path is not taken"
)

ENGINE_KEYS = {
    "format",
    "backend",
    "engine",
    "engine_sha256",
    "kind",
    "preset",
    "contract",
    "source_onnx",
    "source_onnx_sha256",
    "sparse_layers",
    "versions",
    "ort_optimization_level",
    "created",
    "fingerprint",
    "fingerprint_inputs",
}


def _config(tmp_path, **export):
    export = {"model": "tiny-dit", "out": tmp_path / "export", "max_batch": 4, **export}
    return bd.BuildConfig(export=ExportConfig(**export), backend="onnxruntime", engine_dir=tmp_path / "engines")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    config = _config(tmp)
    return config, bd.build_engines(config)


def test_ort_engines_are_named_and_described(built):
    config, report = built
    assert report.backend == "onnxruntime"
    names = sorted(e.path.name for e in report.engines)
    assert names == sorted(f"{k}-{p}.ort.onnx" for k in ("dense", "sparse") for p in ("fp32", "fp16"))
    exports = {(g.kind, g.precision): g for g in report.exports}
    for engine in report.engines:
        assert engine.path.parent == config.engine_dir and not engine.reused
        manifest = json.loads(engine.manifest_path.read_text())
        assert engine.manifest_path.name == engine.path.name.replace(".onnx", ".json")
        assert ENGINE_KEYS <= set(manifest)
        assert "precision" not in manifest  # one precision field: the contract's
        assert manifest["format"] == ENGINE_FORMAT and manifest["backend"] == "onnxruntime"
        assert manifest["engine"] == engine.path.name and manifest["engine_sha256"] == sha256_file(engine.path)
        source = exports[(engine.kind, engine.precision)]
        assert manifest["source_onnx_sha256"] == sha256_file(source.path) == source.manifest["onnx_sha256"]
        assert manifest["contract"]["profile"] == {"min": 1, "opt": 4, "max": 4}
        assert manifest["contract"]["precision"] == engine.precision
        assert (len(manifest["sparse_layers"]) == 12) == (engine.kind == "sparse")
        assert manifest["pattern"] == ("2:4" if engine.kind == "sparse" else None)
        assert source.manifest["pattern"] == manifest["pattern"]
        assert manifest["ort_optimization_level"] in ("basic", "extended")


def test_ort_engine_matches_its_source_graph(built):
    _, report = built
    for engine in report.engines:
        source = next(g for g in report.exports if (g.kind, g.precision) == (engine.kind, engine.precision))
        with load_runner(engine.path) as runner:
            feeds = runner.contract.sample_inputs(3, seed=5)
            want = ort.InferenceSession(str(source.path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            import torch

            got = runner(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want.astype(np.float32), atol=2e-3 if engine.precision == "fp16" else 1e-5)


def test_rerun_reuses_and_stale_sources_rebuild(tmp_path):
    config = _config(tmp_path, precisions=("fp32",))
    first = {e.kind: e for e in bd.build_engines(config).engines}
    again = bd.build_engines(config)
    assert all(e.reused for e in again.engines) and all(g.reused for g in again.exports)

    # A manifest whose source hash no longer matches: that engine alone is rebuilt.
    path = first["dense"].manifest_path
    manifest = json.loads(path.read_text())
    manifest["source_onnx_sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    third = {e.kind: e for e in bd.build_engines(config).engines}
    assert not third["dense"].reused and third["sparse"].reused

    # Other weights (another random seed): graphs re-exported, both engines rebuilt.
    config.export.seed = 1
    fourth = bd.build_engines(config)
    assert not any(g.reused for g in fourth.exports) and not any(e.reused for e in fourth.engines)
    new = {e.kind: e for e in fourth.engines}
    assert new["dense"].manifest["source_onnx_sha256"] != first["dense"].manifest["source_onnx_sha256"]

    # Another batch profile: graphs reused (dynamic batch axis) with their manifests untouched,
    # engines rebuilt for the new profile.
    graph_manifests = {g.manifest_path: g.manifest_path.read_bytes() for g in fourth.exports}
    config.export.max_batch = 2
    fifth = bd.build_engines(config)
    assert all(g.reused for g in fifth.exports) and not any(e.reused for e in fifth.engines)
    assert fifth.engines[0].manifest["contract"]["profile"]["max"] == 2
    assert {path: path.read_bytes() for path in graph_manifests} == graph_manifests

    # The build owns the profile: its own --max-batch wins over one set on the export settings.
    config.max_batch = 3
    sixth = bd.build_engines(config)
    assert all(g.reused for g in sixth.exports) and not any(e.reused for e in sixth.engines)
    assert all(e.manifest["contract"]["profile"] == {"min": 1, "opt": 3, "max": 3} for e in sixth.engines)


def test_a_deleted_engine_file_is_rebuilt(tmp_path):
    config = _config(tmp_path, precisions=("fp32",), kinds=("dense",))
    engine = bd.build_engines(config).engines[0]
    engine.path.unlink()
    rebuilt = bd.build_engines(config).engines[0]
    assert not rebuilt.reused and rebuilt.path.is_file()


@needs_no_trt
def test_auto_backend_without_tensorrt_says_so_and_builds_ort(tmp_path, capsys):
    argv = [
        "--model",
        "tiny-dit",
        "--precision",
        "fp32",
        "--kinds",
        "dense",
        "--max-batch",
        "2",
        "--export-dir",
        str(tmp_path / "x"),
        "--engine-dir",
        str(tmp_path / "e"),
    ]
    assert bd.main(argv) == 0
    out = capsys.readouterr().out
    assert "No TensorRT engine was built: " in out and "; built ONNX Runtime engines instead" in out
    assert (tmp_path / "e" / "dense-fp32.ort.onnx").is_file() and (tmp_path / "e" / "dense-fp32.ort.json").is_file()
    assert bd.main(argv + ["--backend", "tensorrt"]) == 2
    assert "--backend tensorrt, but" in capsys.readouterr().err


def test_execution_providers_are_matched_by_whole_name(built, monkeypatch):
    """The runner decides by the provider's name, whether the entry is a name or (name, options)."""
    from sparse_deploy.backends import ort as ort_backend

    engine = next(e for e in built[1].engines if e.kind == "sparse" and e.precision == "fp16")
    sessions = []

    class Session:
        def __init__(self, path, options, providers):
            self.path, self.providers = path, providers
            sessions.append(self)

        def get_providers(self):
            return [ort_backend.provider_name(p) for p in self.providers]

    monkeypatch.setattr(ort_backend, "session_problem", lambda session, contract: None)
    monkeypatch.setattr(ort, "InferenceSession", Session)
    cache = engine.path.parent / f".{engine.path.stem}.ort-trt-cache"
    for providers, uses_cache in (
        (["CUDAExecutionProvider", "CPUExecutionProvider"], False),
        ([("TensorrtExecutionProvider", {"trt_sparsity_enable": "True"}), "CPUExecutionProvider"], True),
        (["CPUExecutionProvider"], False),
    ):
        monkeypatch.setattr(ort_backend, "choose_providers", lambda *a, p=providers, **k: p)
        runner = ort_backend.OrtRunner(engine.path, json.loads(engine.manifest_path.read_text()), device="auto")
        assert cache.is_dir() == uses_cache, providers
        on_gpu = ort_backend.provider_name(providers[0]) != "CPUExecutionProvider"
        # On a GPU provider the CPU-optimized engine is swapped for its source graph.
        assert Path(sessions[-1].path).name == (
            engine.manifest["source_onnx"].rsplit("/", 1)[-1] if on_gpu else engine.path.name
        )
        del runner
        if cache.is_dir():
            cache.rmdir()
    assert ort_backend.provider_name(("TensorrtExecutionProvider", {})) == "TensorrtExecutionProvider"
    assert ort_backend.provider_name("CUDAExecutionProvider") == "CUDAExecutionProvider"


def test_build_config_validation(tmp_path):
    with pytest.raises(SparseDeployError, match="unknown --backend"):
        bd.BuildConfig(export=ExportConfig(model="tiny-dit"), backend="tvm").validate()
    assert bd.engine_path("engines/m", "sparse", "fp16", "tensorrt").as_posix() == "engines/m/sparse-fp16.trt.plan"
    assert bd.engine_path("engines/m", "dense", "fp32", "onnxruntime").as_posix() == "engines/m/dense-fp32.ort.onnx"


@pytest.mark.parametrize(
    "module",
    [
        "build",
        "export",
        "run",
        "backends",
        "backends.base",
        "backends.device",
        "backends.ort",
        "backends.trt",
        "backends.pytorch",
        "backends.torch24",
    ],
)
def test_every_module_imports_without_a_gpu(module):
    importlib.import_module(f"sparse_deploy.{module}")


def test_tensorrt_path_with_stand_ins(tmp_path, monkeypatch):
    """The TensorRT build and runner plumbing, with TensorRT and Polygraphy's builder replaced by
    stand-ins (this machine has no GPU): flags, profile, log parsing, manifest, reuse, refusal."""
    import sys
    import types

    import polygraphy.backend.trt as poly_trt
    from polygraphy.logger import G_LOGGER

    from sparse_deploy.backends import trt as trt_backend
    from sparse_deploy.export import read_onnx_manifest
    from sparse_deploy.sources import diffusers_class

    diffusers_class("dit")  # imported before the stand-in: diffusers probes for an installed tensorrt
    flag_names = ("DIRECT_IO", "SPARSE_WEIGHTS", "STRICT_NANS", "TF32")
    fake_trt = types.SimpleNamespace(
        __version__="11.1.0",
        ProfilingVerbosity=types.SimpleNamespace(DETAILED="detailed"),
        LayerInformationFormat=types.SimpleNamespace(JSON="json"),
        BuilderFlag=types.SimpleNamespace(**{n: n for n in flag_names}, __members__={n: n for n in flag_names}),
    )
    gpu = {"name": "Stand-in GPU", "compute_capability": "9.0"}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(bd, "tensorrt_unavailable_reason", lambda: None)
    monkeypatch.setattr(bd, "cuda_device", lambda: gpu)
    monkeypatch.setattr(trt_backend, "cuda_device", lambda: gpu)
    calls, runs = [], []
    broken = {"output": False}

    class Network:
        def __init__(self, path, strongly_typed=False):
            self.path, self.strongly_typed = path, strongly_typed

    class BuilderConfig:  # TensorRT's IBuilderConfig: flags as Polygraphy's CreateConfig would set them
        def __init__(self, kwargs):
            self.kwargs = kwargs
            self.flags = (
                {"DIRECT_IO"}
                | ({"TF32"} if kwargs["tf32"] else set())
                | ({"SPARSE_WEIGHTS"} if kwargs["sparse_weights"] else set())
            )

        def get_flag(self, flag):
            return flag in self.flags

    class CreateConfig:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def __call__(self, builder, network):
            return BuilderConfig(self.kwargs)

    class Engine:
        def __init__(self, onnx_path):
            self.onnx_path = onnx_path

        def create_engine_inspector(self):
            layers = [{"Name": "x", "HasSparseWeights": 0, "TacticName": "gemm"}]
            return types.SimpleNamespace(get_engine_information=lambda fmt: json.dumps({"Layers": layers}))

    class EngineFromNetwork:
        def __init__(self, network, config=None, save_timing_cache=None):
            self.network, self.loader, self.cache = network, config, save_timing_cache

        def __call__(self):
            self.config = self.loader(None, self.network)  # what EngineFromNetwork does with a config loader
            calls.append(self)
            if self.config.kwargs["sparse_weights"]:
                nodes = [
                    n
                    for ns in read_onnx_manifest(self.network.path)["sparsity_check"]["layer_nodes"].values()
                    for n in ns
                ]
                G_LOGGER.verbose("[TRT] (Sparsity) Layers eligible for sparse math: " + ", ".join(nodes))
                G_LOGGER.verbose(
                    "[TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: " + nodes[0]
                )
            return Engine(self.network.path)

    class TrtRunner:  # runs the "plan" as ONNX Runtime runs its graph (plus an offset when broken)
        def __init__(self, engine):
            self.session = ort.InferenceSession(engine.onnx_path, providers=["CPUExecutionProvider"])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def infer(self, feeds):
            runs.append(len(next(iter(feeds.values()))))
            out = self.session.run(None, feeds)[0]
            return {"out": out + 1 if broken["output"] else out}

    class SaveEngine:
        def __init__(self, engine, path):
            self.path = path

        def __call__(self):
            Path(self.path).write_bytes(b"stand-in plan")

    for name, value in dict(
        NetworkFromOnnxPath=Network,
        CreateConfig=CreateConfig,
        EngineFromNetwork=EngineFromNetwork,
        SaveEngine=SaveEngine,
        TrtRunner=TrtRunner,
    ).items():
        monkeypatch.setattr(poly_trt, name, value)

    config = _config(tmp_path, precisions=("fp16",))
    config.backend = "auto"
    report = bd.build_engines(config)
    assert report.backend == "tensorrt" and report.fallback_reason is None
    assert not G_LOGGER.use_python_logging_system  # the logger is handed back as it was
    engines = {e.kind: e for e in report.engines}
    assert sorted(e.path.name for e in report.engines) == ["dense-fp16.trt.plan", "sparse-fp16.trt.plan"]
    sparse = json.loads(engines["sparse"].manifest_path.read_text())
    dense = json.loads(engines["dense"].manifest_path.read_text())
    assert sparse["format"] == ENGINE_FORMAT and sparse["backend"] == "tensorrt"
    assert (sparse["gpu"], sparse["compute_capability"], sparse["tensorrt_version"]) == (
        "Stand-in GPU",
        "9.0",
        "11.1.0",
    )
    # The full flag set TensorRT held, and the requested settings (TF32 on explicitly).
    assert sparse["builder_flags"] == ["DIRECT_IO", "SPARSE_WEIGHTS", "TF32"] and dense["builder_flags"] == [
        "DIRECT_IO",
        "TF32",
    ]
    assert sparse["builder_config"] == {
        "sparse_weights": True,
        "tf32": True,
        "profiling_verbosity": "DETAILED",
        "precision_constraints": None,
        "builder_optimization_level": None,
    }
    assert dense["builder_config"]["sparse_weights"] is False and dense["builder_config"]["tf32"] is True
    assert sparse["pattern"] == "2:4" and dense["pattern"] is None
    # Each plan was run at the profile's min and opt batch against ONNX Runtime before it was kept.
    for m in (sparse, dense):
        assert m["engine_check"]["passed"] and set(m["engine_check"]["batches"]) == {"1", "4"}
    assert sorted(runs) == [1, 1, 4, 4]
    assert len(sparse["sparse_eligible_layers"]) == 12 and sorted(sparse["sparse_eligible_modules"]) == sorted(
        sparse["sparse_layers"]
    )
    assert len(sparse["sparse_picked_layers"]) == 1 and len(sparse["sparse_picked_modules"]) == 1
    assert dense["sparse_picked_layers"] == [] and dense["sparse_eligible_layers"] == []
    for call in calls:
        assert call.network.strongly_typed
        assert call.config.kwargs["tf32"] is True
        assert call.config.kwargs["profiling_verbosity"] == "detailed"
        assert call.config.kwargs["load_timing_cache"] == call.cache and "timing-sm90-trt11.1.0" in call.cache
        profile = call.config.kwargs["profiles"][0]
        assert tuple(profile["sample"].min) == (1, 1, 16, 16) and tuple(profile["sample"].max) == (4, 1, 16, 16)
    assert all(e.reused for e in bd.build_engines(config).engines)

    fake_trt.__version__ = "11.4.0"  # TensorRT upgraded: the plan must be rebuilt, not run
    with pytest.raises(SparseDeployError, match=r"built for TensorRT 11.1.0 \(this machine has 11.4.0\)"):
        load_runner(engines["sparse"].path)
    assert not any(e.reused for e in bd.build_engines(config).engines)

    config.tf32 = False  # a builder setting changed: rebuilt, and recorded
    rebuilt = bd.build_engines(config).engines
    assert not any(e.reused for e in rebuilt) and all(e.manifest["builder_config"]["tf32"] is False for e in rebuilt)
    assert all("TF32" not in e.manifest["builder_flags"] for e in rebuilt)

    broken["output"] = True  # a plan that computes something else is refused and not kept
    config.force = True
    with pytest.raises(SparseDeployError, match="does not match ONNX Runtime"):
        bd.build_engines(config)
    assert not [p for p in config.engine_dir.iterdir() if p.name.endswith(".plan") and p.name.startswith(".")]
