"""What the GPU machine has: the one-sentence reasons to do nothing, its facts, and the carried wheels."""

from __future__ import annotations

import sys

from sparse_deploy.gpu_check import machine
from sparse_deploy.lazy import LazyModule


def test_a_cpu_only_pytorch_sees_no_gpu():
    reason = machine.no_gpu_reason()
    assert reason is not None and "sees no CUDA GPU" in reason and reason.startswith("PyTorch ")


def test_a_python_without_pytorch_says_so(monkeypatch):
    monkeypatch.setattr(machine, "torch", LazyModule("no_such_torch_here", "the GPU check", "install PyTorch"))
    reason = machine.no_gpu_reason()
    assert reason.startswith(f"this Python ({sys.executable}) cannot import PyTorch (ModuleNotFoundError: ")


def test_facts_are_best_effort_without_a_gpu():
    facts = machine.gpu_facts()
    assert facts["torch"] and facts["python"] == sys.version.split()[0] and "error" in facts  # no device 0 to describe


def test_no_carried_wheels_means_this_pythons_packages(tmp_path):
    assert machine.install_wheels(tmp_path / "none", tmp_path / "site") == {
        "wheels": [],
        "note": f"no wheels in {tmp_path / 'none'}: using what this Python has",
    }
    assert all("==" in w for w in machine.GPU_WHEELS) and machine.REPO.joinpath("pyproject.toml").is_file()
