"""The GPU kit's parts on the CPU: every distinct Linear shape, the GEMM profile and the end-to-end part with
stand-in 2:4 kernels, the TensorRT part's skip, and reading pytest's JUnit file."""

from __future__ import annotations

import json

import pytest

from sparse_deploy import gpu_check as gc
from sparse_deploy import latency
from sparse_deploy.gpu_check import parts


def test_every_distinct_linear_shape_of_dit_s_b_xl():
    shapes = {(s["out"], s["in"], s["rows_per_sample"]): s for s in gc.gemm_shapes()}
    # DiT-XL/2 at 256 px: 256 tokens per sample through q/k/v/out (112 layers), the MLP and the final projection.
    assert shapes[(1152, 1152, 256)]["presets"] == {"dit-xl": 112}
    assert shapes[(4608, 1152, 256)]["presets"] == {"dit-xl": 28} and shapes[(1152, 4608, 256)]["presets"] == {
        "dit-xl": 28
    }
    assert shapes[(32, 1152, 256)]["presets"] == {"dit-xl": 1}
    # Conditioning layers see one row per sample, block 0's reused embedder included.
    assert shapes[(6912, 1152, 1)]["presets"] == {"dit-xl": 28} and shapes[(1152, 256, 1)]["presets"] == {"dit-xl": 28}
    assert shapes[(384, 384, 256)]["presets"] == {"dit-s": 48} and shapes[(3072, 768, 256)]["presets"] == {"dit-b": 12}
    assert {r for _, _, r in shapes} == {1, 256}
    assert len(shapes) == 3 * 8  # eight distinct Linear shapes per model, none shared


@pytest.fixture()
def cpu_kit(monkeypatch):
    """The parts on the CPU: tiny presets, stand-in 2:4 kernels (the dense weight), two batches, two steps."""
    from sparse_deploy.backends import torch24

    monkeypatch.setattr(parts, "DEVICE", "cpu")
    monkeypatch.setattr(parts, "GEMM_PRESETS", ("tiny-dit",))
    monkeypatch.setattr(parts, "E2E_BATCHES", (1, 2))
    monkeypatch.setattr(parts, "SAMPLE_STEPS", 2)
    monkeypatch.setattr(latency, "_semi_structured", lambda w: w.clone())
    monkeypatch.setattr(torch24, "to_semi_structured_", lambda model, layers: (list(layers), {}))
    return gc.build_parser().parse_args(["--quick", "--e2e-model", "tiny-dit"])


def test_parts_on_cpu(cpu_kit, tmp_path):
    out = tmp_path / "gpu"
    out.mkdir()
    assert parts.part_gemm(out, cpu_kit)["entries"] > 0
    gemm = json.loads((out / "gemm.json").read_text())
    assert gemm["complete"] and {e["dtype"] for e in gemm["entries"]} == {"fp16", "bf16"}
    assert all(e["max_rel_err"] == 0 and e["speedup"]["median"] > 0 for e in gemm["entries"])
    profile = latency.load_latency_profile(out / "gemm.json")  # the kit's output is a --latency-profile
    assert len(profile.entries) == len(gemm["entries"])

    parts.part_e2e(out, cpu_kit)
    e2e = json.loads((out / "e2e.json").read_text())
    assert [b["batch"] for b in e2e["batches"]] == [1, 2] and e2e["converted_layers"] == e2e["sparse_layers"] == 12
    for b in e2e["batches"]:
        assert b["parity"]["max_abs_err"] == 0  # the stand-in kernels compute exactly the masked dense model
        assert b["eager"]["ratio"]["median"] > 0 and b["sampling"]["ratio"]["median"] > 0
        assert "error" in b["cuda_graph"]  # no CUDA here: capture fails, is said, and the eager figures stay
    assert "not tried after the capture at batch 1 failed" in e2e["batches"][1]["cuda_graph"]["error"]

    assert "no TensorRT engines" in parts.part_tensorrt(out, cpu_kit)["skipped"]


def test_junit_results_become_passed_failed_skipped_and_errors(tmp_path):
    xml = tmp_path / "tests.xml"
    xml.write_text("""<testsuites><testsuite>
      <testcase classname="tests.gpu.a" name="ok"/>
      <testcase classname="tests.gpu.a" name="bad"><failure message="assert 1 == 2"/></testcase>
      <testcase classname="tests.gpu.b" name="skip"><skipped message=" needs TensorRT "/></testcase>
      <testcase classname="tests.gpu.b" name="err"><error message="fixture broke"/></testcase>
    </testsuite></testsuites>""")
    assert parts._parse_junit(xml) == {
        "passed": ["tests.gpu.a::ok"],
        "failed": [{"test": "tests.gpu.a::bad", "reason": "assert 1 == 2"}],
        "skipped": [{"test": "tests.gpu.b::skip", "reason": "needs TensorRT"}],
        "errors": [{"test": "tests.gpu.b::err", "reason": "fixture broke"}],
    }
    assert parts._parse_junit(tmp_path / "missing.xml") == {"passed": [], "failed": [], "skipped": [], "errors": []}


def test_a_profile_row_carries_the_shape_and_its_timing():
    shape = {"out": 32, "in": 16, "rows_per_sample": 4, "presets": {"tiny-dit": 2}, "example": "a.b"}
    row = parts.gemm_row(shape, 8, "fp16", {"speedup": {"median": 1.5}})
    assert row == {
        "out": 32,
        "in": 16,
        "rows": 32,
        "rows_per_sample": 4,
        "batch": 8,
        "dtype": "fp16",
        "presets": {"tiny-dit": 2},
        "example": "a.b",
        "speedup": {"median": 1.5},
    }
    assert set(parts.PART_FUNCS) == set(parts.PARTS)
