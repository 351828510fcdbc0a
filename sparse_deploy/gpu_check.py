"""``make gpu-check``: one prepared call that proves (or disproves) the speed claims on a GPU machine.

Made for a fresh GPU machine with PyTorch and CUDA but no internet, no diffusers and maybe no
TensorRT: the pure-Python wheels it lacks travel in ``.whl/`` (``make gpu-wheels``; see
:data:`GPU_WHEELS`) and are unpacked into ``.cache/gpu-site/`` with pip, offline. It writes
``reports/gpu/`` within :data:`DEFAULT_BUDGET_S` seconds, each part in its own process with its own
time box, so one failure or hang loses that part only:

=========  =====================================================================================
tests      ``pytest tests/gpu`` (TensorRT, torch24), with every skip and its reason
gemm       every distinct Linear shape of DiT-S/B/XL at 256 tokens x batch 1..64 (conditioning
           layers: batch rows), ``F.linear`` dense against 2:4 (``to_sparse_semi_structured``:
           cuSPARSELt, else CUTLASS), fp16 and bf16, interleaved, CUDA events, medians and
           spread; ``gemm.json`` is also a ``--latency-profile`` for training
e2e        DiT-XL/2 (random weights, one-shot 2:4 masks, fp16): one denoiser call and 50-step DDIM
           sampling, masked dense against 2:4 kernels, batch 1/8/32, eager and CUDA-graph replay,
           and the 2:4 model's output against the masked dense model's
tensorrt   where TensorRT imports: dense and sparse fp16 engines (``--trt-model``, default DiT-S),
           the layers TensorRT picked sparse kernels for, the plan against ONNX Runtime, latency
=========  =====================================================================================

Then ``report.json`` (everything, with the machine and command), ``report.md`` and plots. On a
machine without a CUDA GPU it prints one sentence and exits 0 having done nothing.
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
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["PARTS", "GPU_WHEELS", "DEFAULT_BUDGET_S", "no_gpu_reason", "gemm_shapes", "run_part", "write_report", "main"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
PARTS = ("tests", "gemm", "e2e", "tensorrt")
#: Seconds each part may take at most (less when the budget runs short).
PART_CAPS = {"tests": 120, "gemm": 150, "e2e": 150, "tensorrt": 300}
DEFAULT_BUDGET_S = 450  # the whole call, wheels and report included: under 8 minutes
REPORT_RESERVE_S = 15  # kept back from the parts for the report
MIN_PART_S = 20  # a part is not started with less than this left
#: Pure-Python wheels a bare GPU machine (PyTorch, numpy, onnx, onnxruntime, pytest present) lacks.
GPU_WHEELS = ("diffusers==0.42.1", "polygraphy==0.53.6", "importlib-metadata==10.2.0")
WHEEL_LIMIT_BYTES = 64 * 2**20
GEMM_PRESETS = ("dit-s", "dit-b", "dit-xl")
E2E_BATCHES = (1, 8, 32)
SAMPLE_STEPS = 50
DEVICE = "cuda"  # where the parts compute (the unit tests run them on "cpu" with stand-in kernels)


# --------------------------------------------------------------------------------------------
# What the machine has
# --------------------------------------------------------------------------------------------


def no_gpu_reason() -> str | None:
    """Why there is nothing to check here (no PyTorch, or no CUDA GPU visible to it), or None."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means the same here
        return f"this Python ({sys.executable}) cannot import PyTorch ({exc.__class__.__name__}: {exc})"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return f"PyTorch {torch.__version__} ({build}) sees no CUDA GPU"
    return None


def _gpu_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    try:
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                     multiprocessors=props.multi_processor_count)
        facts["cusparselt"] = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    except Exception as exc:  # noqa: BLE001 - facts are best effort; the parts say what failed
        facts["error"] = str(exc)
    return facts


# --------------------------------------------------------------------------------------------
# Wheels
# --------------------------------------------------------------------------------------------


def download_wheels(dest: Path) -> list[Path]:
    """``pip download`` :data:`GPU_WHEELS` (no dependencies, pure Python) into ``dest``; checks the size limit."""
    from .errors import SparseDeployError

    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(dest), *GPU_WHEELS]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SparseDeployError(f"pip download failed ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})")
    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    if total > WHEEL_LIMIT_BYTES:
        raise SparseDeployError(f"{dest} holds {total / 2**20:.1f} MiB of wheels, over the {WHEEL_LIMIT_BYTES // 2**20} MiB that travel; remove old ones")
    return wheels


