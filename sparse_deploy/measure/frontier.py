"""FID against effective MACs across method comparisons run at different ``--macs-budget`` levels.

Each ``bench methods`` run (one MACs budget, every method at an equal fine-tuning budget) gives one
point per method; this module joins several of them into one curve per method, so a user sees
which recipe keeps the most quality at each compute level:

    python -m sparse_deploy.bench frontier reports/b1.0/methods.json reports/b0.75/methods.json ... --out reports/frontier

writes ``frontier.json`` (every point with its source file), ``frontier.md`` and ``frontier.png``.
Runs are only joined when they share the model, dense checkpoint, fine-tuning steps, sample count
and reference set: points measured under other protocols are not comparable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import SparseDeployError

__all__ = ["frontier", "write_frontier"]

# What must be equal for two comparisons' FIDs to sit on one plot.
_PROTOCOL = ("model", "dense_checkpoint", "steps", "num_samples", "reference", "ref_num", "sample_steps", "scheduler")


def _protocol(record: dict[str, Any]) -> dict[str, Any]:
    s = record["settings"]
    return {k: (record.get("dense_checkpoint", {}).get("weights_sha256") if k == "dense_checkpoint" else s.get(k)) for k in _PROTOCOL}


def frontier(files: Sequence[str | Path]) -> dict[str, Any]:
    """One point per (method, MACs budget): mean and spread of FID over seeds, effective MACs share."""
    if not files:
        raise SparseDeployError("give at least one methods.json (written by python -m sparse_deploy.bench methods)")
    points, protocol = [], None
    for f in files:
        path = Path(f)
        try:
            record = json.loads(path.read_text())
            proto = _protocol(record)
            summary, dense_macs = record["summary"], record["macs"]["dense_macs"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SparseDeployError(f"'{path}' is not a methods.json of this version ({exc.__class__.__name__}: {exc}); "
                                    "re-run python -m sparse_deploy.bench methods") from exc
        if protocol is None:
            protocol = proto
        elif proto != protocol:
            diff = sorted(k for k in _PROTOCOL if proto[k] != protocol[k])
            raise SparseDeployError(f"'{path}' was measured under another protocol ({', '.join(diff)} differ); "
                                    "join only comparisons run with the same settings")
        for method, s in summary.items():
            if not s["fid"].get("n"):
                continue
            points.append({
                "method": method, "label": s["label"], "macs_budget": record["settings"].get("macs_budget"),
                "macs": s["macs"], "macs_share": s["macs"] / dense_macs, "fid": s["fid"], "source": str(path),
            })
    points.sort(key=lambda p: (p["method"], p["macs_share"]))
    return {"protocol": protocol, "points": points}


def _markdown(result: dict[str, Any]) -> str:
    p = result["protocol"]
    lines = [
        "# FID against effective MACs", "",
        f"Model {p['model']}, {p['steps']} fine-tuning steps per method, {p['num_samples']} samples per run against "
        f"{p['reference']} (n={p['ref_num'] or 'all'}); mean ± std over seeds.", "",
        "| method | MACs budget | effective MACs (share of dense) | FID | seeds |", "| --- | --- | --- | --- | --- |",
    ]
    for pt in result["points"]:
        f = pt["fid"]
        budget = "all eligible layers" if pt["macs_budget"] is None else f"{pt['macs_budget']:g}"
        lines.append(f"| {pt['label']} | {budget} | {pt['macs_share']:.3f} | {f['mean']:.2f} ± {f.get('std', 0):.2f} | {f['n']} |")
    return "\n".join(lines + ["", "![FID against effective MACs](frontier.png)"]) + "\n"


def write_frontier(files: Sequence[str | Path], out: str | Path) -> dict[str, Path]:
    """``frontier.json``, ``frontier.md`` and ``frontier.png`` in ``out``."""
    from ..provenance import timestamp, write_json_atomic, write_text_atomic
    from .plots import pyplot, save_figure

    result = {**frontier(files), "created": timestamp()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "frontier.json", result)
    write_text_atomic(out / "frontier.md", _markdown(result))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, method in enumerate(dict.fromkeys(pt["method"] for pt in result["points"])):
        mine = [pt for pt in result["points"] if pt["method"] == method]
        ax.errorbar([pt["macs_share"] for pt in mine], [pt["fid"]["mean"] for pt in mine],
                    yerr=[pt["fid"].get("std", 0.0) for pt in mine], marker="osD^vP*X"[i % 8], capsize=3, label=method)
    ax.set_xlabel("effective MACs (share of the dense model)")
    ax.set_ylabel("FID (mean ± std over seeds)")
    ax.set_title(f"{result['protocol']['model']}: FID against effective MACs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(plt, fig, out / "frontier.png")
    return {"json": out / "frontier.json", "markdown": out / "frontier.md", "plot": out / "frontier.png"}
