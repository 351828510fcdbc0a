"""The GPU kit's report: report.json with every part's results, report.md's sections, and the plots."""

from __future__ import annotations

import json

from sparse_deploy.gpu_check import report as rp
from sparse_deploy.gpu_check.parts import PARTS


def _summary(median: float) -> dict:
    return {"median": median, "iqr": median / 10, "p10": median * 0.9, "p90": median * 1.1}


def _write_parts(out):
    gemm = {
        "gpu": "Stand-in",
        "kernel": "stand-in",
        "method": "interleaved",
        "complete": True,
        "shapes": [],
        "batches": [1, 8],
        "entries": [
            {
                "out": 64,
                "in": 32,
                "rows": 16 * r,
                "rows_per_sample": 16,
                "batch": r,
                "dtype": d,
                "presets": {"tiny-dit": 1},
                "example": "a",
                "dense": _summary(2e-5),
                "sparse": _summary(1e-5),
                "speedup": _summary(2.0),
                "max_rel_err": 0.0,
            }
            for r in (1, 8)
            for d in ("fp16", "bf16")
        ],
    }
    (out / "gemm.json").write_text(json.dumps(gemm))
    (out / "tests.json").write_text(
        json.dumps(
            {
                "pytest_exit_code": 1,
                "passed": ["t::a"],
                "failed": [{"test": "t::c", "reason": "boom"}],
                "errors": [],
                "skipped": [{"test": "t::b", "reason": "needs TensorRT"}],
            }
        )
    )
    (out / "tensorrt.json").write_text(json.dumps({"skipped": "no TensorRT engines: no CUDA GPU is visible"}))


def test_the_report_holds_every_part_that_ran_and_says_what_failed(tmp_path):
    _write_parts(tmp_path)
    report = {
        "kind": "gpu-check",
        "created": "today",
        "command": "python -m sparse_deploy.gpu_check",
        "budget_s": 450,
        "seconds": 3.0,
        "machine": {"gpu": "Stand-in"},
        "parts": [{"part": p, "status": "ok", "seconds": 1.0} for p in PARTS],
    }
    written = rp.write_report(tmp_path, report)
    full = json.loads(written["json"].read_text())
    assert set(full["results"]) == {"gemm", "tests", "tensorrt"}  # e2e did not run: no results, no section
    md = written["markdown"].read_text()
    for text in (
        "## Parts",
        "## tests/gpu",
        "1 passed, 1 failed",
        "boom",
        "needs TensorRT",
        "## Per-layer GEMMs",
        "### fp16",
        "### bf16",
        "## TensorRT",
        "no TensorRT engines",
    ):
        assert text in md, text
    assert "## End to end" not in md
    assert full["plots"] == {"gemm": "gemm_speedup.png"} and written["gemm"].is_file()


def test_unreadable_part_files_are_left_out(tmp_path):
    (tmp_path / "gemm.json").write_text("{not json")
    assert rp.load_json(tmp_path / "gemm.json") is None and rp.load_json(tmp_path / "missing.json") is None
    written = rp.write_report(
        tmp_path,
        {
            "kind": "gpu-check",
            "created": "?",
            "command": "?",
            "budget_s": "?",
            "seconds": "?",
            "machine": {},
            "parts": [],
        },
    )
    assert json.loads(written["json"].read_text())["results"] == {}
