"""Write the README's table of measured quality figures from the published JSON, so no figure there is retyped.

Reads the budget curve (``docs/results/q23-budgets/budgets.json``, written by ``bench budgets`` through
scripts/publish_quality.sh) and the demo's summary (``docs/results/demo-summary.json``), and replaces the block
between ``<!-- quality-table begin -->`` and ``<!-- quality-table end -->`` in README.md:

    .venv/bin/python scripts/readme_quality.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparse_deploy.errors import SparseDeployError, cli_entry
from sparse_deploy.provenance import atomic_path

BEGIN, END = "<!-- quality-table begin (scripts/readme_quality.py) -->", "<!-- quality-table end -->"

# (method, fine-tuning steps, how the README names it): the rows a user compares, in reading order.
ROWS = (
    ("oneshot", 0, "one-shot magnitude (Polygraphy's `surgeon prune`, ASP's mask)"),
    ("modelopt-sparsegpt-ours", 0, "NVIDIA Model Optimizer `sparsegpt` mask on our layers (its code)"),
    ("oneshot-sparsegpt", 0, "**calibrated SparseGPT mask + refit kept weights (ours)**"),
    ("modelopt-sat-sparsegpt", 600, "Model Optimizer sparsity-aware training, its default rules"),
    ("srste+kd", 600, "SparseDM (SR-STE + output distillation, magnitude start)"),
    ("fixed+kd+feat", 600, "fixed magnitude masks, output + block distillation"),
    ("fixed+kd+feat-sparsegpt", 600, "**ours: SparseGPT start, fixed masks, output + block distillation**"),
    ("srste+kd+feat-sparsegpt", 600, "the same with learned masks (SR-STE)"),
    ("fixed+teacher+feat-sparsegpt", 600, "the same, teacher alone (SparseDM's code, no data term)"),
    ("fixed+kd+feat-sparsegpt", 2400, "ours, fixed masks"),
    ("srste+kd+feat-sparsegpt", 2400, "ours, learned masks (SR-STE)"),
    ("fixed+teacher+feat-sparsegpt", 2400, "ours, teacher alone"),
    ("fixed+kd+feat-sparsegpt", 9600, "ours, fixed masks"),
    ("dense", 2400, "dense, fine-tuned with the same settings (no harm)"),
)


def _fid(point: dict) -> str:
    f = point["fid"]
    return f"{f['mean']:.2f}" if f["n"] == 1 else f"{f['mean']:.2f} ± {f['std']:.2f}"


def _vs_start(point: dict) -> str:
    v = point["vs_start"]
    ratio = v["fid"] / v["start_fid"]
    if ratio >= 2:
        return f"x{ratio:.1f}"
    return f"{v['excess']:+.1%}" + (f" ± {v['excess_se']:.1%}" if v.get("excess_se") else "")


def _seeds(seeds: list[str] | None) -> str:
    if not seeds:
        return "the starting model's mean (no shared seed)"
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(seeds)}"


def table(budgets: dict, demo: dict | None) -> str:
    points = {(p["method"], p["steps"]): p for p in budgets["points"]}
    start = budgets["start_fid"]
    by_seed = budgets.get("start_fid_by_seed", {})
    lines = [
        f"On the embedded default: 2:4 on all 36 attention and MLP layers (53.9% of the dense MACs), FID of "
        f"{budgets['protocol']['num_samples']} DDIM-{budgets['protocol']['sample_steps']} samples against "
        f"{budgets['protocol']['ref_num']:,} test images; the starting model scores {start['mean']:.2f} ± "
        f"{start['std']:.2f} over seeds {', '.join(sorted(by_seed, key=int))} "
        f"({', '.join(f'{by_seed[s]:.2f}' for s in sorted(by_seed, key=int))}). "
        '"vs start" compares each row with the starting model on the same seeds (± the paired standard error).',
        "",
        "| 2:4 on 36 layers | fine-tuning | FID | seeds | vs start |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, steps, name in ROWS:
        p = points.get((method, steps))
        if p is None:
            continue
        share = f" ({p['samples_share']:.0%} of pretraining)" if steps >= 9600 and p.get("samples_share") else ""
        tuning = "none" if steps == 0 else f"{steps:,} steps{share}"
        lines.append(f"| {name} | {tuning} | {_fid(p)} | {p['fid']['n']} | {_vs_start(p)} |")
    reached = [
        (h["label"], h["first_steps"]) for m, h in budgets["within_5pct"].items() if m != "dense" and h["first_steps"]
    ]
    best = min(
        (h for m, h in budgets["within_5pct"].items() if m != "dense"),
        key=lambda h: h["vs_start_at_largest"]["excess"],
    )
    last = best["vs_start_at_largest"]
    lines += [""]
    if reached:
        lines.append(
            "Within 5% of the starting model: "
            + "; ".join(f"{label} at {steps:,} steps" for label, steps in reached)
            + "."
        )
    else:
        lines.append(
            f"Not reached: within 5% of the starting model. The closest sparse row, {best['label']} at "
            f"{best['largest_budget']:,} steps, is {last['excess']:+.1%} on {_seeds(last['seeds'])}."
        )
    if demo is not None:
        f, r = demo["fid"], demo["recipe"]
        lines += [
            "",
            f"`make demo` fine-tunes {r['steps']:,} steps ({r['mode']} from the {r['mask_init']} start, both "
            f"distillations) and ends with sparse FID {f['sparse']:.1f} against the dense engine's "
            f"{f['dense']:.1f} ({f['gap']:+.1%}, N={f['num']}; docs/results/demo-summary.json).",
        ]
    return "\n".join(lines) + "\n"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", type=Path, default=Path("docs/results/q23-budgets/budgets.json"))
    p.add_argument("--demo", type=Path, default=Path("docs/results/demo-summary.json"))
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    args = p.parse_args(argv)
    if not args.budgets.is_file():
        raise SparseDeployError(f"'{args.budgets}' does not exist; run bash scripts/publish_quality.sh first")
    budgets = json.loads(args.budgets.read_text())
    demo = json.loads(args.demo.read_text()) if args.demo.is_file() else None
    text = args.readme.read_text()
    if BEGIN not in text or END not in text:
        raise SparseDeployError(f"{args.readme} has no '{BEGIN}' ... '{END}' block to fill")
    head, rest = text.split(BEGIN, 1)
    body = table(budgets, demo)
    with atomic_path(args.readme) as tmp:
        tmp.write_text(head + BEGIN + "\n" + body + END + rest.split(END, 1)[1])
    print(f"{args.readme}: quality table from {args.budgets}" + (f" and {args.demo}" if demo else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
