"""The GPU kit's CPU-runnable parts: the one-sentence exit, arguments, shapes, the time boxes, the
parts themselves on CPU with stand-in kernels, and the report (``make gpu-check`` spends a whole
GPU lease in one call, so everything that can be checked here is)."""

from __future__ import annotations

import json
import sys

import pytest

from sparse_deploy import gpu_check as gc
from sparse_deploy.gpu_check import cli, parts
from sparse_deploy import latency


def test_without_a_gpu_it_says_why_in_one_sentence_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "gpu"
    assert gc.main(["--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: nothing to do: ") and "sees no CUDA GPU" in lines[0]
    assert not out.exists()


def test_arguments():
    args = gc.build_parser().parse_args([])
    assert args.command == "run" and args.parts == gc.PARTS and args.budget == gc.DEFAULT_BUDGET_S < 8 * 60
    assert args.e2e_model == "dit-xl" and args.trt_model == "dit-s" and args.wheels.name == ".whl"
    assert gc.build_parser().parse_args(["--parts", "gemm,e2e"]).parts == ("gemm", "e2e")
    with pytest.raises(SystemExit):
        gc.build_parser().parse_args(["--parts", "gemm,fid"])
    # The parts' caps fit the budget with the report's reserve: none can eat the others' time.
    assert max(gc.PART_CAPS.values()) + gc.REPORT_RESERVE_S <= gc.DEFAULT_BUDGET_S
    assert set(gc.PART_CAPS) == set(gc.PARTS)


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


def test_run_part_time_boxes_and_reports_failures(tmp_path):
    ok = gc.run_part("a", [sys.executable, "-c", "print('fine')"], 60, tmp_path / "a.log")
    assert ok["status"] == "ok" and ok["returncode"] == 0 and "log_tail" not in ok
    bad = gc.run_part("b", [sys.executable, "-c", "raise SystemExit('boom')"], 60, tmp_path / "b.log")
    assert bad["status"] == "failed" and "boom" in bad["log_tail"]
    hung = gc.run_part(
        "c",
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); time.sleep(60)",
        ],
        2,
        tmp_path / "c.log",
    )
    assert hung["status"] == "timeout" and hung["seconds"] < 30  # the whole process group went, grandchild too


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


def test_parts_and_report_on_cpu(cpu_kit, tmp_path):
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
    (out / "tests.json").write_text(
        json.dumps(
            {
                "pytest_exit_code": 0,
                "passed": ["t::a"],
                "failed": [],
                "errors": [],
                "skipped": [{"test": "t::b", "reason": "needs TensorRT"}],
            }
        )
    )
    report = {
        "kind": "gpu-check",
        "created": "today",
        "command": "python -m sparse_deploy.gpu_check",
        "budget_s": 450,
        "seconds": 1.0,
        "machine": {"gpu": "Stand-in"},
        "parts": [{"part": p, "status": "ok", "seconds": 1.0} for p in gc.PARTS],
    }
    written = gc.write_report(out, report)
    md = written["markdown"].read_text()
    for heading in (
        "## Parts",
        "## tests/gpu",
        "## Per-layer GEMMs",
        "### fp16",
        "### bf16",
        "## End to end: tiny-dit",
        "## TensorRT",
    ):
        assert heading in md, heading
    assert "needs TensorRT" in md and "no TensorRT engines" in md
    assert written["gemm"].is_file() and written["e2e"].is_file()
    full = json.loads(written["json"].read_text())
    assert set(full["results"]) == set(gc.PARTS) and full["plots"] == {
        "gemm": "gemm_speedup.png",
        "e2e": "e2e_speedup.png",
    }


def test_a_hung_part_loses_only_itself(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gpu"

    def fake_run_part(name, argv, timeout, log_path, env=None):
        assert "--part" in argv and timeout <= gc.PART_CAPS[name]
        if name == "gemm":
            return {"part": name, "status": "timeout", "seconds": timeout, "log_tail": "still timing"}
        (out / "tests.json").write_text(
            json.dumps({"pytest_exit_code": 0, "passed": ["t::a"], "failed": [], "errors": [], "skipped": []})
        )
        return {"part": name, "status": "ok", "seconds": 1.0}

    monkeypatch.setattr(cli, "no_gpu_reason", lambda: None)
    monkeypatch.setattr(cli, "gpu_facts", lambda: {"gpu": "Stand-in", "torch": "2.11"})
    monkeypatch.setattr(cli, "install_wheels", lambda wheels, site: {"wheels": []})
    monkeypatch.setattr(cli, "run_part", fake_run_part)
    assert gc.main(["--out", str(out), "--parts", "tests,gemm"]) == 1  # one part timed out: not a clean run
    md = (out / "report.md").read_text()
    assert "| gemm | timeout |" in md and "| tests | ok |" in md and "1 passed, 0 failed" in md
    assert "wrote" in capsys.readouterr().out
    # With too little budget left, a part is skipped with the reason instead of being started.
    assert gc.main(["--out", str(out), "--parts", "tests", "--budget", "30"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["parts"][0]["status"] == "skipped" and "budget left" in report["parts"][0]["reason"]


def test_the_package_runs_as_a_module_and_imports_only_the_standard_library(tmp_path):
    """``make gpu-check`` runs ``python -m sparse_deploy.gpu_check`` before anything is known to be installed, and
    starts each part as ``python -m sparse_deploy.gpu_check part --part NAME``."""
    import subprocess

    probe = (
        "import sys, sparse_deploy.gpu_check; "
        "print(sorted(m for m in ('torch', 'numpy', 'diffusers', 'matplotlib', 'pytest') if m in sys.modules))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], cwd=gc.cli.REPO, capture_output=True, text=True, check=True
    )
    assert imported.stdout.strip() == "[]"
    part = subprocess.run(
        [sys.executable, "-m", "sparse_deploy.gpu_check", "part", "--part", "gemm", "--out", str(tmp_path / "gpu")],
        cwd=gc.cli.REPO,
        capture_output=True,
        text=True,
    )
    assert part.returncode == 0 and part.stdout.startswith("gpu-check: nothing to do: "), part.stderr[-2000:]
