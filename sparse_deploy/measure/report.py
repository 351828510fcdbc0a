"""The benchmark report: one JSON, a Markdown summary and plots, from the results ``bench`` wrote.

:func:`write_report` reads what ``python -m sparse_deploy.bench`` left in a folder
(``latency-*.json``, ``train_cost.json``, ``macs.json``, ``methods.json``, ``grids.json``; any may
be missing) and writes ``report.json`` (all of it, with the command, machine and versions),
``report.md`` (tables) and PNG plots (matplotlib, Agg backend). Every number in them comes from
those files; nothing is typed by hand.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import SparseDeployError
from ..provenance import (
    library_versions,
    timestamp,
    write_json_atomic,
    write_text_atomic,
)
from .merge import merged_lines
from .plots import (
    plot_fid_methods,
    plot_fid_vs_macs,
    plot_latency,
    plot_samples,
    plot_train_cost,
)
from .spread import (  # noqa: F401 (re-exported: the names were here first)
    SAMPLE_GRID_ORDER,
    methods_spread_lines,
    methods_time_line,
    ordered,
    paired_gap,
)

__all__ = [
    "RESULT_FILES",
    "load_results",
    "write_report",
    "markdown",
    "ordered",
    "methods_spread_lines",
    "methods_time_line",
    "paired_gap",
]

log = logging.getLogger(__name__)

RESULT_FILES = {"train_cost": "train_cost.json", "macs": "macs.json", "methods": "methods.json", "grids": "grids.json"}


def load_results(folder: str | Path) -> dict[str, Any]:
    """The benchmark results in ``folder``: ``latency`` (a list, one per engine pair) and one entry per other kind."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SparseDeployError(f"report folder '{folder}' does not exist; run a benchmark into it first")
    results: dict[str, Any] = {"latency": []}
    for path in sorted(folder.glob("latency-*.json")):
        results["latency"].append({**_read(path, "latency"), "file": path.name})
    for key, name in RESULT_FILES.items():
        if (folder / name).is_file():
            results[key] = {**_read(folder / name, key.replace("_", "-")), "file": name}
    if not results["latency"] and len(results) == 1:
        raise SparseDeployError(
            f"'{folder}' holds no benchmark results (latency-*.json, {', '.join(RESULT_FILES.values())})"
        )
    return results


