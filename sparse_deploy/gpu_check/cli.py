"""``make gpu-check``: one prepared call that proves (or disproves) the speed claims on a GPU machine.

The command line of :mod:`sparse_deploy.gpu_check`: ``run`` (every part, each in its own process
group with its own time box, then the report), ``wheels``, ``report`` and ``part`` (one part, as
``run`` starts it: ``python -m sparse_deploy.gpu_check part --part NAME``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cliargs import MODULE_PROG, comma_list, finish_parser
from ..errors import SparseDeployError, cli_entry
from ..lazy import lazy_import
from ..provenance import timestamp
from .machine import REPO, download_wheels, gpu_facts, install_wheels, no_gpu_reason
from .parts import PART_FUNCS, PARTS
from .report import load_json, write_report

# Imports PyTorch: loaded only when a run on a GPU machine writes its report.
host = lazy_import("sparse_deploy.measure.machine")

__all__ = ["PART_CAPS", "DEFAULT_BUDGET_S", "REPORT_RESERVE_S", "MIN_PART_S", "run_part", "build_parser", "main"]

#: Seconds each part may take at most (less when the budget runs short).
PART_CAPS = {"tests": 120, "gemm": 150, "e2e": 150, "tensorrt": 300}
DEFAULT_BUDGET_S = 450  # the whole call, wheels and report included: under 8 minutes
REPORT_RESERVE_S = 15  # kept back from the parts for the report
MIN_PART_S = 20  # a part is not started with less than this left


# --------------------------------------------------------------------------------------------
# Running parts, each in its own process group with a time box
# --------------------------------------------------------------------------------------------


def run_part(
    name: str, argv: Sequence[str], timeout: float, log_path: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one part's command; kill its whole process group at ``timeout``. Returns its status record."""
    started = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as fh:
        proc = subprocess.Popen(
            list(argv), stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
    tail = log_path.read_text(errors="replace")[-3000:]
    record = {
        "part": name,
        "status": status,
        "returncode": rc,
        "seconds": round(time.perf_counter() - started, 1),
        "timeout_s": round(timeout, 1),
        "log": log_path.name,
    }
    if status != "ok":
        record["log_tail"] = tail
    return record


def _child_env(site: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = (
        [str(REPO)]
        + ([str(site)] if site is not None and site.is_dir() else [])
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parts(text: str) -> tuple[str, ...]:
    parts = comma_list(text)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are among {', '.join(PARTS)}; got {text!r}")
    return parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=MODULE_PROG + "gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=("run", "wheels", "report", "part"),
        help="run (default): every part and the report; wheels: download the wheels to carry; "
        "report: rewrite the report from the parts' JSON; part: one part (used by run)",
    )
    p.add_argument("--out", type=Path, default=REPO / "reports" / "gpu", help="report folder (default reports/gpu)")
    p.add_argument("--parts", type=_parts, default=PARTS, help=f"comma-separated, default {','.join(PARTS)}")
    p.add_argument("--part", choices=PARTS, help="with the part command: which part")
    p.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds for the whole call (default {DEFAULT_BUDGET_S})",
    )
    p.add_argument("--wheels", type=Path, default=REPO / ".whl", help="carried wheels (default .whl/)")
    p.add_argument(
        "--site",
        type=Path,
        default=REPO / ".cache" / "gpu-site",
        help="where the wheels are unpacked (default .cache/gpu-site/)",
    )
    p.add_argument("--e2e-model", default="dit-xl", help="preset of the end-to-end part (default dit-xl)")
    p.add_argument(
        "--trt-model",
        default="dit-s",
        help="preset of the TensorRT part (default dit-s: DiT-XL's export and builds do not fit the budget)",
    )
    p.add_argument("--quick", action="store_true", help="fewer batches and repeats (a smoke run)")
    return finish_parser(p)


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    started = time.perf_counter()
    deadline = started + args.budget
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in [
        *(out / f"{p}.json" for p in PARTS),
        out / "report.json",
        out / "report.md",
        *out.glob("*.png"),
        *out.glob("*.log"),
    ]:
        stale.unlink(missing_ok=True)  # a part that does not run this time leaves no old figures behind
    wheels = install_wheels(args.wheels, args.site)
    if wheels.get("error"):
        print(
            f"gpu-check: the wheels in {args.wheels} did not install "
            f"({wheels['error'].splitlines()[-1]}); going on without them",
            flush=True,
        )
    elif not wheels["wheels"] and importlib.util.find_spec("diffusers") is None:
        wheels["note"] = (
            wheels.get("note", "") + "; diffusers is missing, so the gemm, e2e and tensorrt parts cannot build models"
        )
        print(
            f"gpu-check: diffusers is not installed and {args.wheels} holds no wheels: run make "
            "gpu-wheels on a machine with "
            "internet and copy .whl/ along; the parts that build models will fail",
            flush=True,
        )
    env = _child_env(args.site if wheels.get("wheels") and not wheels.get("error") else None)
    base = [
        sys.executable,
        "-m",
        "sparse_deploy.gpu_check",
        "part",
        "--out",
        str(out),
        "--e2e-model",
        args.e2e_model,
        "--trt-model",
        args.trt_model,
    ]
    if args.quick:
        base.append("--quick")
    records = []
    for name in args.parts:
        left = deadline - time.perf_counter() - REPORT_RESERVE_S
        timeout = min(PART_CAPS[name], left)
        if timeout < MIN_PART_S:
            records.append(
                {
                    "part": name,
                    "status": "skipped",
                    "reason": f"only {max(left, 0):.0f} s of the {args.budget:.0f} s budget left",
                }
            )
            continue
        print(f"gpu-check: {name} (at most {timeout:.0f} s) ...", flush=True)
        record = run_part(name, [*base, "--part", name], timeout, out / f"{name}.log", env)
        records.append(record)
        print(f"gpu-check: {name} {record['status']} in {record['seconds']} s", flush=True)
    report = {
        "kind": "gpu-check",
        "created": timestamp(),
        "command": shlex.join(["python", "-m", "sparse_deploy.gpu_check", *argv]),
        "budget_s": args.budget,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {**gpu_facts(), "host": host.machine_info()},
        "wheels": wheels,
        "parts": records,
    }
    written = write_report(out, report)
    print(f"gpu-check: wrote {written['markdown']} and {written['json']}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in records) else 1


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "wheels":
        try:
            wheels = download_wheels(args.wheels)
        except SparseDeployError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        total = sum(w.stat().st_size for w in wheels)
        print(f"{args.wheels}: {', '.join(w.name for w in wheels)} ({total / 2**20:.1f} MiB)")
        return 0
    if args.command == "report":
        report = load_json(args.out / "report.json") or {
            "kind": "gpu-check",
            "created": "?",
            "command": "?",
            "budget_s": "?",
            "seconds": "?",
            "machine": {},
            "parts": [],
        }
        report.pop("results", None)
        report.pop("plots", None)
        print(f"wrote {write_report(args.out, report)['markdown']}")
        return 0
    reason = no_gpu_reason()
    if reason:
        print(f"gpu-check: nothing to do: {reason}; run it on a GPU machine (docs/RESULTS.md, 'GPU check').")
        return 0
    if args.command == "part":
        if args.part is None:
            print("error: the part command needs --part NAME", file=sys.stderr)
            return 2
        result = PART_FUNCS[args.part](args.out, args)
        print(json.dumps(result, default=str)[:2000])
        return 1 if result.get("failed_part") else 0
    return _run(args, argv)
