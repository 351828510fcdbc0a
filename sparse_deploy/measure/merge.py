"""Method comparisons of one protocol, run at different times, joined into one comparison.

A comparison grows: a method added later (``bench methods --methods dense,ste,srste`` into another
``--out``) belongs in the table of the first run when both measured the same thing. This joins
their ``methods.json`` files into one record that ``bench report`` reads like any other:

    python -m sparse_deploy.bench merge reports/s600/methods.json reports/s600-more/methods.json --out reports/s600-all

Files are joined only when everything that makes FIDs comparable is equal: model, dense weights,
fine-tuning steps and overrides, MACs budget, distillation weight, sample count, sampler,
reference set and its preprocessing. A method x seed present in several files is taken from the
first; the others are kept as re-runs in the record (``reruns``, with both FIDs), which measures
how well a run reproduces. Nothing is re-scored: the per-run figures are the files' own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import SparseDeployError
from .methods import budget_text, summarise
from .recipes import METHODS

__all__ = ["merge_methods", "PROTOCOL"]

# Settings that must be equal for two comparisons' runs to share one table (the frontier's axes included).
PROTOCOL = (
    "model",
    "steps",
    "num_samples",
    "sample_steps",
    "scheduler",
    "reference",
    "ref_num",
    "lr",
    "warmup_steps",
    "batch_size",
    "kd_weight",
    "kid_subsets",
    "data",
    "macs_budget",
)


def _load(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        raise SparseDeployError(
            f"cannot read '{path}' ({exc.strerror}); pass methods.json files written by "
            "python -m sparse_deploy.bench methods"
        ) from exc
    except ValueError as exc:
        raise SparseDeployError(
            f"'{path}' is not JSON ({exc}); pass methods.json files written by python -m sparse_deploy.bench methods"
        ) from exc
    if not isinstance(record, dict) or record.get("kind") != "methods" or "runs" not in record:
        raise SparseDeployError(
            f"'{path}' is not a method comparison (kind {record.get('kind') if isinstance(record, dict) else None!r}); "
            "pass methods.json files written by python -m sparse_deploy.bench methods"
        )
    return record


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    """What must be equal across the joined files."""
    s = record["settings"]
    return {
        **{k: s.get(k) for k in PROTOCOL},
        "dense_weights_sha256": record["dense_checkpoint"].get("weights_sha256"),
        "reference_identity": record["reference"].get("identity"),
        "reference_num": record["reference"].get("num"),
        "preprocessing": record.get("preprocessing"),
        "macs": record.get("macs"),
    }


def merge_methods(files: Sequence[str | Path], command: str | None = None) -> dict[str, Any]:
    """One comparison record from ``files`` (``methods.json``, same protocol), the first file's run winning a tie."""
    from .machine import record as make_record

    started = time.perf_counter()
    if len(files) < 2:
        raise SparseDeployError("give at least two methods.json files to merge")
    records = [(Path(f), _load(Path(f))) for f in files]
    first_path, first = records[0]
    identity = _identity(first)
    for path, rec in records[1:]:
        other = _identity(rec)
        diff = sorted(k for k in identity if other[k] != identity[k])
        if diff:
            raise SparseDeployError(
                f"'{path}' was measured under another protocol than '{first_path}' ({', '.join(diff)} differ); "
                "merge only comparisons run with the same settings (re-run the missing methods with them)"
            )
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    reruns = []
    for path, rec in records:
        for run in rec["runs"]:
            where = (run["method"], int(run["seed"]))
            if where in runs:
                kept = runs[where]
                reruns.append(
                    {
                        "method": where[0],
                        "seed": where[1],
                        "fid_kept": kept["fid"],
                        "fid_rerun": run["fid"],
                        "difference": run["fid"] - kept["fid"],
                        "rerun_from": str(path),
                        "label": run.get("label"),
                        "grid": run.get("grid"),
                    }
                )
                continue
            runs[where] = {**run, "merged_from": str(path)}
    order = [m for m in METHODS if any(m == method for method, _ in runs)]
    seeds = list(dict.fromkeys(seed for _, rec in records for seed in rec["settings"]["seeds"]))
    ordered_runs = [runs[(m, s)] for s in seeds for m in order if (m, s) in runs]
    settings = {**first["settings"], "methods": order, "seeds": seeds, "work": None}
    labels = list(dict.fromkeys(rec.get("label") for _, rec in records if rec.get("label")))
    sources = [
        {
            "file": str(path),
            "command": rec.get("command"),
            "created": rec.get("created"),
            "seconds": rec.get("seconds"),
            "machine": (rec.get("machine") or {}).get("description"),
            "torch_threads": (rec.get("machine") or {}).get("torch_threads"),
            "methods": rec["settings"].get("methods"),
            "seeds": rec["settings"].get("seeds"),
            "versions": rec.get("versions"),
        }
        for path, rec in records
    ]
    results = {
        "model": first["model"],
        "label": " + ".join(labels) if labels else None,
        "budget": budget_text(settings),
        "dense_checkpoint": first["dense_checkpoint"],
        "reference": first["reference"],
        "preprocessing": first["preprocessing"],
        "fid_note": first["fid_note"]
        + " Merged: each run's vs_dense is against the dense samples of its own comparison.",
        "macs": first["macs"],
        "merged_from": sources,
        "reruns": reruns,
        "runs": ordered_runs,
        "summary": summarise(ordered_runs, order, first["macs"]),
    }
    merged = make_record("methods", command, settings, results, started)
    merged["machine"] = first.get(
        "machine", merged["machine"]
    )  # where the runs were measured, not where they were joined
    merged["versions"] = first.get("versions", merged["versions"])
    merged["seconds"] = sum(rec.get("seconds") or 0.0 for _, rec in records)
    return merged


def merged_lines(methods: dict[str, Any]) -> list[str]:
    """The report's words on a merged comparison: its sources and how well re-run seeds reproduced."""
    sources = methods.get("merged_from")
    if not sources:
        return []
    lines = [
        f"Joined by `bench merge` from {len(sources)} comparisons of the same protocol (each method x seed from the first "
        "file holding it):"
    ]
    for s in sources:
        lines.append(
            f"- `{s['file']}` ({s.get('created')}, {s.get('machine')}, {s.get('torch_threads')} torch threads): "
            f"{', '.join(s.get('methods') or [])}, seeds {', '.join(map(str, s.get('seeds') or []))}; command `{s.get('command')}`."
        )
    machines = list(dict.fromkeys(s.get("machine") for s in sources))
    if len(machines) > 1:
        lines += [
            "",
            f"The sources ran on different machines ({'; '.join(map(str, machines))}): their fine-tuning seconds per step "
            "are not comparable across sources; FID and KID are (the same protocol, checked).",
        ]
    reruns = methods.get("reruns") or []
    if reruns:
        worst = max(reruns, key=lambda r: abs(r["difference"]))
        which = sorted({r["method"] for r in reruns})
        lines += [
            "",
            f"Re-run check: {len(reruns)} method x seed runs ({', '.join(which)}) were drawn again by a later comparison; "
            f"their FIDs differ from the kept runs by at most {abs(worst['difference']):.4f} "
            f"({worst['method']} seed {worst['seed']}: {worst['fid_kept']:.4f} kept, {worst['fid_rerun']:.4f} re-run).",
        ]
    return lines
