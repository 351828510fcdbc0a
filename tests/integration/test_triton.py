"""Triton: repository configs parse against Triton's own schema and match the exported model; the
CPU-flavour repository is served by the real tritonserver and gives the same images as
``sampling.sample`` over HTTP and gRPC; bad requests get clear errors and the server keeps serving.

The schema checks need ``tritonclient`` (its ``model_config_pb2``); the served tests also need the
``tritonserver`` binary from the ``nvidia-pytriton`` wheel. Each skips with that reason otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from sparse_deploy.backends import load_runner
from sparse_deploy.build import BuildConfig, build_engines
from sparse_deploy.contract import IOContract, contract_for
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.export import ExportConfig
from sparse_deploy.presets import get_preset
from sparse_deploy.provenance import seal_problem, sha256_file, write_manifest
from sparse_deploy.sampling import sample
from sparse_deploy.triton import pipeline as pl
from sparse_deploy.triton import repository as repo
from sparse_deploy.triton.pbtxt import Enum, to_pbtxt

HAVE_TRITONCLIENT = importlib.util.find_spec("tritonclient") is not None
HAVE_PYTRITON = importlib.util.find_spec("pytriton") is not None
needs_schema = pytest.mark.skipif(
    not HAVE_TRITONCLIENT,
    reason="tritonclient is not installed (pip install 'tritonclient[http,grpc]==2.73.0'); it "
    "ships Triton's model_config_pb2",
)
needs_server = pytest.mark.skipif(
    not (HAVE_TRITONCLIENT and HAVE_PYTRITON),
    reason="needs tritonclient and the tritonserver binary from nvidia-pytriton "
    "(pip install 'tritonclient[http,grpc]==2.73.0'; pip install --no-deps "
    "nvidia-pytriton==0.7.0)",
)

MAX_BATCH = 4
ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64"}  # onnx.TensorProto element types


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, Path]:
    """tiny-dit ONNX Runtime engines (sparse; fp32 and fp16; max batch 4), built the one way engines are built."""
    tmp = tmp_path_factory.mktemp("engines")
    export = ExportConfig(
        model="tiny-dit", out=tmp / "export", precisions=("fp32", "fp16"), kinds=("sparse",), max_batch=MAX_BATCH
    )
    report = build_engines(BuildConfig(export=export, backend="onnxruntime", engine_dir=tmp / "engines"))
    return {e.precision: e.path for e in report.engines}


@pytest.fixture(scope="module")
def trt_engine(tmp_path_factory) -> Path:
    """A stand-in TensorRT engine: real manifest, placeholder plan bytes (the generator only copies it)."""
    folder = tmp_path_factory.mktemp("trt")
    plan = folder / "sparse-fp16.trt.plan"
    plan.write_bytes(b"not a real plan: config generation only")
    contract = contract_for(get_preset("tiny-dit"), "fp16")
    write_manifest(
        folder / "sparse-fp16.trt.json",
        {  # sealed, as build writes it
            "format": "sparse-deploy-engine/1",
            "backend": "tensorrt",
            "engine": plan.name,
            "engine_sha256": sha256_file(plan),
            "kind": "sparse",
            "precision": "fp16",
            "preset": "tiny-dit",
            "contract": contract.to_dict(),
            "compute_capability": "8.9",
            "tensorrt_version": "10.13.0",
            "gpu": "NVIDIA L4",
            "builder_flags": ["SPARSE_WEIGHTS"],
        },
    )
    return plan


def _parse(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _dtype(config, value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(value)


def _onnx_io(path: Path, contract: IOContract) -> dict[str, tuple[str, list[int]]]:
    """name -> (Triton type, dims without the batch axis) of an ONNX file's inputs and outputs.

    Input dims are read from the graph; output dims (symbolic in the graph) from running it.
    """
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(path), load_external_data=False).graph
    out = {}
    for value in graph.input:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        assert dims[0] == -1, f"{value.name}: the batch axis must be dynamic"
        out[value.name] = (ONNX_TYPES[t.elem_type], dims[1:])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = session.run(None, contract.sample_inputs(3))
    for value, result in zip(graph.output, results, strict=True):
        assert result.shape[0] == 3
        out[value.name] = (ONNX_TYPES[value.type.tensor_type.elem_type], list(result.shape[1:]))
    return out


def _config_io(config) -> dict[str, tuple[str, list[int]]]:
    """name -> (Triton type, dims the model sees: reshape wins over dims)."""
    io = {}
    for t in (*config.input, *config.output):
        dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        io[t.name] = (_dtype(config, t.data_type), dims)
    return io


# --------------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------------


def test_pbtxt_writer_quotes_strings_and_writes_enums_bare():
    text = to_pbtxt(
        {"name": 'a"b', "kind": Enum("KIND_CPU"), "dims": [1, -1], "shape": [], "flag": True, "m": {"x": 1.5}}
    )
    assert 'name: "a\\"b"' in text and "kind: KIND_CPU" in text and "dims: [ 1, -1 ]" in text
    assert "shape: [ ]" in text and "flag: true" in text and "m {\n  x: 1.5\n}" in text


def test_parse_request_defaults_and_cycling():
    settings = pl.PipelineSettings(preset="tiny-dit", precision="fp32", max_batch=4)
    r = pl.parse_request({}, settings)
    assert (r.num_images, r.seed, r.labels, r.steps, r.guidance, r.scheduler) == (1, 0, None, 50, 1.0, "ddim")
    r = pl.parse_request(
        {"class_labels": np.array([3, 4], np.int64), "num_images": np.array([3]), "seed": np.array([7])},
        settings,
        {"scheduler": "dpm"},
    )
    assert (r.num_images, r.labels, r.seed, r.scheduler, r.first) == (3, (3, 4), 7, "dpm", 0)
    assert pl.parse_request({"first_image": np.array([6]), "seed": np.array([7])}, settings).first == 6


def test_a_request_draws_the_images_of_its_place_in_a_larger_draw():
    """first_image: a client splitting a draw over requests gets run's images, whatever its batch."""
    from sparse_deploy.sampling import sample

    preset = get_preset("tiny-dit")
    fake = lambda x, t, y: 0.1 * x + 0.01 * (y.float() - 5).view(-1, 1, 1, 1)  # noqa: E731
    request = pl.PipelineRequest(num_images=2, seed=7, labels=(3, 4), steps=2, guidance=1.0, scheduler="ddim", first=2)
    got = pl.run_request(request, fake, preset)["samples"]
    whole, _ = sample(fake, preset, batch=4, steps=2, seed=7, labels=[1, 2, 3, 4])
    np.testing.assert_allclose(got, whole[2:].numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "values, params, message",
    [
        ({"steps": np.array([0])}, None, "'steps' must be between 1 and 1000"),
        ({"class_labels": np.array([1, 10])}, None, "unknown class label(s) [10]"),
        ({"num_images": np.array([5])}, None, "above the engine's max batch 4"),
        ({"num_images": np.array([3]), "guidance": np.array([2.0], np.float32)}, None, "send at most 2 images"),
        ({"seed": np.array([1.5], np.float32)}, None, "'seed' must be INT64"),
        ({"seed": np.array([1, 2])}, None, "exactly one value"),
        ({"first_image": np.array([-1])}, None, "'first_image' must be at least 0"),
        ({"class_labels": np.array([[1, 2]])}, None, "1-D"),
        ({"guidance": np.array([np.nan], np.float32)}, None, "finite"),
        ({}, {"scheduler": "euler"}, "unknown scheduler 'euler'"),
        ({"bogus": np.array([1])}, None, "unknown input"),
    ],
)
def test_parse_request_refuses_bad_requests_clearly(values, params, message):
    settings = pl.PipelineSettings(preset="tiny-dit", precision="fp32", max_batch=4)
    with pytest.raises(SparseDeployError) as err:
        pl.parse_request(values, settings, params)
    assert message in str(err.value)


