"""The GPU kit's CPU-runnable parts: the one-sentence exit, arguments, shapes, the time boxes, the
parts themselves on CPU with stand-in kernels, and the report (``make gpu-check`` spends a whole
GPU lease in one call, so everything that can be checked here is)."""

from __future__ import annotations

import json
import sys

from sparse_deploy import gpu_check as gc
from sparse_deploy.gpu_check import cli


def test_without_a_gpu_it_says_why_in_one_sentence_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "gpu"
    assert gc.main(["--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: nothing to do: ") and "sees no CUDA GPU" in lines[0]
    assert not out.exists()


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
        "print(sorted(m for m in ('torch', 'numpy', 'diffusers', 'matplotlib', 'pytest') if "
        "m in sys.modules))"
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