def install_wheels(wheels: Path, site: Path) -> dict[str, Any]:
    """Unpack the carried wheels into ``site`` with pip, offline (``--no-index --no-deps``)."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        return {"wheels": [], "note": f"no wheels in {wheels}: using what this Python has"}
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
           "--target", str(site), *map(str, found)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return {"wheels": [w.name for w in found], "site": str(site), "returncode": proc.returncode,
            "error": proc.stderr.strip()[-2000:] if proc.returncode else None}


# --------------------------------------------------------------------------------------------
# Running parts, each in its own process group with a time box
# --------------------------------------------------------------------------------------------


def run_part(name: str, argv: Sequence[str], timeout: float, log_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one part's command; kill its whole process group at ``timeout``. Returns its status record."""
    started = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as fh:
        proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
    tail = log_path.read_text(errors="replace")[-3000:]
    record = {"part": name, "status": status, "returncode": rc, "seconds": round(time.perf_counter() - started, 1),
              "timeout_s": round(timeout, 1), "log": log_path.name}
    if status != "ok":
        record["log_tail"] = tail
    return record


def _child_env(site: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO)] + ([str(site)] if site is not None and site.is_dir() else []) + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --------------------------------------------------------------------------------------------
# Part: tests/gpu
# --------------------------------------------------------------------------------------------


