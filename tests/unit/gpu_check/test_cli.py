"""The GPU kit's command line: its arguments and budget, and the time box around each part's process."""

from __future__ import annotations

import sys

import pytest

from sparse_deploy import gpu_check as gc


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
