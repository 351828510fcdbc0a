"""FID against effective MACs across method comparisons run at different ``--macs-budget`` levels.

Each ``bench methods`` run (one MACs budget, every method at an equal fine-tuning budget) gives one
point per method; this module joins several of them into one curve per method, so a user sees
which recipe keeps the most quality at each compute level:

    python -m sparse_deploy.bench frontier reports/b1.0/methods.json reports/b0.75/methods.json ... \
        --out reports/frontier

writes ``frontier.json`` (every point with its source file), ``frontier.md`` and ``frontier.png``.
Runs are only joined when they share the model, dense checkpoint, fine-tuning steps, sample count
and reference set: points measured under other protocols are not comparable.

The same join along the other axis, comparisons at several fine-tuning budgets (``--steps``) at one
MACs budget, gives FID against fine-tuning steps per method:

    python -m sparse_deploy.bench budgets reports/s150/methods.json reports/s600/methods.json --out reports/budgets

writes ``budgets.json``, ``budgets.md`` and ``budgets.png``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import SparseDeployError
from ..presets import get_preset
from ..provenance import timestamp, write_json_atomic, write_text_atomic
from .plots import pyplot, save_figure
from .recipes import START, trains
from .spread import paired

__all__ = ["frontier", "write_frontier", "AXES"]

# What must be equal for two comparisons' FIDs to sit on one plot, besides the axis they vary along.
_SHARED = ("model", "dense_checkpoint", "num_samples", "reference", "ref_num", "sample_steps", "scheduler")
# axis -> (the setting held fixed, the point's x value, file stem, title, x label)
AXES = {
    "macs": (
        "steps",
        "macs_share",
        "frontier",
        "FID against effective MACs",
        "effective MACs (share of the dense model)",
    ),
    "steps": ("macs_budget", "steps", "budgets", "FID against fine-tuning steps", "fine-tuning steps per method"),
}


def _protocol(record: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    s = record["settings"]
    return {
        k: (record.get("dense_checkpoint", {}).get("weights_sha256") if k == "dense_checkpoint" else s.get(k))
        for k in keys
    }


def frontier(files: Sequence[str | Path], axis: str = "macs", methods: Sequence[str] | None = None) -> dict[str, Any]:
    """One point per (method, MACs budget) or per (method, fine-tuning steps): FID over seeds, MACs share, steps.

    ``methods`` keeps only those methods' points (default: every method of every file).
    """
    if axis not in AXES:
        raise SparseDeployError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
    keys = (*_SHARED, AXES[axis][0])
    if not files:
        raise SparseDeployError("give at least one methods.json (written by python -m sparse_deploy.bench methods)")
    points, protocol, start_by_seed = [], None, {}
    for f in files:
        path = Path(f)
        try:
            record = json.loads(path.read_text())
            proto = _protocol(record, keys)
            summary, dense_macs = record["summary"], record["macs"]["dense_macs"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SparseDeployError(
                f"'{path}' is not a methods.json of this version ({exc.__class__.__name__}: {exc}); "
                "re-run python -m sparse_deploy.bench methods"
            ) from exc
        if protocol is None:
            protocol = proto
        elif proto != protocol:
            diff = sorted(k for k in keys if proto[k] != protocol[k])
            raise SparseDeployError(
                f"'{path}' was measured under another protocol ({', '.join(diff)} differ); "
                "join only comparisons run with the same settings"
            )
        start_by_seed.update(_fid_by_seed(record, START))  # every file's starting-model seeds pair the headline
        for method, s in summary.items():
            if not s["fid"].get("n") or (methods is not None and method not in methods):
                continue
            if axis == "macs" and method == "dense" and record["settings"].get("macs_budget") is not None:
                continue  # dense is never budgeted: its point comes from the full-coverage comparison
            untrained = not trains(method)  # trains nothing: one point at 0 steps, not one per fine-tuning budget
            if axis == "steps" and untrained and any(p["method"] == method for p in points):
                continue
            points.append(
                {
                    "method": method,
                    "label": s["label"],
                    "fid_by_seed": _fid_by_seed(record, method),
                    "macs_budget": record["settings"].get("macs_budget"),
                    "steps": 0 if untrained else record["settings"].get("steps"),
                    "macs": s["macs"],
                    "macs_share": s["macs"] / dense_macs,
                    "fid": s["fid"],
                    "kid": s.get("kid"),
                    "source": str(path),
                }
            )
    if not points:
        which = f" of {', '.join(methods)}" if methods else ""
        raise SparseDeployError(
            f"none of the files holds a scored run{which}; check --methods against their method lists"
        )
    x = AXES[axis][1]
    points.sort(key=lambda p: (p["method"], p[x]))
    result = {"axis": axis, "protocol": protocol, "points": points}
    if axis == "steps":
        result.update(_budget_headline(points, protocol["model"], files, start_by_seed))
    return result


def _fid_by_seed(record: dict[str, Any], method: str) -> dict[str, float]:
    """``{seed: FID}`` of one method's scored runs in a methods.json (seeds as strings, as JSON keys are)."""
    return {
        str(r["seed"]): float(r["fid"])
        for r in record.get("runs", [])
        if r.get("method") == method and r.get("fid") is not None and "seed" in r
    }