def test_unconditional_pipeline_has_no_labels():
    settings = pl.PipelineSettings(preset="tiny-unet", precision="fp32", max_batch=4)
    unconditional = pl.PipelineSettings(preset="ddpm-cifar10", precision="fp32", max_batch=4)
    assert [t.name for t in pl.pipeline_outputs(get_preset("ddpm-cifar10"))] == ["images", "samples"]
    with pytest.raises(SparseDeployError, match="unconditional"):
        pl.parse_request({"class_labels": np.array([1])}, unconditional)
    with pytest.raises(SparseDeployError, match="unconditional"):
        pl.parse_request({"guidance": np.array([3.0], np.float32)}, unconditional)
    assert pl.parse_request({"class_labels": np.array([1])}, settings).labels == (1,)


def test_max_batch_cannot_exceed_the_engine_profile():
    contract = contract_for(get_preset("tiny-dit"), "fp32")
    with pytest.raises(SparseDeployError, match="above the engine's profile max 64"):
        repo.denoiser_config(contract, "onnxruntime", max_batch=65)
    assert repo.denoiser_config(contract, "onnxruntime", max_batch=16)["max_batch_size"] == 16


def test_repository_config_validation():
    with pytest.raises(SparseDeployError, match="--flavour"):
        repo.RepositoryConfig(engine=Path("x"), out=Path("y"), flavour="tensorflow").validate()
    with pytest.raises(SparseDeployError, match="not a valid Triton model name"):
        repo.RepositoryConfig(engine=Path("x"), out=Path("y"), name="a b").validate()
    with pytest.raises(SparseDeployError, match="must differ"):
        repo.RepositoryConfig(engine=Path("x"), out=Path("y"), name="p", pipeline_name="p").validate()