def _read(path: Path, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparseDeployError(f"'{path}' is not valid JSON ({exc}); re-run the benchmark that wrote it") from exc
    if not isinstance(data, dict) or data.get("kind") != kind:
        found = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise SparseDeployError(
            f"'{path}' is not a {kind} result (kind {found!r}); re-run the benchmark that wrote it or remove the file"
        )
    return data


# ----------------------------------------------------------------------------- formatting


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _m(macs: float) -> str:
    return f"{macs / 1e6:.2f} M"


def _pm(spread: dict[str, Any], digits: int = 2) -> str:
    if not spread or not spread.get("n"):
        return "-"
    return (
        f"{spread['mean']:.{digits}f} ± {spread['std']:.{digits}f}"
        if spread["n"] > 1
        else f"{spread['mean']:.{digits}f}"
    )


def _machine_line(record: dict[str, Any]) -> str:
    m = record.get("machine", {})
    load = m.get("load_average")
    load_text = f", load average at the end {load[0]:.2f}" if load else ""
    return (
        f"{record.get('created', '?')}, {m.get('description', '?')}, torch threads "
        f"{m.get('torch_threads', '?')}{load_text}"
    )


_SYNTHETIC_NOTE = " (random tensors of the model input shape: a step costs the same)"


def _names(by_name: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """The methods of a record in the order its settings list them (what the plots draw, in order)."""
    return [name for name, _ in ordered(by_name, record["settings"].get("methods"))]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _latency_section(record: dict[str, Any], plots: dict[str, str]) -> list[str]:
    ref, cand = record["reference"], record["candidate"]
    engines = record["engines"]
    out = [
        f"## Latency ({', '.join(sorted({e['backend'] for e in engines.values()}))}, "
        f"{', '.join(sorted({e['precision'] for e in engines.values()}))})",
        "",
    ]
    out += [f"Measured {_machine_line(record)}. Command: `{record.get('command')}`.", ""]
    s = record["settings"]
    out += [
        f"{s['repeats']} timed denoiser calls and {s['e2e_repeats']} timed sampling runs "
        f"({s['steps']} {s['scheduler'].upper()} steps) "
        f"per engine and batch, interleaved {ref} / {cand}, after {s['warmup']} / "
        f"{s['e2e_warmup']} warm-up rounds; "
        f"clock: {record['clock'][ref]}. Ratio = {record['ratio_definition']}. Spread: IQR "
        "and p10-p90.",
        "",
    ]
    out += _table(
        [
            "batch",
            f"{ref} ms/call (spread)",
            f"{cand} ms/call (spread)",
            "ratio (paired p10-p90)",
            f"{ref} s/sampling run",
            f"{cand} s/sampling run",
            "end-to-end ratio",
        ],
        [_latency_row(b, ref, cand) for b in record["batches"]],
    )
    out += [""]
    out += _table(
        ["engine", "file", "backend", "precision", "size", "2:4 layers", "memory"],
        [
            [
                name,
                f"`{e['path']}`",
                e["backend"],
                e["precision"],
                f"{e['size_bytes'] / 2**20:.2f} MiB",
                str(e["sparse_layers"]),
                _memory_text(e.get("memory", {})),
            ]
            for name, e in engines.items()
        ],
    )
    if plots.get(record["file"]):
        out += ["", f"![latency]({plots[record['file']]})"]
    return out + [""]


def _latency_row(b: dict[str, Any], ref: str, cand: str) -> list[str]:
    if "skipped" in b:
        return [str(b["batch"]), "skipped", "", "", "", "", ""]
    pc, e2e, r = b["per_call"], b.get("end_to_end"), b["per_call_ratio"]
    return [
        str(b["batch"]),
        f"{_ms(pc[ref]['median'])} (IQR {_ms(pc[ref]['iqr'])}; {_ms(pc[ref]['p10'])}-{_ms(pc[ref]['p90'])})",
        f"{_ms(pc[cand]['median'])} (IQR {_ms(pc[cand]['iqr'])}; {_ms(pc[cand]['p10'])}-{_ms(pc[cand]['p90'])})",
        f"{r['median']:.3f}" + (f" ({r['paired_p10']:.3f}-{r['paired_p90']:.3f})" if "paired_p10" in r else ""),
        f"{e2e[ref]['median']:.3f}" if e2e else "-",
        f"{e2e[cand]['median']:.3f}" if e2e else "-",
        f"{b['end_to_end_ratio']['median']:.3f}" if e2e else "-",
    ]


def _memory_text(mem: dict[str, Any]) -> str:
    if "peak_delta" in mem:
        text = (
            f"load +{mem['load_delta'] / 2**20:.0f} MiB, peak +{mem['peak_delta'] / 2**20:.0f} "
            f"MiB RSS at batch {mem['batch']}"
        )
        if "cuda_max_memory_allocated" in mem:
            text += f"; CUDA max allocated {mem['cuda_max_memory_allocated'] / 2**20:.0f} MiB"
        return text
    if "error" in mem:
        return f"not measured ({mem['error']})"
    return "-"


def _cost_section(cost: dict[str, Any], plots: dict[str, str]) -> list[str]:
    s = cost["settings"]
    out = [
        "## Fine-tuning cost",
        "",
        f"Measured {_machine_line(cost)}. Command: `{cost.get('command')}`.",
        "",
        f"{s['steps']} timed steps per method after {s['warmup']} warm-up steps, interleaved "
        "method by method; batch "
        f"{s['batch_size']}, device {s['device']}, clock {cost['clock']}, data "
        f"{s.get('data') or 'the preset dataset'}"
        f"{_SYNTHETIC_NOTE if str(s.get('data')).startswith('synthetic') else ''}. "
        f"{cost['note']}.",
        "",
    ]
    ref_key = next((k for k in next(iter(cost["methods"].values())) if k.startswith("relative_to_")), None)
    rows = [
        [
            m,
            f"{v['median']:.3f}",
            f"{v['iqr']:.3f}",
            f"{v['p10']:.3f}-{v['p90']:.3f}",
            f"{v['images_per_second']:.1f}",
            f"{v[ref_key]:.2f}x" if ref_key else "-",
        ]
        for m, v in ordered(cost["methods"], s.get("methods"))
    ]
    out += _table(
        ["method", "median s/step", "IQR", "p10-p90", "images/s", ref_key.replace("_", " ") if ref_key else "relative"],
        rows,
    )
    if plots.get("train_cost"):
        out += ["", f"![train cost]({plots['train_cost']})"]
    return out + [""]


def _macs_section(macs: dict[str, Any]) -> list[str]:
    check = macs["onnx_check"]
    out = [
        "## MACs (per sample, batch 1)",
        "",
        f"Computed {_machine_line(macs)}. Command: `{macs.get('command')}`. Source: {macs['source']}.",
        "",
    ]
    out += _table(
        ["figure", "value"],
        [
            ["dense MACs (PyTorch FLOP counter / 2)", _m(macs["dense_macs"])],
            ["MACs in 2:4 layers", f"{_m(macs['sparse_layer_macs'])} ({macs['sparse_share']:.1%} of dense)"],
            [
                "effective sparse MACs",
                f"{_m(macs['effective_sparse_macs'])} ({macs['effective_over_dense']:.1%} of dense)",
            ],
            ["ONNX graph MACs (MatMul/Gemm/Conv, shape inference at batch 1)", _m(check["onnx_total"])],
            ["model MACs counting repeated layer calls once", _m(check["model_single_call"])],
            [
                "ONNX vs model",
                f"{check['relative_difference']:+.3%} "
                f"({check['relative_difference_single_call']:+.3%} vs single-call count)",
            ],
            ["effective sparse MACs from the ONNX count", _m(macs["onnx_effective_sparse_macs"])],
            [
                "2:4 layers / layers checked per layer",
                f"{len(macs['sparse_layers'])} / {len(check['layers']) - len(check['unmatched_layers'])}",
            ],
            ["layers whose ONNX MACs disagree", str(len(check["disagreeing_layers"]))],
        ],
    )
    if check["repeated_layers"]:
        out += [
            "",
            "Layers the PyTorch model calls more than once per forward pass while the exported "
            "graph computes them once: "
            f"{', '.join(f'`{name}`' for name in check['repeated_layers'])}.",
        ]
    return out + [""]


def _methods_section(methods: dict[str, Any], plots: dict[str, str]) -> list[str]:
    s = methods["settings"]
    label = f" - {methods['label']}" if methods.get("label") else ""
    out = [
        f"## Method comparison{label}",
        "",
        f"Measured {_machine_line(methods)}. Command: `{methods.get('command')}`.",
        "",
        f"Budget: {methods['budget']}. Dense checkpoint: "
        f"`{methods['dense_checkpoint']['path']}` (step "
        f"{methods['dense_checkpoint']['step']}). Reference: {methods['reference']['source']} "
        f"(n={methods['reference']['num']}). {methods['fid_note']}",
        "",
        f"Preprocessing: {methods['preprocessing']}",
        "",
    ]
    rows = []
    for _, v in ordered(methods["summary"], s.get("methods")):
        step = v.get("train_seconds_per_step") or {}
        rows.append(
            [
                v["label"],
                _pm(v["fid"]),
                _pm(v["kid"], 4),
                _pm(v["fid_vs_dense"]),
                _pm(v["paired_pixel_rmse_vs_dense"], 3),
                _m(v["macs"]),
                f"{step['mean']:.3f}" if step.get("n") else "-",
                str(v["fid"].get("n", 0)),
            ]
        )
    out += _table(
        [
            "method",
            "FID ± std",
            "KID ± std",
            "FID vs dense samples",
            "paired pixel RMSE vs dense",
            "MACs/sample",
            "fine-tune s/step",
            "seeds",
        ],
        rows,
    )
    out += [
        "",
        f"Settings: lr {s.get('lr') or 'preset'}, warm-up {s.get('warmup_steps')}, batch "
        f"{s.get('batch_size') or 'preset'}, "
        f"KD weight {s.get('kd_weight')}, sampling {s.get('scheduler')} "
        f"{s.get('sample_steps')} steps. "
        "± is the standard deviation over seeds (each seed: its own fine-tuning noise, "
        "samples and Inception features).",
    ]
    merged = merged_lines(methods)
    out += ["", *methods_spread_lines(methods), "", methods_time_line(methods), *(["", *merged] if merged else [])]
    for key, title in (("fid_methods", "FID per method"), ("fid_vs_macs", "FID against effective MACs")):
        if plots.get(key):
            out += ["", f"![{title}]({plots[key]})"]
    return out + [""]


def _first(results: dict[str, Any], field_name: str) -> Any:
    """``field_name`` of the first result that has it (latency results first)."""
    return next(
        (
            r.get(field_name)
            for r in [*results["latency"], *(results.get(k) for k in RESULT_FILES)]
            if r and r.get(field_name)
        ),
        None,
    )


def markdown(results: dict[str, Any], plots: dict[str, str], folder: str | Path | None = None) -> str:
    """The Markdown summary of ``results`` (as :func:`load_results` returns), linking ``plots``."""
    out: list[str] = ["# Benchmark report", ""]
    model = _first(results, "model")
    if model:
        out += [
            f"Model: `{model}`. Generated by `python -m sparse_deploy.bench report` from the JSON "
            "files in "
            f"{f'`{Path(folder).as_posix()}/`' if folder is not None else 'this folder'}.",
            "",
        ]
    for record in results["latency"]:
        out += _latency_section(record, plots)
    if results.get("train_cost"):
        out += _cost_section(results["train_cost"], plots)
    if results.get("macs"):
        out += _macs_section(results["macs"])
    if results.get("methods"):
        out += _methods_section(results["methods"], plots)
    if plots.get("samples"):
        out += ["## Samples", "", f"{plots.get('samples_caption', '')}", "", f"![samples]({plots['samples']})", ""]
    versions = _first(results, "versions")
    if versions:
        out += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items() if v), ""]
    return "\n".join(out)


