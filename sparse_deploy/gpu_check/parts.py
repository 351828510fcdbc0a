"""The four parts of ``make gpu-check``, each run in its own process by :mod:`.cli`: ``tests``
(pytest tests/gpu), ``gemm`` (per-layer dense vs 2:4 GEMMs), ``e2e`` (DiT-XL end to end) and
``tensorrt`` (engines where TensorRT imports). Each writes ``<part>.json`` into the report folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence

from .machine import REPO, gpu_facts

__all__ = [
    "PARTS",
    "PART_FUNCS",
    "GEMM_PRESETS",
    "E2E_BATCHES",
    "SAMPLE_STEPS",
    "gemm_shapes",
    "gemm_row",
    "part_tests",
    "part_gemm",
    "part_e2e",
    "part_tensorrt",
]

PARTS = ("tests", "gemm", "e2e", "tensorrt")
GEMM_PRESETS = ("dit-s", "dit-b", "dit-xl")
E2E_BATCHES = (1, 8, 32)
SAMPLE_STEPS = 50
DEVICE = "cuda"  # where the parts compute (the unit tests run them on "cpu" with stand-in kernels)


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

    from ..provenance import write_json_atomic

    xml = out / "tests.xml"
    rc = pytest.main(
        [str(REPO / "tests" / "gpu"), "-m", "gpu", "-rs", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    )
    record = {"pytest_exit_code": int(rc), **_parse_junit(xml)}
    write_json_atomic(out / "tests.json", record)
    return {**record, "failed_part": int(rc) not in (0, 5)}  # 5: nothing collected


# --------------------------------------------------------------------------------------------
# Part: per-layer GEMMs
# --------------------------------------------------------------------------------------------


def gemm_shapes(presets: Sequence[str] = GEMM_PRESETS) -> list[dict[str, Any]]:
    """Every distinct Linear shape of the presets, with the presets and layer count using it."""
    from ..latency import linear_shapes

    merged: dict[tuple[int, int, int], dict[str, Any]] = {}
    for preset in presets:
        for shape in linear_shapes(preset):
            entry = merged.setdefault(shape.key, {**shape.to_dict(), "presets": {}})
            entry["presets"][preset] = len(shape.layers)
    return sorted(merged.values(), key=lambda e: (-e["rows_per_sample"], e["in"], e["out"]))


def gemm_row(shape: dict[str, Any], batch: int, dtype: str, timing: dict[str, Any]) -> dict[str, Any]:
    """One profile entry (the format :func:`latency.load_latency_profile` reads)."""
    return {
        "out": shape["out"],
        "in": shape["in"],
        "rows": shape["rows_per_sample"] * batch,
        "rows_per_sample": shape["rows_per_sample"],
        "batch": batch,
        "dtype": dtype,
        "presets": shape["presets"],
        "example": shape["example"],
        **timing,
    }


def part_gemm(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..latency import GEMM_BATCHES, PROFILE_FORMAT, time_linear
    from ..provenance import timestamp, write_json_atomic

    facts = gpu_facts()
    shapes = gemm_shapes(GEMM_PRESETS)
    batches = (1, 8, 64) if args.quick else GEMM_BATCHES
    repeats = 5 if args.quick else 15
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    backend = "cuSPARSELt" if torch.backends.cusparselt.is_available() else "CUTLASS"
    record: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "gpu": facts.get("gpu"),
        "facts": facts,
        "created": timestamp(),
        "kernel": f"to_sparse_semi_structured ({backend})",
        "method": "F.linear(x, W) against F.linear(x, W_2:4) on the same 2:4-masked weight; each sample 10 back-to-back calls between "
        f"CUDA events; dense and 2:4 interleaved, 3 warm-up rounds dropped, {repeats} timed; seconds per call",
        "shapes": shapes,
        "batches": list(batches),
        "entries": [],
        "complete": False,
    }
    for shape in shapes:  # written after every shape: a time-out keeps what was measured
        for dtype, torch_dtype in dtypes.items():
            for batch in batches:
                timing = time_linear(
                    shape["out"],
                    shape["in"],
                    shape["rows_per_sample"] * batch,
                    torch_dtype,
                    device=DEVICE,
                    repeats=repeats,
                )
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

    from ..backends.torch24 import to_semi_structured_
    from ..measure.timing import ratio, run_interleaved, summarize
    from ..models import build_model
    from ..presets import get_preset
    from ..provenance import write_json_atomic
    from ..sampling import sample
    from ..sparsify import SparsityConfig, bake_, select_layers, sparsify_

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
    record: dict[str, Any] = {
        "model": preset.name,
        "precision": "fp16",
        "weights": "random init, one-shot magnitude 2:4 masks",
        "sparse_layers": len(layers),
        "converted_layers": len(converted),
        "skipped_layers": skipped,
        "sampling": f"{SAMPLE_STEPS} DDIM steps (sampling.sample: CPU scheduler, GPU denoiser)",
        "batches": [],
    }
    models = {"dense": dense, "sparse": sparse}
    repeats = 5 if args.quick else 20
    sample_repeats = 1 if args.quick else 2

    def compare(tasks: dict[str, Callable[[], Any]], rounds: int, warmup: int) -> dict[str, Any]:
        with torch.no_grad():
            times = run_interleaved(tasks, rounds, warmup, DEVICE)
        return {
            "dense": summarize(times["dense"]),
            "sparse": summarize(times["sparse"]),
            "ratio": ratio(times["dense"], times["sparse"]),
        }

    def sampler(run: Callable, batch: int) -> Callable[[], Any]:
        def denoise(s, ts, labels):
            return run(s.to(DEVICE).half(), ts.to(DEVICE), None if labels is None else labels.to(DEVICE)).float().cpu()

        return lambda: sample(denoise, preset, batch=batch, steps=SAMPLE_STEPS, scheduler="ddim", seed=0)

    inputs = {}
    for batch in E2E_BATCHES:  # eager first, for every batch: a failed graph capture below cannot cost these figures
        gen = torch.Generator().manual_seed(batch)
        x = (
            torch.randn(batch, preset.in_channels, preset.sample_size, preset.sample_size, generator=gen)
            .to(DEVICE)
            .half()
        )
        t = torch.randint(0, 1000, (batch,), generator=gen).to(DEVICE)
        y = (
            torch.randint(0, max(preset.num_classes, 1), (batch,), generator=gen).to(DEVICE)
            if preset.num_classes
            else None
        )
        inputs[batch] = (x, t, y)
        entry: dict[str, Any] = {"batch": batch}
        record["batches"].append(entry)
        with torch.no_grad():
            want, got = dense(x, t, y).float(), sparse(x, t, y).float()
        entry["parity"] = {
            "max_abs_err": float((got - want).abs().max()),
            "max_abs_ref": float(want.abs().max()),
            "relative": float((got - want).abs().max() / want.abs().max().clamp_min(1e-12)),
        }
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
            entry["cuda_graph"]["sampling"] = compare(
                {name: sampler(g, entry["batch"]) for name, g in graphs.items()}, sample_repeats, 1
            )
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
    from ..backends.device import tensorrt_unavailable_reason
    from ..measure.engine_latency import LatencyConfig, run_latency
    from ..build import BuildConfig, build_engines
    from ..export import ExportConfig
    from ..provenance import write_json_atomic

    reason = tensorrt_unavailable_reason()
    if reason:
        record = {"skipped": f"no TensorRT engines: {reason}"}
        write_json_atomic(out / "tensorrt.json", record)
        return record
    work = out / "tensorrt-work"
    config = BuildConfig(
        export=ExportConfig(model=args.trt_model, out=work / "export", precisions=("fp16",), max_batch=64, opt_batch=8),
        backend="tensorrt",
        engine_dir=work / "engines",
    )
    report = build_engines(config)
    engines = {e.kind: e for e in report.engines}
    record: dict[str, Any] = {"model": args.trt_model, "engines": {}}
    for kind, e in engines.items():
        m = e.manifest
        record["engines"][kind] = {
            key: m.get(key)
            for key in (
                "gpu",
                "compute_capability",
                "tensorrt_version",
                "builder_flags",
                "builder_config",
                "engine_check",
                "sparse_picked_modules",
                "sparse_eligible_modules",
                "sparse_layers",
                "build_seconds",
            )
        }
    write_json_atomic(out / "tensorrt.json", record)
    latency = run_latency(
        LatencyConfig(
            engines=(str(engines["dense"].path), str(engines["sparse"].path)),
            batches=E2E_BATCHES,
            repeats=20,
            warmup=5,
            e2e_repeats=0 if args.quick else 2,
            steps=SAMPLE_STEPS,
            memory=False,
        )
    )
    record["latency"] = {
        "batches": latency["batches"],
        "reference": latency["reference"],
        "candidate": latency["candidate"],
    }
    write_json_atomic(out / "tensorrt.json", record)
    return {"file": "tensorrt.json"}


PART_FUNCS: dict[str, Callable[[Path, argparse.Namespace], dict[str, Any]]] = {
    "tests": part_tests,
    "gemm": part_gemm,
    "e2e": part_e2e,
    "tensorrt": part_tensorrt,
}