def test_missing_pytriton_is_one_sentence_with_the_install_line(monkeypatch):
    from sparse_deploy.triton import server

    monkeypatch.setattr(server.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SparseDeployError) as err:
        server.find_tritonserver()
    assert "pip install --no-deps nvidia-pytriton==0.7.0" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(
    not HAVE_PYTRITON, reason="nvidia-pytriton is not installed (pip install --no-deps nvidia-pytriton==0.7.0)"
)
def test_server_environment_points_at_this_interpreter():
    import sysconfig

    from sparse_deploy.triton import server

    dist = server.find_tritonserver()
    assert dist.binary.is_file() and dist.stub.parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"
    env = server.server_environment(dist, base={"PATH": "/usr/bin"})
    assert env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")
    assert str(Path(repo.__file__).resolve().parents[2]) in env["PYTHONPATH"].split(":")


def test_client_helpers():
    from sparse_deploy.client import LoadTestConfig, is_loopback, latency_stats

    assert is_loopback("127.0.0.1:8001") and is_loopback("localhost:8000") and is_loopback("[::1]:8001")
    assert not is_loopback("10.1.2.3:8001")
    with pytest.raises(SparseDeployError, match="loopback"):
        LoadTestConfig(url="10.1.2.3:8001").validate()
    stats = latency_stats([0.1] * 98 + [1.0, 2.0])
    assert stats["p50_ms"] == pytest.approx(100) and stats["max_ms"] == pytest.approx(2000) and stats["p99_ms"] > 900


# --------------------------------------------------------------------------------------------
# Configs against Triton's schema
# --------------------------------------------------------------------------------------------


