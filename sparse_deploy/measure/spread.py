"""The method comparison in words: the run-to-run spread, the paired gaps between methods, and where the time went."""

from __future__ import annotations

from typing import Any

import numpy as np

from .recipes import is_dense_method


def ordered(by_name: dict[str, Any], order: list[str] | None) -> list[tuple[str, Any]]:
    """``by_name``'s items in the run's order (the JSON files store keys sorted)."""
    names = [n for n in (order or []) if n in by_name] + [n for n in by_name if n not in (order or [])]
    return [(n, by_name[n]) for n in names]


# ----------------------------------------------------------------------------- method comparison in words


def methods_spread_lines(methods: dict[str, Any]) -> list[str]:
    """The run-to-run spread against the gaps between methods, in words computed from the record."""
    summary = methods["summary"]
    stds = {m: v["fid"]["std"] for m, v in summary.items() if v["fid"].get("n", 0) > 1}
    if not stds:
        return ["One seed per method: no run-to-run spread was measured, so no gap between methods can be called real."]
    seeds = min(v["fid"]["n"] for v in summary.values() if v["fid"].get("n", 0) > 1)
    caveat = (
        (
            f" With {seeds} seeds a standard deviation is itself rough (its own uncertainty is "
            "large), so gaps near "
            "2 standard errors are suggestive, not settled; more --seeds settle them."
        )
        if seeds < 5
        else ""
    )
    lines = [
        "Run-to-run spread: the FID standard deviation over seeds is "
        f"{min(stds.values()):.2f}-{max(stds.values()):.2f} "
        f"(median {float(np.median(list(stds.values()))):.2f}).{caveat}"
    ]
    sparse = {m: v for m, v in summary.items() if not is_dense_method(m) and v["fid"].get("n")}
    if not sparse:
        return lines
    best = min(sparse, key=lambda m: sparse[m]["fid"]["mean"])

    runs = methods.get("runs") or []

    def gap_line(m: str, other: str, what: str) -> str:
        v, against = summary[m], summary[other]
        gap = v["fid"]["mean"] - against["fid"]["mean"]
        # Standard error of a difference of two means over n seeds each.
        se = float(
            np.hypot(
                v["fid"].get("std", 0.0) / np.sqrt(v["fid"]["n"]),
                against["fid"].get("std", 0.0) / np.sqrt(against["fid"]["n"]),
            )
        )
        verdict = (
            "larger than 2 standard errors"
            if se > 0 and abs(gap) > 2 * se
            else "within 2 standard errors: not resolved by this run"
        )
        line = f"- {v['label']}: FID {gap:+.2f} against {what}, standard error of the gap {se:.2f}, {verdict}"
        paired = paired_gap(runs, m, other)
        if paired is not None:
            p_verdict = "larger than 2" if paired["se"] > 0 and abs(paired["gap"]) > 2 * paired["se"] else "within 2"
            line += (
                f"; paired by seed (same noise and labels, {paired['n']} seeds): {paired['gap']:+.2f}, "
                f"standard error {paired['se']:.2f}, {p_verdict} standard errors"
            )
        return line + "."

    start = summary.get("start")
    if start and start["fid"].get("n"):  # the model the user started from: the reference that matters
        lines.append(gap_line(best, "start", "the starting model (the price of 2:4 sparsity at this budget)"))
        if summary.get("dense", {}).get("fid", {}).get("n"):
            lines.append(gap_line("dense", "start", "the starting model (what the fine-tuning itself costs)"))
    dense = summary.get("dense")
    if dense and dense["fid"].get("n"):
        lines.append(gap_line(best, "dense", "dense training continued with the same settings"))
    for m, _ in ordered(sparse, methods["settings"].get("methods")):
        if m != best:
            lines.append(gap_line(m, best, f"the best sparse method ({sparse[best]['label']})"))
    return lines


#: Which sparse recipe's samples the report shows beside the dense ones: the recommended one first.
SAMPLE_GRID_ORDER = (
    "fixed+kd+feat-sparsegpt",
    "fixed+teacher+feat-sparsegpt",
    "srste+kd+feat-sparsegpt",
    "srste+kd-sparsegpt",
    "oneshot-sparsegpt",
    "srste+kd",
    "srste",
    "ste",
    "fixed",
    "oneshot",
)


def paired_gap(runs: list[dict[str, Any]], method: str, other: str) -> dict[str, Any] | None:
    """FID of ``method`` minus ``other`` seed by seed (both drew the same noise and labels per seed).

    Pairing removes the part of the spread both runs of a seed share (its sampling noise), so it
    resolves smaller gaps than the unpaired standard error; None with fewer than two shared seeds.
    """
    fids: dict[str, dict[int, float]] = {method: {}, other: {}}
    for r in runs:
        if r.get("method") in fids and "seed" in r and r.get("fid") is not None:
            fids[r["method"]][int(r["seed"])] = float(r["fid"])
    pair = paired(fids[method], fids[other])
    if pair is None or pair["n"] < 2:
        return None
    return {"n": pair["n"], "gap": pair["gap"], "se": pair["se"]}


def paired(a: dict[Any, float], b: dict[Any, float]) -> dict[str, Any] | None:
    """``a`` minus ``b`` on their shared seeds (keys): the seeds, mean gap, and its standard error (None for one seed).

    None when they share no seed.
    """
    seeds = sorted(set(a) & set(b), key=int)
    if not seeds:
        return None
    diff = np.asarray([a[s] - b[s] for s in seeds])
    se = float(diff.std(ddof=1) / np.sqrt(len(seeds))) if len(seeds) > 1 else None
    return {"seeds": seeds, "n": len(seeds), "gap": float(diff.mean()), "se": se}


def methods_time_line(methods: dict[str, Any]) -> str:
    """How long the comparison took, from the per-run times stored in the record."""
    runs = methods.get("runs", [])
    total = {k: sum(r.get(k) or 0.0 for r in runs) for k in ("train_seconds", "sample_seconds", "feature_seconds")}
    resumed = sum(1 for r in runs if r.get("train_resumed"))
    note = (
        f" ({resumed} runs resumed from a checkpoint: their training time is the resumed part only)" if resumed else ""
    )
    elsewhere = sorted({r["train_device"] for r in runs if r.get("train_device") and r["train_device"] != "cpu"})
    if elsewhere:  # drawn with --no-score on another device, scored here
        note += (
            f"; fine-tuning and sampling ran on {', '.join(elsewhere)} for some runs (their times are that device's)"
        )
    threads = sorted({r["train_torch_threads"] for r in runs if r.get("train_torch_threads")})
    if len(threads) > 1:  # e.g. runs added later beside another job: their seconds per step are not comparable
        note += (
            f"; the runs were drawn with {' or '.join(map(str, threads))} torch threads (their "
            "seconds per step differ for that reason too)"
        )
    where = "on the machines that ran them (see below)" if methods.get("merged_from") else "on this machine"
    return (
        f"Time {where}, summed over the {len(runs)} runs: fine-tuning "
        f"{total['train_seconds'] / 60:.1f} min, "
        f"sampling {total['sample_seconds'] / 60:.1f} min, Inception features "
        f"{total['feature_seconds'] / 60:.1f} min{note}; "
        + (
            f"the joined comparisons' invocations ran {methods.get('seconds', 0) / 60:.1f} min in all."
            if methods.get("merged_from")
            else f"the last invocation ran {methods.get('seconds', 0) / 60:.1f} min (runs finished "
            "earlier are reused, "
            "the reference statistics are cached)."
        )
    )