def _paired_excess(point: dict[str, Any], start_by_seed: dict[str, float]) -> dict[str, Any] | None:
    """A point's FID against the starting model's on the same seeds: relative excess and its standard error.

    None when the point shares no seed with the starting model (then only the unpaired bound applies).
    """
    mine = point.get("fid_by_seed", {})
    pair = paired(mine, start_by_seed)
    if pair is None:
        return None
    start_mean = sum(start_by_seed[s] for s in pair["seeds"]) / pair["n"]
    return {
        "seeds": pair["seeds"],
        "fid": sum(mine[s] for s in pair["seeds"]) / pair["n"],
        "start_fid": start_mean,
        "excess": pair["gap"] / start_mean,
        "excess_se": None if pair["se"] is None else pair["se"] / start_mean,
    }


def pretraining_samples(model: str) -> int | None:
    """Training samples behind the preset's dense model (every cycle of ``make pretrain``), None when unknown."""
    try:
        d = get_preset(model).train
    except SparseDeployError:
        return None
    return (d.dense_steps + d.refine_steps) * d.batch_size


def _budget_headline(
    points: list[dict[str, Any]], model: str, files: Sequence[str | Path], start_by_seed: dict[str, float]
) -> dict[str, Any]:
    """Fine-tuning samples as a share of pretraining, the starting model's FID, each method's first budget within 5%.

    "Within 5%" is judged paired by seed: a point's mean FID against the starting model's mean on the same seeds
    (its own noise, labels and Inception features), so a single-seed point is not compared with a band it was not
    drawn from. A point that shares no seed with the starting model falls back to the starting model's overall mean.
    """
    pretrain = pretraining_samples(model)
    batches = {}
    for f in files:
        settings = json.loads(Path(f).read_text())["settings"]
        batches[int(settings["steps"])] = settings.get("batch_size")
    default_batch = get_preset(model).train.batch_size
    for pt in points:
        batch = batches.get(pt["steps"]) or default_batch
        pt["samples"] = pt["steps"] * batch
        pt["samples_share"] = pt["samples"] / pretrain if pretrain else None
    start = next((pt for pt in points if pt["method"] == START), None)
    headline: dict[str, Any] = {
        "pretraining_samples": pretrain,
        "start_fid": start["fid"] if start else None,
        "start_fid_by_seed": start_by_seed,
        "within_5pct": {},
    }
    if start is None:
        return headline
    bound = 1.05 * start["fid"]["mean"]
    headline["bound_5pct"] = bound
    for method in dict.fromkeys(pt["method"] for pt in points):
        if method == START:
            continue
        mine = sorted((pt for pt in points if pt["method"] == method), key=lambda pt: pt["steps"])
        for pt in mine:
            paired = _paired_excess(pt, start_by_seed)
            pt["vs_start"] = paired or {
                "seeds": None,
                "fid": pt["fid"]["mean"],
                "start_fid": start["fid"]["mean"],
                "excess": pt["fid"]["mean"] / start["fid"]["mean"] - 1,
                "excess_se": None,
            }
        first = next((pt for pt in mine if pt["vs_start"]["excess"] <= 0.05), None)
        headline["within_5pct"][method] = {
            "label": mine[0]["label"],
            "first_steps": first["steps"] if first else None,
            "first_samples_share": first["samples_share"] if first else None,
            "fid": first["fid"] if first else None,
            "vs_start": first["vs_start"] if first else None,
            "largest_budget": mine[-1]["steps"],
            "fid_at_largest": mine[-1]["fid"],
            "vs_start_at_largest": mine[-1]["vs_start"],
        }
    return headline


