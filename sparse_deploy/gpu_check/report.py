"""The GPU check's report: ``report.json`` (the run plus every part's results), ``report.md`` and plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from .parts import PARTS, SAMPLE_STEPS

__all__ = ["write_report", "load_json"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def load_json(path: Path) -> dict[str, Any] | None:
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
    lines = [
        f"# GPU check: {m.get('gpu', '?')}",
        "",
        f"{report['created']}; {m.get('gpu')} (compute capability {m.get('compute_capability')}, {m.get('memory_gib')} GiB), "
        f"PyTorch {m.get('torch')}, CUDA {m.get('cuda')}, cuSPARSELt {m.get('cusparselt')}, Python {m.get('python')}. "
        f"Command: `{report['command']}`. Budget {report['budget_s']} s, took {report['seconds']} s.",
        "",
        "## Parts",
        "",
    ]
    lines += _table(
        ["part", "status", "seconds", "note"],
        [
            [
                p["part"],
                p["status"],
                p.get("seconds", ""),
                (p.get("reason") or (p.get("log_tail") or "").strip().splitlines()[-1:] or [""])[0][:160],
            ]
            for p in report["parts"]
        ],
    )
    tests = results.get("tests")
    if tests:
        lines += [
            "## tests/gpu",
            "",
            f"{len(tests['passed'])} passed, {len(tests['failed'])} failed, {len(tests['errors'])} errors, "
            f"{len(tests['skipped'])} skipped (pytest exit code {tests['pytest_exit_code']}).",
            "",
        ]
        if tests["skipped"] or tests["failed"] or tests["errors"]:
            lines += _table(
                ["test", "outcome", "reason"],
                [
                    [c["test"], k, c["reason"].replace("|", "/")[:200]]
                    for k in ("failed", "errors", "skipped")
                    for c in tests[k]
                ],
            )
    gemm = results.get("gemm")
    if gemm and gemm.get("entries"):
        lines += [
            "## Per-layer GEMMs: dense / 2:4 time (above 1: 2:4 faster)",
            "",
            f"Kernel: {gemm['kernel']}. {gemm['method']}."
            + ("" if gemm.get("complete") else " INCOMPLETE: the part stopped early."),
            "",
        ]
        for dtype in ("fp16", "bf16"):
            rows = {}
            for e in gemm["entries"]:
                if e["dtype"] != dtype:
                    continue
                key = (e["out"], e["in"], e["rows_per_sample"])
                row = rows.setdefault(
                    key,
                    {
                        "shape": f"{e['out']}x{e['in']}",
                        "rows": e["rows_per_sample"],
                        "where": ", ".join(f"{p} ({n})" for p, n in e["presets"].items()),
                        "example": e["example"],
                    },
                )
                row[e["batch"]] = f"{e['speedup']['median']:.2f}" if "speedup" in e else "n/a"
            batches = gemm["batches"]
            lines += [f"### {dtype}", ""]
            lines += _table(
                ["out x in", "rows/sample", "presets (layers)", "example layer", *[f"b={b}" for b in batches]],
                [
                    [r["shape"], r["rows"], r["where"], r["example"], *[r.get(b, "") for b in batches]]
                    for r in rows.values()
                ],
            )
        errors = sorted({e["error"] for e in gemm["entries"] if "error" in e})
        if errors:
            lines += ["Shapes the 2:4 kernel refused: " + "; ".join(errors[:5]), ""]
        if plots.get("gemm"):
            lines += [f"![GEMM speedup]({plots['gemm']})", ""]
    e2e = results.get("e2e")
    if e2e and e2e.get("batches"):
        lines += [
            f"## End to end: {e2e['model']} {e2e['precision']}, masked dense vs 2:4 kernels",
            "",
            f"{e2e['weights']}; {e2e['converted_layers']} of {e2e['sparse_layers']} 2:4 layers on semi-structured kernels. "
            f"Times in ms, median (IQR); sampling: {e2e['sampling']}.",
            "",
        ]
        rows = []
        for b in e2e["batches"]:
            graph = b.get("cuda_graph", {})
            eager, sampling = b.get("eager"), b.get("sampling")
            rows.append(
                [
                    b["batch"],
                    _ms(eager["dense"]) if eager else "",
                    _ms(eager["sparse"]) if eager else "",
                    f"{eager['ratio']['median']:.3f}" if eager else "",
                    f"{graph['ratio']['median']:.3f}" if "ratio" in graph else graph.get("error", "not run")[:80],
                    f"{sampling['dense']['median']:.2f} / {sampling['sparse']['median']:.2f} s" if sampling else "",
                    f"{sampling['ratio']['median']:.3f}" if sampling else "",
                    f"{graph['sampling']['ratio']['median']:.3f}" if "sampling" in graph else "",
                    f"{b['parity']['relative']:.2e}",
                ]
            )
        lines += _table(
            [
                "batch",
                "dense call",
                "2:4 call",
                "eager ratio",
                "CUDA-graph ratio",
                "sampling dense / 2:4 (eager)",
                "sampling ratio (eager)",
                "sampling ratio (CUDA graphs)",
                "2:4 vs dense (rel. max err)",
            ],
            rows,
        )
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
                lines += [
                    f"- {kind}: flags {e.get('builder_flags')}, plan vs ONNX Runtime "
                    f"{'passed' if (e.get('engine_check') or {}).get('passed') else 'FAILED'}, sparse kernels picked for "
                    f"{len(picked)}/{len(e.get('sparse_layers') or [])} masked layers"
                ]
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
        for i, (key, name) in enumerate(
            (("eager", "eager call"), ("cuda_graph", "CUDA-graph call"), ("sampling", f"{SAMPLE_STEPS}-step sampling"))
        ):
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
    from ..provenance import write_json_atomic, write_text_atomic

    results = {name: data for name in PARTS if (data := load_json(out / f"{name}.json")) is not None}
    plots = _plots(out, results)
    full = {**report, "results": results, "plots": plots}
    write_json_atomic(out / "report.json", full)
    write_text_atomic(out / "report.md", _markdown(report, results, plots))
    return {"json": out / "report.json", "markdown": out / "report.md", **{k: out / v for k, v in plots.items()}}