def _parse_junit(path: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    out: dict[str, Any] = {"passed": [], "failed": [], "skipped": [], "errors": []}
    if not path.is_file():
        return out
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for tag, key in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
            child = case.find(tag)
            if child is not None:
                out[key].append({"test": name, "reason": (child.get("message") or "").strip()[:500]})
                break
        else:
            out["passed"].append(name)
    return out


def part_tests(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import pytest

    from .provenance import write_json_atomic

    xml = out / "tests.xml"
    rc = pytest.main([str(REPO / "tests" / "gpu"), "-m", "gpu", "-rs", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"])
    record = {"pytest_exit_code": int(rc), **_parse_junit(xml)}
    write_json_atomic(out / "tests.json", record)
    return {**record, "failed_part": int(rc) not in (0, 5)}  # 5: nothing collected


# --------------------------------------------------------------------------------------------
# Part: per-layer GEMMs
# --------------------------------------------------------------------------------------------


def gemm_shapes(presets: Sequence[str] = GEMM_PRESETS) -> list[dict[str, Any]]:
    """Every distinct Linear shape of the presets, with the presets and layer count using it."""
    from .latency import linear_shapes

    merged: dict[tuple[int, int, int], dict[str, Any]] = {}
    for preset in presets:
        for shape in linear_shapes(preset):
            entry = merged.setdefault(shape.key, {**shape.to_dict(), "presets": {}})
            entry["presets"][preset] = len(shape.layers)
    return sorted(merged.values(), key=lambda e: (-e["rows_per_sample"], e["in"], e["out"]))


def gemm_row(shape: dict[str, Any], batch: int, dtype: str, timing: dict[str, Any]) -> dict[str, Any]:
    """One profile entry (the format :func:`latency.load_latency_profile` reads)."""
    return {"out": shape["out"], "in": shape["in"], "rows": shape["rows_per_sample"] * batch, "rows_per_sample": shape["rows_per_sample"],
            "batch": batch, "dtype": dtype, "presets": shape["presets"], "example": shape["example"], **timing}


def part_gemm(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from .latency import GEMM_BATCHES, PROFILE_FORMAT, time_linear
    from .provenance import timestamp, write_json_atomic

    facts = _gpu_facts()
    shapes = gemm_shapes(GEMM_PRESETS)
    batches = (1, 8, 64) if args.quick else GEMM_BATCHES
    repeats = 5 if args.quick else 15
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    backend = "cuSPARSELt" if torch.backends.cusparselt.is_available() else "CUTLASS"
    record: dict[str, Any] = {
        "format": PROFILE_FORMAT, "gpu": facts.get("gpu"), "facts": facts, "created": timestamp(), "kernel": f"to_sparse_semi_structured ({backend})",
        "method": "F.linear(x, W) against F.linear(x, W_2:4) on the same 2:4-masked weight; each sample 10 back-to-back calls between "
                  f"CUDA events; dense and 2:4 interleaved, 3 warm-up rounds dropped, {repeats} timed; seconds per call",
        "shapes": shapes, "batches": list(batches), "entries": [], "complete": False,
    }
    for shape in shapes:  # written after every shape: a time-out keeps what was measured
        for dtype, torch_dtype in dtypes.items():
            for batch in batches:
                timing = time_linear(shape["out"], shape["in"], shape["rows_per_sample"] * batch, torch_dtype, device=DEVICE, repeats=repeats)
                record["entries"].append(gemm_row(shape, batch, dtype, timing))
        write_json_atomic(out / "gemm.json", record)
    record["complete"] = True
    write_json_atomic(out / "gemm.json", record)
    return {"entries": len(record["entries"]), "shapes": len(shapes), "profile": "gemm.json"}


# --------------------------------------------------------------------------------------------
# Part: end to end, DiT-XL/2
# --------------------------------------------------------------------------------------------


def _cuda_graph(model, inputs):
    """A function replaying one denoiser call captured in a CUDA graph: it copies its arguments into the
    captured inputs and returns the captured output tensor (raises where capture fails)."""
    import torch

    static = [t.clone() if t is not None else None for t in inputs]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            model(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        output = model(*static)

    def replay(*args):
        for dst, src in zip(static, args):
            if dst is not None:
                dst.copy_(src)
        graph.replay()
        return output

    return replay


def part_e2e(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import copy

    import torch

    from .backends.torch24 import to_semi_structured_
    from .measure.timing import ratio, run_interleaved, summarize
    from .models import build_model
    from .presets import get_preset
    from .provenance import write_json_atomic
    from .sampling import sample
    from .sparsify import SparsityConfig, bake_, select_layers, sparsify_

    preset = get_preset(args.e2e_model)
    torch.manual_seed(0)
    with torch.device(DEVICE):  # random init straight on the GPU (DiT-XL: seconds instead of a minute on the CPU)
        dense = build_model(preset, None, announce_random=False)
    dense = dense.to(DEVICE)  # buffers diffusers builds from numpy start on the CPU
    config = SparsityConfig(mode="oneshot")
    layers = select_layers(dense, config).selected
    sparsify_(dense, config, layers)
    bake_(dense)
    dense = dense.half().eval()
    sparse = copy.deepcopy(dense)
    converted, skipped = to_semi_structured_(sparse, layers)
    record: dict[str, Any] = {"model": preset.name, "precision": "fp16", "weights": "random init, one-shot magnitude 2:4 masks",
                              "sparse_layers": len(layers), "converted_layers": len(converted), "skipped_layers": skipped,
                              "sampling": f"{SAMPLE_STEPS} DDIM steps (sampling.sample: CPU scheduler, GPU denoiser)", "batches": []}
    models = {"dense": dense, "sparse": sparse}
    repeats = 5 if args.quick else 20
    sample_repeats = 1 if args.quick else 2

    def compare(tasks: dict[str, Callable[[], Any]], rounds: int, warmup: int) -> dict[str, Any]:
        with torch.no_grad():
            times = run_interleaved(tasks, rounds, warmup, DEVICE)
        return {"dense": summarize(times["dense"]), "sparse": summarize(times["sparse"]), "ratio": ratio(times["dense"], times["sparse"])}

    def sampler(run: Callable, batch: int) -> Callable[[], Any]:
        def denoise(s, ts, labels):
            return run(s.to(DEVICE).half(), ts.to(DEVICE), None if labels is None else labels.to(DEVICE)).float().cpu()
        return lambda: sample(denoise, preset, batch=batch, steps=SAMPLE_STEPS, scheduler="ddim", seed=0)

    inputs = {}
    for batch in E2E_BATCHES:  # eager first, for every batch: a failed graph capture below cannot cost these figures
        gen = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, preset.in_channels, preset.sample_size, preset.sample_size, generator=gen).to(DEVICE).half()
        t = torch.randint(0, 1000, (batch,), generator=gen).to(DEVICE)
        y = torch.randint(0, max(preset.num_classes, 1), (batch,), generator=gen).to(DEVICE) if preset.num_classes else None
        inputs[batch] = (x, t, y)
        entry: dict[str, Any] = {"batch": batch}
        record["batches"].append(entry)
        with torch.no_grad():
            want, got = dense(x, t, y).float(), sparse(x, t, y).float()
        entry["parity"] = {"max_abs_err": float((got - want).abs().max()), "max_abs_ref": float(want.abs().max()),
                           "relative": float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))}
        entry["eager"] = compare({name: (lambda m=m: m(x, t, y)) for name, m in models.items()}, repeats, 5)
        entry["sampling"] = compare({name: sampler(m, batch) for name, m in models.items()}, sample_repeats, 1)
        write_json_atomic(out / "e2e.json", record)
    failed = None
    for entry in record["batches"]:  # then CUDA-graph replay of the same calls, until a capture fails
        if failed is not None:
            entry["cuda_graph"] = {"error": f"not tried after the capture at batch {failed} failed"}
            continue
        x, t, y = inputs[entry["batch"]]
        try:
            graphs = {name: _cuda_graph(m, (x, t, y)) for name, m in models.items()}
            entry["cuda_graph"] = compare({name: (lambda g=g: g(x, t, y)) for name, g in graphs.items()}, repeats, 5)
            entry["cuda_graph"]["sampling"] = compare({name: sampler(g, entry["batch"]) for name, g in graphs.items()}, sample_repeats, 1)
            del graphs
        except Exception as exc:  # noqa: BLE001 - capture support varies with the kernels; say why, keep the eager figures
            entry["cuda_graph"] = {"error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            failed = entry["batch"]
        write_json_atomic(out / "e2e.json", record)
        torch.cuda.empty_cache()
    write_json_atomic(out / "e2e.json", record)
    return {"batches": [e["batch"] for e in record["batches"]], "file": "e2e.json"}


# --------------------------------------------------------------------------------------------
# Part: TensorRT (a user's machine)
# --------------------------------------------------------------------------------------------


def part_tensorrt(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from .backends.device import tensorrt_unavailable_reason
    from .measure.engine_latency import LatencyConfig, run_latency
    from .build import BuildConfig, build_engines
    from .export import ExportConfig
    from .provenance import write_json_atomic

    reason = tensorrt_unavailable_reason()
    if reason:
        record = {"skipped": f"no TensorRT engines: {reason}"}
        write_json_atomic(out / "tensorrt.json", record)
        return record
    work = out / "tensorrt-work"
    config = BuildConfig(export=ExportConfig(model=args.trt_model, out=work / "export", precisions=("fp16",), max_batch=64, opt_batch=8),
                         backend="tensorrt", engine_dir=work / "engines")
    report = build_engines(config)
    engines = {e.kind: e for e in report.engines}
    record: dict[str, Any] = {"model": args.trt_model, "engines": {}}
    for kind, e in engines.items():
        m = e.manifest
        record["engines"][kind] = {key: m.get(key) for key in ("gpu", "compute_capability", "tensorrt_version", "builder_flags", "builder_config",
                                                                "engine_check", "sparse_picked_modules", "sparse_eligible_modules", "sparse_layers",
                                                                "build_seconds")}
    write_json_atomic(out / "tensorrt.json", record)
    latency = run_latency(LatencyConfig(engines=(str(engines["dense"].path), str(engines["sparse"].path)), batches=E2E_BATCHES,
                                        repeats=20, warmup=5, e2e_repeats=0 if args.quick else 2, steps=SAMPLE_STEPS, memory=False))
    record["latency"] = {"batches": latency["batches"], "reference": latency["reference"], "candidate": latency["candidate"]}
    write_json_atomic(out / "tensorrt.json", record)
    return {"file": "tensorrt.json"}


_PART_FUNCS: dict[str, Callable[[Path, argparse.Namespace], dict[str, Any]]] = {
    "tests": part_tests, "gemm": part_gemm, "e2e": part_e2e, "tensorrt": part_tensorrt,
}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _ms(summary: dict[str, Any]) -> str:
    return f"{summary['median'] * 1e3:.3f} (IQR {summary['iqr'] * 1e3:.3f})"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _markdown(report: dict[str, Any], results: dict[str, Any], plots: dict[str, str]) -> str:
    m = report["machine"]
    lines = [f"# GPU check: {m.get('gpu', '?')}", "",
             f"{report['created']}; {m.get('gpu')} (compute capability {m.get('compute_capability')}, {m.get('memory_gib')} GiB), "
             f"PyTorch {m.get('torch')}, CUDA {m.get('cuda')}, cuSPARSELt {m.get('cusparselt')}, Python {m.get('python')}. "
             f"Command: `{report['command']}`. Budget {report['budget_s']} s, took {report['seconds']} s.", "",
             "## Parts", ""]
    lines += _table(["part", "status", "seconds", "note"], [
        [p["part"], p["status"], p.get("seconds", ""), (p.get("reason") or (p.get("log_tail") or "").strip().splitlines()[-1:] or [""])[0][:160]]
        for p in report["parts"]])
    tests = results.get("tests")
    if tests:
        lines += ["## tests/gpu", "", f"{len(tests['passed'])} passed, {len(tests['failed'])} failed, {len(tests['errors'])} errors, "
                  f"{len(tests['skipped'])} skipped (pytest exit code {tests['pytest_exit_code']}).", ""]
        if tests["skipped"] or tests["failed"] or tests["errors"]:
            lines += _table(["test", "outcome", "reason"], [[c["test"], k, c["reason"].replace("|", "/")[:200]]
                                                            for k in ("failed", "errors", "skipped") for c in tests[k]])
    gemm = results.get("gemm")
    if gemm and gemm.get("entries"):
        lines += ["## Per-layer GEMMs: dense / 2:4 time (above 1: 2:4 faster)", "",
                  f"Kernel: {gemm['kernel']}. {gemm['method']}." + ("" if gemm.get("complete") else " INCOMPLETE: the part stopped early."), ""]
        for dtype in ("fp16", "bf16"):
            rows = {}
            for e in gemm["entries"]:
                if e["dtype"] != dtype:
                    continue
                key = (e["out"], e["in"], e["rows_per_sample"])
                row = rows.setdefault(key, {"shape": f"{e['out']}x{e['in']}", "rows": e["rows_per_sample"],
                                            "where": ", ".join(f"{p} ({n})" for p, n in e["presets"].items()), "example": e["example"]})
                row[e["batch"]] = f"{e['speedup']['median']:.2f}" if "speedup" in e else "n/a"
            batches = gemm["batches"]
            lines += [f"### {dtype}", ""]
            lines += _table(["out x in", "rows/sample", "presets (layers)", "example layer", *[f"b={b}" for b in batches]],
                            [[r["shape"], r["rows"], r["where"], r["example"], *[r.get(b, "") for b in batches]] for r in rows.values()])
        errors = sorted({e["error"] for e in gemm["entries"] if "error" in e})
        if errors:
            lines += ["Shapes the 2:4 kernel refused: " + "; ".join(errors[:5]), ""]
        if plots.get("gemm"):
            lines += [f"![GEMM speedup]({plots['gemm']})", ""]
    e2e = results.get("e2e")
    if e2e and e2e.get("batches"):
        lines += [f"## End to end: {e2e['model']} {e2e['precision']}, masked dense vs 2:4 kernels", "",
                  f"{e2e['weights']}; {e2e['converted_layers']} of {e2e['sparse_layers']} 2:4 layers on semi-structured kernels. "
                  f"Times in ms, median (IQR); sampling: {e2e['sampling']}.", ""]
        rows = []
        for b in e2e["batches"]:
            graph = b.get("cuda_graph", {})
            eager, sampling = b.get("eager"), b.get("sampling")
            rows.append([b["batch"], _ms(eager["dense"]) if eager else "", _ms(eager["sparse"]) if eager else "",
                         f"{eager['ratio']['median']:.3f}" if eager else "",
                         f"{graph['ratio']['median']:.3f}" if "ratio" in graph else graph.get("error", "not run")[:80],
                         f"{sampling['dense']['median']:.2f} / {sampling['sparse']['median']:.2f} s" if sampling else "",
                         f"{sampling['ratio']['median']:.3f}" if sampling else "",
                         f"{graph['sampling']['ratio']['median']:.3f}" if "sampling" in graph else "",
                         f"{b['parity']['relative']:.2e}"])
        lines += _table(["batch", "dense call", "2:4 call", "eager ratio", "CUDA-graph ratio", "sampling dense / 2:4 (eager)",
                         "sampling ratio (eager)", "sampling ratio (CUDA graphs)", "2:4 vs dense (rel. max err)"], rows)
        if plots.get("e2e"):
            lines += [f"![end to end]({plots['e2e']})", ""]
    trt = results.get("tensorrt")
    if trt:
        lines += ["## TensorRT", ""]
        if "skipped" in trt:
            lines += [trt["skipped"], ""]
        else:
            for kind, e in trt.get("engines", {}).items():
                picked = e.get("sparse_picked_modules") or []
                lines += [f"- {kind}: flags {e.get('builder_flags')}, plan vs ONNX Runtime "
                          f"{'passed' if (e.get('engine_check') or {}).get('passed') else 'FAILED'}, sparse kernels picked for "
                          f"{len(picked)}/{len(e.get('sparse_layers') or [])} masked layers"]
            for b in (trt.get("latency") or {}).get("batches", []):
                if "per_call_ratio" in b:
                    lines += [f"- batch {b['batch']}: dense/sparse per-call ratio {b['per_call_ratio']['median']:.3f}"]
            lines += [""]
    return "\n".join(lines) + "\n"


def _plots(out: Path, results: dict[str, Any]) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001 - plots are optional; the tables carry the numbers
        log.warning("no plots: matplotlib unavailable (%s)", exc)
        return {}
    plots = {}
    gemm = results.get("gemm")
    if gemm and any("speedup" in e for e in gemm.get("entries", [])):
        fig, ax = plt.subplots(figsize=(8, 5))
        series: dict[str, list[tuple[int, float]]] = {}
        for e in gemm["entries"]:
            if e["dtype"] == "fp16" and "speedup" in e and e["rows_per_sample"] > 1:
                series.setdefault(f"{e['out']}x{e['in']}", []).append((e["rows"], e["speedup"]["median"]))
        for label, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.axhline(1.0, color="gray", linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel("rows (tokens x batch)")
        ax.set_ylabel("dense time / 2:4 time (fp16)")
        ax.set_title(f"Per-token Linear GEMMs, {gemm.get('gpu')}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "gemm_speedup.png", dpi=110)
        plt.close(fig)
        plots["gemm"] = "gemm_speedup.png"
    e2e = results.get("e2e")
    if e2e and e2e.get("batches"):
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [str(b["batch"]) for b in e2e["batches"]]
        for i, (key, name) in enumerate((("eager", "eager call"), ("cuda_graph", "CUDA-graph call"), ("sampling", f"{SAMPLE_STEPS}-step sampling"))):
            values = [(b.get(key) or {}).get("ratio", {}).get("median", float("nan")) for b in e2e["batches"]]
            ax.bar([j + i * 0.27 for j in range(len(labels))], values, width=0.27, label=name)
        ax.axhline(1.0, color="gray", linestyle="--")
        ax.set_xticks([j + 0.27 for j in range(len(labels))], labels)
        ax.set_xlabel("batch")
        ax.set_ylabel("dense time / 2:4 time")
        ax.set_title(f"{e2e['model']} fp16 end to end")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "e2e_speedup.png", dpi=110)
        plt.close(fig)
        plots["e2e"] = "e2e_speedup.png"
    return plots


def write_report(out: Path, report: dict[str, Any]) -> dict[str, Path]:
    """``report.json`` (``report`` plus every part's results), ``report.md`` and the plots, in ``out``."""
    from .provenance import write_json_atomic, write_text_atomic

    results = {name: data for name in PARTS if (data := _load(out / f"{name}.json")) is not None}
    plots = _plots(out, results)
    full = {**report, "results": results, "plots": plots}
    write_json_atomic(out / "report.json", full)
    write_text_atomic(out / "report.md", _markdown(report, results, plots))
    return {"json": out / "report.json", "markdown": out / "report.md", **{k: out / v for k, v in plots.items()}}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parts(text: str) -> tuple[str, ...]:
    from .cliargs import comma_list

    parts = comma_list(text)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are among {', '.join(PARTS)}; got {text!r}")
    return parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparse_deploy.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs="?", default="run", choices=("run", "wheels", "report", "part"),
                   help="run (default): every part and the report; wheels: download the wheels to carry; "
                        "report: rewrite the report from the parts' JSON; part: one part (used by run)")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "gpu", help="report folder (default reports/gpu)")
    p.add_argument("--parts", type=_parts, default=PARTS, help=f"comma-separated, default {','.join(PARTS)}")
    p.add_argument("--part", choices=PARTS, help="with the part command: which part")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help=f"seconds for the whole call (default {DEFAULT_BUDGET_S})")
    p.add_argument("--wheels", type=Path, default=REPO / ".whl", help="carried wheels (default .whl/)")
    p.add_argument("--site", type=Path, default=REPO / ".cache" / "gpu-site", help="where the wheels are unpacked (default .cache/gpu-site/)")
    p.add_argument("--e2e-model", default="dit-xl", help="preset of the end-to-end part (default dit-xl)")
    p.add_argument("--trt-model", default="dit-s", help="preset of the TensorRT part (default dit-s: DiT-XL's export and builds do not fit the budget)")
    p.add_argument("--quick", action="store_true", help="fewer batches and repeats (a smoke run)")
    return p


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .measure.machine import machine_info
    from .provenance import timestamp

    started = time.perf_counter()
    deadline = started + args.budget
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*(out / f"{p}.json" for p in PARTS), out / "report.json", out / "report.md", *out.glob("*.png"), *out.glob("*.log")]:
        stale.unlink(missing_ok=True)  # a part that does not run this time leaves no old figures behind
    wheels = install_wheels(args.wheels, args.site)
    if wheels.get("error"):
        print(f"gpu-check: the wheels in {args.wheels} did not install ({wheels['error'].splitlines()[-1]}); going on without them", flush=True)
    elif not wheels["wheels"] and importlib.util.find_spec("diffusers") is None:
        wheels["note"] = wheels.get("note", "") + "; diffusers is missing, so the gemm, e2e and tensorrt parts cannot build models"
        print(f"gpu-check: diffusers is not installed and {args.wheels} holds no wheels: run make gpu-wheels on a machine with "
              "internet and copy .whl/ along; the parts that build models will fail", flush=True)
    env = _child_env(args.site if wheels.get("wheels") and not wheels.get("error") else None)
    base = [sys.executable, "-m", "sparse_deploy.gpu_check", "part", "--out", str(out), "--e2e-model", args.e2e_model, "--trt-model", args.trt_model]
    if args.quick:
        base.append("--quick")
    records = []
    for name in args.parts:
        left = deadline - time.perf_counter() - REPORT_RESERVE_S
        timeout = min(PART_CAPS[name], left)
        if timeout < MIN_PART_S:
            records.append({"part": name, "status": "skipped", "reason": f"only {max(left, 0):.0f} s of the {args.budget:.0f} s budget left"})
            continue
        print(f"gpu-check: {name} (at most {timeout:.0f} s) ...", flush=True)
        record = run_part(name, [*base, "--part", name], timeout, out / f"{name}.log", env)
        records.append(record)
        print(f"gpu-check: {name} {record['status']} in {record['seconds']} s", flush=True)
    report = {"kind": "gpu-check", "created": timestamp(), "command": shlex.join(["python", "-m", "sparse_deploy.gpu_check", *argv]),
              "budget_s": args.budget, "seconds": round(time.perf_counter() - started, 1), "machine": {**_gpu_facts(), "host": machine_info()},
              "wheels": wheels, "parts": records}
    written = write_report(out, report)
    print(f"gpu-check: wrote {written['markdown']} and {written['json']}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in records) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "wheels":
        from .errors import SparseDeployError

        try:
            wheels = download_wheels(args.wheels)
        except SparseDeployError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        total = sum(w.stat().st_size for w in wheels)
        print(f"{args.wheels}: {', '.join(w.name for w in wheels)} ({total / 2**20:.1f} MiB)")
        return 0
    if args.command == "report":
        report = _load(args.out / "report.json") or {"kind": "gpu-check", "created": "?", "command": "?", "budget_s": "?", "seconds": "?",
                                                      "machine": {}, "parts": []}
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
        result = _PART_FUNCS[args.part](args.out, args)
        print(json.dumps(result, default=str)[:2000])
        return 1 if result.get("failed_part") else 0
    return _run(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
