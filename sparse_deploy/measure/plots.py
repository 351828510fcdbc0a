"""The benchmark plots (matplotlib, Agg backend), each drawn from one result record.

:func:`pyplot` and :func:`save_figure` are the two steps every figure here (and the frontier's)
goes through: a headless backend, then a tight layout written atomically.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from .report import ordered

__all__ = [
    "pyplot",
    "save_figure",
    "plot_latency",
    "plot_train_cost",
    "plot_fid_methods",
    "plot_fid_vs_macs",
    "plot_samples",
]


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, path: Path) -> Path:
    """Lay out, write and close one figure."""
    from ..provenance import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_latency(record: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    ref, cand = record["reference"], record["candidate"]
    batches = [b for b in record["batches"] if "skipped" not in b]
    has_e2e = any("end_to_end" in b for b in batches)
    fig, axes = plt.subplots(1, 2 if has_e2e else 1, figsize=(11 if has_e2e else 6, 4), squeeze=False)
    panels = [("per_call", "per denoiser call (ms)", 1e3)] + (
        [("end_to_end", "end-to-end sampling run (s)", 1.0)] if has_e2e else []
    )
    for ax, (key, title, scale) in zip(axes[0], panels):
        for name, marker in ((ref, "o"), (cand, "s")):
            xs = [b["batch"] for b in batches if key in b]
            med = [b[key][name]["median"] * scale for b in batches if key in b]
            lo = [(b[key][name]["median"] - b[key][name]["p10"]) * scale for b in batches if key in b]
            hi = [(b[key][name]["p90"] - b[key][name]["median"]) * scale for b in batches if key in b]
            ax.errorbar(xs, med, yerr=[lo, hi], marker=marker, capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks([b["batch"] for b in batches], [str(b["batch"]) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel(title)
        ax.set_title(f"{title} - median, p10-p90")
        ax.grid(alpha=0.3)
        ax.legend()
    engines = record["engines"]
    fig.suptitle(
        f"{record['model']}: {', '.join(sorted({e['backend'] for e in engines.values()}))} "
        f"{', '.join(sorted({e['precision'] for e in engines.values()}))} - {record['machine'].get('description', '')}",
        fontsize=9,
    )
    return save_figure(plt, fig, path)


def plot_train_cost(record: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    names = [n for n, _ in ordered(record["methods"], record["settings"].get("methods"))]
    med = [record["methods"][m]["median"] for m in names]
    lo = [record["methods"][m]["median"] - record["methods"][m]["p10"] for m in names]
    hi = [record["methods"][m]["p90"] - record["methods"][m]["median"] for m in names]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.bar(names, med, yerr=[lo, hi], capsize=4, color="tab:blue", alpha=0.8)
    ax.set_ylabel("seconds per step (median, p10-p90)")
    ax.set_title(f"{record['model']}: fine-tuning cost, batch {record['settings']['batch_size']}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(plt, fig, path)


def plot_fid_methods(record: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    summary = record["summary"]
    names = [n for n, _ in ordered(summary, record["settings"].get("methods"))]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    x = range(len(names))
    ax.bar(
        x,
        [summary[m]["fid"].get("mean", float("nan")) for m in names],
        yerr=[summary[m]["fid"].get("std", 0) for m in names],
        capsize=4,
        alpha=0.75,
        label="mean ± std over seeds",
    )
    for i, m in enumerate(names):
        vals = summary[m]["fid"].get("values", [])
        ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3, label="one seed" if i == 0 else None)
    ax.set_xticks(list(x), [m for m in names], rotation=20)
    ax.set_ylabel(f"FID vs {record['reference']['source']} (n={record['reference']['num']})")
    title = f"{record['model']}: FID per method - {record['budget']}"
    title = textwrap.fill(title, 100)  # the budget line is long: wrap it rather than cut it off
    ax.set_title(title if not record.get("label") else f"{record['label']}\n{title}", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)


def plot_fid_vs_macs(record: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    markers = "osD^vP*X"
    for i, (m, v) in enumerate(ordered(record["summary"], record["settings"].get("methods"))):
        if not v["fid"].get("n"):
            continue
        ax.errorbar(
            [v["macs"] / 1e6],
            [v["fid"]["mean"]],
            yerr=[v["fid"]["std"]],
            marker=markers[i % len(markers)],
            capsize=4,
            label=m,
            alpha=0.8,
        )
    ax.set_xlabel("effective MACs per sample (M)")
    ax.set_ylabel("FID (mean ± std over seeds)")
    ax.set_title(f"{record['model']}: FID against effective MACs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)


def plot_samples(pairs: list[tuple[str, Path]], path: Path) -> Path:
    from PIL import Image

    plt = pyplot()
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 5), squeeze=False)
    for ax, (title, grid) in zip(axes[0], pairs):
        with Image.open(grid) as im:
            ax.imshow(np.asarray(im.convert("L")), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    return save_figure(plt, fig, path)