@needs_schema
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("flavour", ["onnxruntime", "python"])
def test_onnx_flavours_parse_and_match_the_model(engines, tmp_path, flavour, precision):
    engine = engines[precision]
    report = repo.generate_repository(
        repo.RepositoryConfig(engine=engine, out=tmp_path, flavour=flavour, instances=2, ort_accelerator="tensorrt")
    )
    config = _parse(report.denoiser / "config.pbtxt")
    assert config.name == "denoiser" and config.max_batch_size == MAX_BATCH
    assert config.instance_group[0].count == 2
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    if flavour == "onnxruntime":
        model_file = report.denoiser / "1" / "model.onnx"
        assert config.platform == "onnxruntime_onnx" and not config.backend
        # The source graph, not the CPU-optimized engine: valid for every execution provider.
        manifest = json.loads(engine.with_suffix(".json").read_text())
        assert sha256_file(model_file) == manifest["source_onnx_sha256"]
        (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt"
        assert accelerator.parameters["trt_sparsity_enable"] == "1"
        assert accelerator.parameters["precision_mode"] == ("FP16" if precision == "fp16" else "FP32")
        assert accelerator.parameters["trt_profile_max_shapes"].startswith(f"sample:{MAX_BATCH}x1x16x16")
    else:
        assert config.backend == "python" and not config.platform
        assert config.parameters["engine"].string_value == engine.name
        model_file = report.denoiser / "1" / engine.name
        assert (report.denoiser / "1" / "model.py").is_file() and (
            report.denoiser / "1" / engine.with_suffix(".json").name
        ).is_file()
        assert sha256_file(model_file) == sha256_file(engine)
    contract = IOContract.from_dict(json.loads(engine.with_suffix(".json").read_text())["contract"])
    assert _config_io(config) == _onnx_io(model_file, contract)
    assert [t.name for t in config.input] == ["sample", "timestep", "class_labels"]


@needs_schema
def test_tensorrt_flavour_parses_and_matches_the_contract(trt_engine, tmp_path):
    report = repo.generate_repository(repo.RepositoryConfig(engine=trt_engine, out=tmp_path, max_batch=32))
    assert report.flavour == "tensorrt"
    config = _parse(report.denoiser / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert dict(config.cc_model_filenames) == {"8.9": "model.plan"}
    assert (report.denoiser / "1" / "model.plan").read_bytes() == trt_engine.read_bytes()
    assert config.max_batch_size == 32
    from tritonclient.grpc import model_config_pb2

    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    contract = IOContract.from_dict(json.loads(trt_engine.with_suffix(".json").read_text())["contract"])
    want = {t.name: (repo.TRITON_DTYPES[t.dtype], list(t.shape[1:])) for t in (*contract.inputs, *contract.outputs)}
    assert _config_io(config) == want
    assert want["sample"] == ("TYPE_FP16", [1, 16, 16]) and want["timestep"] == ("TYPE_INT64", [])
    # Per-row scalars: clients send [batch, 1], the plan sees [batch].
    timestep = next(t for t in config.input if t.name == "timestep")
    assert list(timestep.dims) == [1] and list(timestep.reshape.shape) == []
    pipeline = _parse(report.pipeline / "config.pbtxt")
    assert (
        pipeline.parameters["precision"].string_value == "fp16"
        and pipeline.parameters["max_batch"].string_value == "32"
    )


@needs_schema
def test_tensorrt_flavour_needs_a_plan(engines, tmp_path):
    with pytest.raises(SparseDeployError, match="needs a TensorRT engine"):
        repo.generate_repository(repo.RepositoryConfig(engine=engines["fp32"], out=tmp_path, flavour="tensorrt"))


@needs_schema
def test_pipeline_config_parses_and_describes_the_pipeline(engines, tmp_path):
    report = repo.generate_repository(repo.RepositoryConfig(engine=engines["fp32"], out=tmp_path, pipeline_instances=2))
    assert report.flavour == "python"  # auto: an ONNX engine gets the flavour every Triton can run
    config = _parse(report.pipeline / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 0 and config.instance_group[0].count == 2
    assert {t.name: (_dtype(config, t.data_type), list(t.dims), t.optional) for t in config.input} == {
        "seed": ("TYPE_INT64", [1], True),
        "first_image": ("TYPE_INT64", [1], True),
        "num_images": ("TYPE_INT64", [1], True),
        "class_labels": ("TYPE_INT64", [-1], True),
        "steps": ("TYPE_INT64", [1], True),
        "guidance": ("TYPE_FP32", [1], True),
    }
    assert {t.name: (_dtype(config, t.data_type), list(t.dims)) for t in config.output} == {
        "images": ("TYPE_UINT8", [-1, 16, 16, 1]),
        "samples": ("TYPE_FP32", [-1, 1, 16, 16]),
        "labels": ("TYPE_INT64", [-1]),
    }
    settings = pl.PipelineSettings.from_parameters({k: v.string_value for k, v in config.parameters.items()})
    assert settings == pl.PipelineSettings(
        preset="tiny-dit", precision="fp32", max_batch=MAX_BATCH, denoiser="denoiser"
    )
    assert (report.pipeline / "1" / "model.py").read_text() == (
        Path(repo.__file__).parent / "model_pipeline.py"
    ).read_text()
    record = json.loads((report.pipeline / "sparse-deploy.json").read_text())
    assert record["flavour"] == "python" and record["denoiser"] == "denoiser"
    assert seal_problem(record) is None and "manifest_sha256" in record


def test_cli_writes_a_repository(engines, tmp_path, capsys):
    from sparse_deploy.triton.cli import main

    assert (
        main(
            [
                "--engine",
                str(engines["fp32"]),
                "--out",
                str(tmp_path / "r"),
                "--name",
                "dit",
                "--pipeline-name",
                "dit-pipeline",
            ]
        )
        == 0
    )
    assert (tmp_path / "r" / "dit" / "config.pbtxt").is_file() and (
        tmp_path / "r" / "dit-pipeline" / "1" / "model.py"
    ).is_file()
    assert main(["--engine", str(tmp_path / "missing.ort.onnx"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The real server
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(engines, tmp_path_factory):
    """The CPU-flavour repository of the fp32 engine, served by tritonserver on loopback; always stopped."""
    if not (HAVE_TRITONCLIENT and HAVE_PYTRITON):
        pytest.skip(
            "needs tritonclient and nvidia-pytriton (pip install "
            "'tritonclient[http,grpc]==2.73.0'; pip install --no-deps nvidia-pytriton==0.7.0)"
        )
    from sparse_deploy.triton.server import TritonServer

    root = tmp_path_factory.mktemp("repository")
    repo.generate_repository(
        repo.RepositoryConfig(engine=engines["fp32"], out=root, flavour="python", default_steps=10)
    )
    server = TritonServer(root, startup_timeout=90, attempts=2)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if server.last_log:
            logging.getLogger(__name__).info("tritonserver log tail:\n%s", server.last_log)
    assert server.process is not None and server.process.poll() is not None, "tritonserver is still running"


def _reference(engine: Path, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    from sparse_deploy.sampling import to_uint8

    with load_runner(engine) as runner:
        x, y = sample(runner, runner.preset, **kwargs)
    return x.numpy(), to_uint8(x)


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_pipeline_equals_sampling_sample(served, engines, protocol):
    from sparse_deploy.client import PipelineClient

    cases = [
        dict(num=3, seed=11, labels=[1, 7], steps=6, guidance=None, scheduler=None),
        dict(num=2, seed=5, labels=[4], steps=4, guidance=3.0, scheduler="ddpm"),  # CFG: denoiser batch 4 = max
    ]
    with PipelineClient(served.url(protocol), protocol) as client:
        for case in cases:
            got = client.generate(**case)
            want_x, want_images = _reference(
                engines["fp32"],
                batch=case["num"],
                seed=case["seed"],
                labels=case["labels"],
                steps=case["steps"],
                guidance=case["guidance"] or 1.0,
                scheduler=case["scheduler"] or "ddim",
            )
            scale = float(np.abs(want_x).max())
            np.testing.assert_allclose(got.samples, want_x, rtol=1e-4, atol=1e-4 * scale)
            assert got.images.dtype == np.uint8 and got.images.shape == want_images.shape == (case["num"], 16, 16, 1)
            assert np.abs(got.images.astype(int) - want_images.astype(int)).max() <= 1
            labels = case["labels"]
            assert got.labels.tolist() == [labels[i % len(labels)] for i in range(case["num"])]


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(served, protocol):
    from sparse_deploy.client import PipelineClient

    bad = {
        "wrong dtype": (
            dict(raw_inputs=[("seed", np.array([1.0], np.float32), "FP32")]),
            "data-type is 'FP32', but model 'pipeline' expects 'INT64'",
        ),
        "string tensor": (dict(raw_inputs=[("seed", np.array([b"1"], dtype=object), "BYTES")]), "expects 'INT64'"),
        "wrong shape": (
            dict(raw_inputs=[("seed", np.array([1, 2], np.int64), "INT64")]),
            "unexpected shape for input 'seed'",
        ),
        "2-D labels": (
            dict(raw_inputs=[("class_labels", np.array([[1, 2]], np.int64), "INT64")]),
            "unexpected shape for input 'class_labels'",
        ),
        "batch above max": (dict(num=MAX_BATCH + 1, steps=2), f"above the engine's max batch {MAX_BATCH}"),
        "batch above max with guidance": (dict(num=3, steps=2, guidance=2.0), "send at most 2 images per request"),
        "unknown class label": (dict(labels=[3, 10], steps=2), "unknown class label(s) [10]"),
        "steps 0": (dict(steps=0), "'steps' must be between 1 and 1000, got 0"),
        "unknown scheduler": (dict(steps=2, scheduler="euler"), "unknown scheduler 'euler'"),
    }
    with PipelineClient(served.url(protocol), protocol) as client:
        for what, (kwargs, message) in bad.items():
            with pytest.raises(SparseDeployError) as err:
                client.generate(**kwargs)
            assert message in str(err.value), what
            assert served.is_ready() and client.is_ready(), f"not ready after: {what}"
        result = client.generate(num=2, steps=2, seed=1)  # and it still answers
        assert result.images.shape == (2, 16, 16, 1)


@needs_server
def test_load_test_and_client_cli(served, tmp_path):
    from sparse_deploy.client import LoadTestConfig, load_test, main

    report = load_test(
        LoadTestConfig(url=served.grpc_url, protocol="grpc", concurrency=2, duration=2.0, steps=2, warmup=1)
    )
    assert report["failed"] == 0 and report["succeeded"] >= 2 and report["latency"]["p99_ms"] > 0
    out = tmp_path / "client"
    assert (
        main(
            [
                "--url",
                served.http_url,
                "--protocol",
                "http",
                "--num",
                "3",
                "--batch",
                "2",
                "--labels",
                "1,2",
                "--steps",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((out / "client.json").read_text())
    assert [r["num"] for r in record["requests"]] == [2, 1] and [
        (r["seed"], r["first_image"]) for r in record["requests"]
    ] == [(0, 0), (0, 2)]
    assert sorted(p.name for p in out.glob("*.png")) == [
        "grid.png",
        "sample-0000.png",
        "sample-0001.png",
        "sample-0002.png",
    ]
