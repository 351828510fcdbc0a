"""Every command the docs show is one the tools accept: parsed by the real entry point, never drifting.

Commands are collected from README.md, docs/*.md and cpp/README.md: fenced shell blocks and inline
code spans that start with ``python -m sparse_deploy.<tool>``, ``torchrun ... -m sparse_deploy.<tool>``,
``sparse-deploy <tool>`` or ``make <target>``. A ``python -m`` command is handed to its module's
``main()`` with argparse's parsing intercepted right after it succeeds, so every flag and value the
docs show must parse, and nothing runs. A ``make`` target must exist in the Makefile. Placeholders
(``$P``, ``<DIR>``, ``PATH``) become dummy values; synopsis lines with alternatives (``[a|b]``,
``{x,y}``) are not commands and are skipped.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "cpp" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```(?:bash|sh|shell|console)?\n(.*?)```", re.S)
INLINE = re.compile(r"`((?:\.venv/bin/)?python3? -m sparse_deploy[^`]*|sparse-deploy [^`]*|make [a-z][^`]*)`")


class _Parsed(Exception):
    """Raised once argparse has parsed the arguments: the command is accepted, nothing runs."""


class _Refused(Exception):
    """argparse refused the arguments; the message says why."""


def _commands() -> list[tuple[str, str, bool]]:
    """``(doc, command line, whole)``: ``whole`` for a shell block's line, False for a tool named in prose."""
    found: list[tuple[str, str, bool]] = []
    for doc in DOCS:
        text = doc.read_text()
        blocks = [b.replace("\\\n", " ") for b in FENCE.findall(text)]
        lines = [(line, True) for b in blocks for line in b.splitlines()] + [(s, False) for s in INLINE.findall(text)]
        for line, whole in lines:
            line = line.split(" #", 1)[0].split(";", 1)[0].strip()
            line = re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", line)  # leading VAR=value assignments
            if re.match(r"(?:(?:\.venv/bin/)?python3? -m sparse_deploy|torchrun |sparse-deploy |make [a-z])", line):
                found.append((doc.relative_to(REPO).as_posix(), line, whole))
    return sorted(set(found))


def _words(line: str) -> list[str] | None:
    if re.search(r"\[[^\]]*\||\{[^}]*,|\.\.\.|\|", line):
        return None  # a synopsis or a pipeline, not one command
    line = re.sub(r"<[^>]+>", "X", line)
    line = re.sub(r"\$\{?[A-Za-z_]+\}?", "X", line)
    try:
        return shlex.split(line)
    except ValueError:
        return None


def _entry(module: str):
    mod = importlib.import_module(f"sparse_deploy.{module}")
    if not hasattr(mod, "main"):
        mod = importlib.import_module(f"sparse_deploy.{module}.__main__")
    return mod.main


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


COMMANDS = _commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) > 20 and any("sparse_deploy.train" in c for _, c, _ in COMMANDS)


@pytest.mark.parametrize(("doc", "line", "whole"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c, _ in COMMANDS])
def test_documented_command_parses(doc, line, whole, monkeypatch):
    """Shell-block commands must parse whole; a tool named in prose may leave out required arguments, nothing else."""
    words = _words(line)
    if words is None:
        pytest.skip(f"not a single command: {line}")
    if words[0] == "make":
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        missing = [t for t in targets if t not in _make_targets()]
        assert not missing, f"{doc}: `{line}` names make targets that do not exist: {missing}"
        return
    if words[0] == "sparse-deploy":
        from sparse_deploy.cli import COMMANDS as STAGES
        from sparse_deploy.cli import main as console_main

        if len(words) > 1 and words[1] in STAGES:
            words = ["python", "-m", f"sparse_deploy.{STAGES[words[1]].module}", *words[2:]]
        elif len(words) > 1 and re.fullmatch(r"[A-Z][A-Z_]*", words[1]):
            pytest.skip(f"{words[1]} stands for any stage: {line}")
        else:  # the console command's own flags (--help, --version)
            with pytest.raises(SystemExit) as stop:
                console_main(words[1:])
            assert stop.value.code == 0, f"{doc}: `{line}` exits with {stop.value.code}"
            return
    if "-m" not in words:
        pytest.skip(f"not a python -m command: {line}")
    at = words.index("-m")
    module = words[at + 1]
    if not module.startswith("sparse_deploy.") or module == "sparse_deploy.X":
        pytest.skip(f"runs {module}, not one of ours")
    argv = words[at + 2 :]
    real_parse = argparse.ArgumentParser.parse_known_args

    def parse_then_stop(self, args=None, namespace=None):
        real_parse(self, args, namespace)
        raise _Parsed

    def refuse(self, message):
        raise _Refused(message)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_then_stop)
    monkeypatch.setattr(argparse.ArgumentParser, "error", refuse)
    main = _entry(module.removeprefix("sparse_deploy."))
    try:
        main(argv)
    except _Parsed:
        return
    except _Refused as exc:
        if not whole and str(exc).startswith("the following arguments are required"):
            return  # prose naming a tool and some of its flags, not a whole command
        placeholders = [w for w in argv if w == "X" or re.fullmatch(r"[A-Z][A-Z_]*", w)]
        if any(f"'{w}'" in str(exc) for w in placeholders):
            return  # a placeholder where a number or a choice goes (N, NAME, $B): the flag itself exists
        pytest.fail(f"{doc}: `{line}` is refused by {module}: {exc}")
    except SystemExit as exc:  # --help
        assert exc.code in (0, None), f"{doc}: `{line}` is refused by {module} (exit {exc.code})"
        return
    pytest.fail(f"{doc}: `{line}` ran without parsing its arguments")


def test_the_readme_quality_table_is_the_published_json():
    """The README's figures are written by scripts/readme_quality.py from docs/results: none is retyped or stale."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("readme_quality", REPO / "scripts" / "readme_quality.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    budgets = json.loads((REPO / "docs/results/q23-budgets/budgets.json").read_text())
    demo = json.loads((REPO / "docs/results/demo-summary.json").read_text())
    readme = (REPO / "README.md").read_text()
    block = readme.split(script.BEGIN, 1)[1].split(script.END, 1)[0]
    assert block == "\n" + script.table(budgets, demo), (
        "README.md's quality table differs from docs/results; run .venv/bin/python scripts/readme_quality.py"
    )