def _grid_pair(results: dict[str, Any], folder: Path) -> tuple[list[tuple[str, Path]], str] | None:
    grids = results.get("grids")
    if grids:
        pairs = [(f"{name} engine ({g['precision']})", folder / g["path"]) for name, g in grids["grids"].items()]
        s = grids["settings"]
        rendering = {g.get("rendering", "pixels") for g in grids["grids"].values()}
        caption = (
            f"The deployed engines from the same seed ({s['seed']}) and labels (one row per class), "
            f"{s['scheduler'].upper()} {s['steps']} steps."
            + "".join(f" Shown: {r}." for r in sorted(rendering) if r != "pixels")
        )
        if all(p.is_file() for _, p in pairs):
            return pairs, caption
    methods = results.get("methods")
    if methods:
        # Dense and the recommended recipe from one comparison (a merged one's re-runs included), else the next
        # recipe whose grid is still on this machine: a merged comparison's older run folders may be gone.
        first_seed = methods["settings"]["seeds"][0]
        by_source: dict[Any, dict[str, dict[str, Any]]] = {}
        for source, r in [
            *((r.get("merged_from"), r) for r in methods["runs"]),
            *((r.get("rerun_from"), r) for r in methods.get("reruns") or []),
        ]:
            if r["seed"] == first_seed and r.get("grid") and Path(r["grid"]).is_file():
                by_source.setdefault(source, {})[r["method"]] = r
        for sparse in SAMPLE_GRID_ORDER:
            runs = next((rs for rs in by_source.values() if {"start", "dense"} & set(rs) and sparse in rs), None)
            if runs:
                reference = "start" if "start" in runs else "dense"  # the model the user started from, when drawn
                pairs = [(runs[m]["label"], Path(runs[m]["grid"])) for m in (reference, sparse)]
                return (
                    pairs,
                    f"Method-comparison samples of seed {first_seed}, same noise and labels (one column per class).",
                )
    return None