def _markdown(result: dict[str, Any]) -> str:
    p, axis = result["protocol"], result["axis"]
    _, _, stem, title, _ = AXES[axis]
    held = (
        f"{p['steps']} fine-tuning steps per method"
        if axis == "macs"
        else "every eligible layer 2:4"
        if p["macs_budget"] is None
        else f"MACs budget {p['macs_budget']:g}"
    )
    lines = [
        f"# {title}",
        "",
        f"Model {p['model']}, {held}, {p['num_samples']} samples per run against "
        f"{p['reference']} (n={p['ref_num'] or 'all'}); mean ± std over seeds.",
        "",
    ]
    if axis == "macs":
        lines += [
            "| method | MACs budget | effective MACs (share of dense) | FID | seeds |",
            "| --- | --- | --- | --- | --- |",
        ]
    else:
        lines += ["| method | fine-tuning steps | FID | KID | seeds |", "| --- | --- | --- | --- | --- |"]
    for pt in result["points"]:
        f, k = pt["fid"], pt.get("kid") or {}
        if axis == "macs":
            budget = "all eligible layers" if pt["macs_budget"] is None else f"{pt['macs_budget']:g}"
            lines.append(
                f"| {pt['label']} | {budget} | {pt['macs_share']:.3f} | {f['mean']:.2f} ± "
                f"{f.get('std', 0):.2f} | {f['n']} |"
            )
        else:
            kid = f"{k['mean']:.4f} ± {k.get('std', 0):.4f}" if k.get("n") else "-"
            steps = "0 (trains nothing; not plotted)" if pt["steps"] == 0 else pt["steps"]
            lines.append(f"| {pt['label']} | {steps} | {f['mean']:.2f} ± {f.get('std', 0):.2f} | {kid} | {f['n']} |")
    if axis == "steps" and result.get("start_fid"):
        start, bound = result["start_fid"], result["bound_5pct"]
        lines += [
            "",
            f"The starting model scores {start['mean']:.2f} ± {start.get('std', 0):.2f} "
            f"({start['n']} seeds). Within 5% is judged paired by seed: a budget's mean FID against the "
            "starting model's mean on the same seeds (same noise, labels and Inception features); the plot's dashed "
            f"line is 5% above the all-seed mean ({bound:.2f}). First budget within 5% of the starting model:",
            "",
            "| method | first budget within 5% | FID there (starting model, same seeds) | largest budget measured "
            "| FID there (starting model, same seeds) | excess over the starting model there ± paired SE | seeds |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for h in result["within_5pct"].values():
            share = (
                f" ({h['first_samples_share']:.1%} of pretraining samples)"
                if h["first_samples_share"] is not None
                else ""
            )
            first = "not reached" if h["first_steps"] is None else f"{h['first_steps']} steps{share}"
            there = "-" if h["vs_start"] is None else f"{h['vs_start']['fid']:.2f} ({h['vs_start']['start_fid']:.2f})"
            last = h["vs_start_at_largest"]
            se = "" if last["excess_se"] is None else f" ± {last['excess_se']:.1%}"
            seeds = "unpaired" if last["seeds"] is None else ", ".join(last["seeds"])
            lines.append(
                f"| {h['label']} | {first} | {there} | {h['largest_budget']} steps | "
                f"{last['fid']:.2f} ({last['start_fid']:.2f}) | {last['excess']:+.1%}{se} | {seeds} |"
            )
    return "\n".join(lines + ["", f"![{title}]({stem}.png)"]) + "\n"


def write_frontier(
    files: Sequence[str | Path], out: str | Path, axis: str = "macs", methods: Sequence[str] | None = None
) -> dict[str, Path]:
    """``frontier.{json,md,png}`` (axis "macs") or ``budgets.{json,md,png}`` (axis "steps") in ``out``."""
    result = {**frontier(files, axis, methods), "created": timestamp()}
    _, x, stem, title, xlabel = AXES[axis]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{stem}.json", result)
    write_text_atomic(out / f"{stem}.md", _markdown(result))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    # Along the steps axis (log scale) a method that trains nothing has no curve; its row in the table says its FID,
    # and the starting model is a band (mean ± std) with the 5% bound above it.
    plotted = [pt for pt in result["points"] if axis != "steps" or pt["steps"] > 0]
    if axis == "steps" and result.get("start_fid"):
        start = result["start_fid"]
        lo, hi = start["mean"] - start.get("std", 0.0), start["mean"] + start.get("std", 0.0)
        ax.axhspan(
            lo, hi, color="0.6", alpha=0.35, label=f"starting model {start['mean']:.2f} ± {start.get('std', 0):.2f}"
        )
        ax.axhline(result["bound_5pct"], color="0.3", linestyle="--", linewidth=1, label="5% above the starting model")
        x = "samples_share" if result.get("pretraining_samples") else x
        xlabel = (
            "fine-tuning samples (share of the dense model's pretraining samples)" if x == "samples_share" else xlabel
        )
    for i, method in enumerate(dict.fromkeys(pt["method"] for pt in plotted)):
        mine = [pt for pt in plotted if pt["method"] == method]
        ax.errorbar(
            [pt[x] for pt in mine],
            [pt["fid"]["mean"] for pt in mine],
            yerr=[pt["fid"].get("std", 0.0) for pt in mine],
            marker="osD^vP*X"[i % 8],
            capsize=3,
            label=mine[0]["label"],
        )
    if axis == "steps":
        ax.set_xscale("log")
        ax.minorticks_off()  # only the budgets measured are labelled
        ticks = sorted({(pt[x], pt["steps"]) for pt in plotted})
        ax.set_xticks(
            [t for t, _ in ticks],
            [f"{t:.1%}\n{n} steps" if x == "samples_share" else str(n) for t, n in ticks],
            fontsize=7,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FID (mean ± std over seeds)")
    ax.set_title(f"{result['protocol']['model']}: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(plt, fig, out / f"{stem}.png")
    return {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "plot": out / f"{stem}.png"}
