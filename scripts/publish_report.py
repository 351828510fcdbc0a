"""Reproduce a benchmark report folder in docs/RESULTS.md, word for word, with its plots.

The report's Markdown (written by ``python -m sparse_deploy.bench report`` from the JSON of the
run) goes between two marker lines in the results file, its headings one level down, and the
plots it shows are copied next to the docs so the page renders on GitHub. Nothing is retyped:
re-running after a new benchmark replaces the section (``--section NAME`` names the section when
the fuller run was written to another folder).

    .venv/bin/python scripts/publish_report.py reports/fmnist-dit --images docs/images/bench-fmnist-dit \\
        --json-dir docs/results/bench-fmnist-dit --intro "Date, machine and context of the run (words, not figures)"

``--json-dir`` also copies the report's JSON results (the data behind every table and plot) there.
``--markdown frontier.md`` (or ``budgets.md``) publishes a ``bench frontier``/``bench budgets`` folder.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from sparse_deploy.errors import SparseDeployError, cli_entry
from sparse_deploy.provenance import atomic_path

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def section(report_md: str, image_prefix: str, title: str, intro: str | None) -> tuple[str, list[str]]:
    """The report as a results-file section and the image files it refers to."""
    lines = report_md.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]  # replaced by ``title``
    while lines and not lines[0].strip():
        lines = lines[1:]
    out, images = [f"## {title}", ""], []
    if intro:
        out += [intro, ""]
    for line in lines:
        if line.startswith("#"):
            line = "#" + line  # one level down, under the section's heading
        for name in _IMAGE.findall(line):
            images.append(name[1])
        out.append(_IMAGE.sub(lambda m: f"![{m.group(1)}]({image_prefix}/{m.group(2)})", line))
    return "\n".join(out).strip() + "\n", images


def replace_between_markers(text: str, key: str, body: str) -> str:
    begin, end = f"<!-- report:{key} begin (scripts/publish_report.py) -->", f"<!-- report:{key} end -->"
    block = f"{begin}\n{body}{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1].lstrip("\n")
    return text.rstrip("\n") + "\n\n" + block


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path, help="report folder holding report.md (or --markdown) and its plots")
    p.add_argument(
        "--markdown",
        default="report.md",
        help="the Markdown file in it (frontier.md, budgets.md: bench frontier/budgets)",
    )
    p.add_argument("--results", type=Path, default=Path("docs/RESULTS.md"))
    p.add_argument("--images", type=Path, required=True, help="where the plots are copied (inside docs/)")
    p.add_argument("--title", help="section heading (default: 'Benchmark report: <folder>')")
    p.add_argument(
        "--json-dir", type=Path, help="also copy the report's *.json results here (e.g. docs/results/<name>)"
    )
    p.add_argument("--intro", help="a paragraph put before the report (date, machine, context)")
    p.add_argument(
        "--section",
        help="the marker name of the section to write or replace (default: the report folder's name); "
        "lets a fuller run of the same grid, written to another folder, replace the earlier section in place",
    )
    args = p.parse_args(argv)

    report_md = args.report / args.markdown
    if not report_md.is_file():
        raise SparseDeployError(
            f"'{report_md}' does not exist; write it with python -m sparse_deploy.bench report --out {args.report}"
            " (or bench frontier/budgets --out for their .md)"
        )
    if not args.images.resolve().is_relative_to(args.results.parent.resolve()):
        raise SparseDeployError(f"--images must be inside {args.results.parent} (the page links the plots relatively)")
    prefix = args.images.resolve().relative_to(args.results.parent.resolve()).as_posix()
    body, images = section(
        report_md.read_text(), prefix, args.title or f"Benchmark report: {args.report.as_posix()}", args.intro
    )
    args.images.mkdir(parents=True, exist_ok=True)
    for name in images:
        src = args.report / name
        if not src.is_file():
            raise SparseDeployError(f"the report shows '{name}', which is not in {args.report}; re-run the report")
        shutil.copyfile(src, args.images / name)
    copied = []
    if args.json_dir is not None:
        args.json_dir.mkdir(parents=True, exist_ok=True)
        for src in sorted(args.report.glob("*.json")):
            with atomic_path(args.json_dir / src.name) as tmp:
                shutil.copyfile(src, tmp)
            copied.append(src.name)
        body += (
            f"\nThe JSON behind this section: {', '.join(f'`{args.json_dir.as_posix()}/{n}`' for n in copied)}.\n"
            if copied
            else ""
        )
    text = args.results.read_text() if args.results.is_file() else "# Results\n"
    key = args.section or args.report.name
    with atomic_path(args.results) as tmp:
        tmp.write_text(replace_between_markers(text, key, body))
    print(f"{args.results}: section '{key}' from {report_md}, {len(images)} plots in {args.images}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
