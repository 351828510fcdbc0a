"""Every run of one or more ``methods.json`` files as one Markdown table, settings beside each FID.

For comparisons that ``bench merge`` may not join (they differ in a fine-tuning setting such as the
learning rate, which is the point of a sweep): each row is one method x seed as its file stored it,
with the settings it was trained with (from the run's stored key), so nothing is retyped.

    .venv/bin/python scripts/runs_table.py reports/a/methods.json reports/b/methods.json [--methods dense,fixed]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparse_deploy.errors import SparseDeployError, cli_entry


def rows(files: list[Path], methods: list[str] | None) -> list[dict]:
    """One row per stored run: method, label, seed, steps, fine-tuning settings, FID, KID, source file."""
    out = []
    for path in files:
        try:
            record = json.loads(path.read_text())
            runs = record["runs"]
        except (OSError, ValueError, KeyError) as exc:
            raise SparseDeployError(f"'{path}' is not a methods.json ({exc.__class__.__name__}: {exc})") from exc
        for run in runs:
            if methods and run["method"] not in methods:
                continue
            training = run.get("key", {}).get("training") or {}
            out.append(
                {
                    "method": run["method"],
                    "label": run["label"],
                    "seed": run["seed"],
                    "steps": run["train_steps"],
                    "lr": training.get("lr"),
                    "warmup": training.get("warmup_steps"),
                    "ema": training.get("ema_decay"),
                    "fid": run["fid"],
                    "kid": run["kid"]["mean"],
                    "n": run["num_samples"],
                    "source": str(path),
                }
            )
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        "| method | seed | fine-tuning steps | lr | warm-up | EMA decay | FID | KID | N | source |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(table, key=lambda r: (r["steps"], r["method"], r["lr"] or 0, r["seed"])):
        lr = "-" if r["lr"] is None else f"{r['lr']:g}"
        warm = "-" if r["warmup"] is None else str(r["warmup"])
        ema = "-" if r["ema"] is None else f"{r['ema']:.5g}"
        lines.append(
            f"| {r['label']} | {r['seed']} | {r['steps']} | {lr} | {warm} | {ema} | {r['fid']:.2f} | {r['kid']:.4f} | "
            f"{r['n']} | `{r['source']}` |"
        )
    return "\n".join(lines) + "\n"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help="methods.json files (python -m sparse_deploy.bench methods)")
    p.add_argument("--methods", help="comma-separated methods to keep (default: all)")
    args = p.parse_args(argv)
    print(markdown(rows(args.files, args.methods.split(",") if args.methods else None)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