# ----------------------------------------------------------------------------- entry


def write_report(folder: str | Path, command: str | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the plots into ``folder`` from the results there.

    Returns:
        The written files by role (``json``, ``markdown`` and one entry per plot).
    """
    folder = Path(folder)
    results = load_results(folder)
    try:
        return _write_report(folder, results, command)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
        raise SparseDeployError(
            f"a result file in '{folder}' does not have the shape this version writes "
            f"({exc.__class__.__name__}: {exc}); "
            "re-run the benchmark that wrote it"
        ) from exc


def _write_report(folder: Path, results: dict[str, Any], command: str | None) -> dict[str, Path]:
    plots: dict[str, str] = {}
    written: dict[str, Path] = {}
    for record in results["latency"]:
        png = folder / record["file"].replace(".json", ".png")
        written[record["file"]] = plot_latency(record, png)
        plots[record["file"]] = png.name
    if results.get("train_cost"):
        cost = results["train_cost"]
        written["train_cost"] = plot_train_cost(cost, _names(cost["methods"], cost), folder / "train_cost.png")
        plots["train_cost"] = "train_cost.png"
    methods = results.get("methods")
    if methods and methods.get("summary"):
        names = _names(methods["summary"], methods)
        written["fid_methods"] = plot_fid_methods(methods, names, folder / "fid_methods.png")
        written["fid_vs_macs"] = plot_fid_vs_macs(methods, names, folder / "fid_vs_macs.png")
        plots.update(fid_methods="fid_methods.png", fid_vs_macs="fid_vs_macs.png")
    pair = _grid_pair(results, folder)
    if pair:
        written["samples"] = plot_samples(pair[0], folder / "samples_dense_vs_sparse.png")
        plots.update(samples="samples_dense_vs_sparse.png", samples_caption=pair[1])
    text = markdown(results, plots, folder)
    md = folder / "report.md"
    write_text_atomic(md, text + "\n")
    written["markdown"] = md
    report = {
        "created": timestamp(),
        "command": command,
        "report_versions": library_versions(),
        "files": {k: v.name for k, v in written.items()},
        "results": results,
    }
    write_json_atomic(folder / "report.json", report)
    written["json"] = folder / "report.json"
    log.info("wrote report %s", md)
    return written
