"""The sparse-deploy command: the stages as subcommands, and one grammar over every command's parser.

Every option of every command (and subcommand) has help text, shows its default, takes --log-level and -q,
and an old spelling kept for compatibility is a hidden alias of the visible option with the same destination.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from sparse_deploy import cli
from sparse_deploy.cliargs import aliases_of, subparsers
from sparse_deploy.gpu_check import cli as gpu_cli

REPO = Path(__file__).resolve().parents[2]
PARSERS = {**{name: command.build_parser for name, command in cli.COMMANDS.items()}, "gpu_check": gpu_cli.build_parser}


@pytest.fixture(autouse=True)
def _logging_restored():
    """-q sets the root level and switches progress bars off for the process: undone after each test."""
    level = logging.getLogger().level
    saved = {k: os.environ.get(k) for k in ("TQDM_DISABLE", "DIFFUSERS_VERBOSITY")}
    yield
    logging.getLogger().setLevel(level)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _all_parsers():
    for name, build in PARSERS.items():
        parser = build()
        yield name, parser
        for sub, subparser in subparsers(parser).items():
            yield f"{name} {sub}", subparser


def test_the_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for stage in ("train", "export", "build", "run", "bench", "fid", "triton", "summary", "shipped", "client"):
        assert f"    {stage} " in out, stage
    assert cli.main([]) == 2  # no stage: the help, and a failing status


def test_the_console_script_is_the_command():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"sparse-deploy": "sparse_deploy.cli:main"}
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_deploy", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "run " in proc.stdout and "sparse-deploy" in proc.stdout


def test_a_stage_runs_with_its_own_flags_and_names_itself(capsys):
    assert cli.main(["-q", "train", "--model", "tiny-dit", "--print-modelopt-rules"]) == 0
    rules = json.loads(capsys.readouterr().out)
    assert rules["nn.Linear"]["*"] is None and "transformer_blocks.0.attn1.to_q" in rules["nn.Linear"]
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert capsys.readouterr().out.startswith("usage: sparse-deploy run ")
    assert cli.main(["teach"]) == 2 and "unknown stage 'teach'" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(PARSERS))
def test_every_option_has_help_a_shown_default_and_the_logging_flags(name):
    for where, parser in (p for p in _all_parsers() if p[0].split()[0] == name):
        options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
        flags = {o for a in options for o in a.option_strings}
        if subparsers(parser):  # a command of subcommands: the options are theirs
            continue
        assert {"--log-level", "-q", "--quiet"} <= flags, where
        text = parser.format_help()
        for old, option in aliases_of(parser).items():  # an old spelling: the same action, left out of the help
            assert parser._option_string_actions[old] is parser._option_string_actions[option], (where, old)
            assert f"{old} " not in text and f"{old}," not in text and option in text, (where, old)
        for action in options:
            assert action.help and action.help.strip(), f"{where}: {action.option_strings} has no help"
        for action in options:
            default = action.default
            if default is None or default is False or default == ():
                continue
            if isinstance(action, (argparse._VersionAction,)) or default == argparse.SUPPRESS:
                continue
            shown = parser._get_formatter()._get_help_string(action)
            assert "default" in shown.lower(), f"{where}: {action.option_strings} does not show its default"
        assert "usage:" in text


def test_the_same_idea_has_the_same_flag():
    parsers = dict(_all_parsers())
    # Output folders: --out everywhere a command writes one; the old spellings still parse.
    for where in ("train", "export", "build", "run", "triton", "client", "bench latency", "shipped pack"):
        assert any("--out" in a.option_strings for a in parsers[where]._actions), where
    build = parsers["build"].parse_args(["--model", "tiny-dit", "--engine-dir", "e", "--backend", "trt"])
    assert str(build.out) == "e" and build.backend == "trt"
    # Sampling steps are --sample-steps wherever a command samples; --steps stays as the old spelling there.
    for where in ("run", "summary", "client", "shipped score", "bench grids", "bench latency", "bench all"):
        assert any("--sample-steps" in a.option_strings for a in parsers[where]._actions), where
    assert parsers["run"].parse_args(["--engine", "e", "--out", "o", "--steps", "3"]).steps == 3
    # Training steps are --steps where a command trains.
    for where in ("train", "bench methods"):
        steps = next(a for a in parsers[where]._actions if "--steps" in a.option_strings)
        assert steps.help != argparse.SUPPRESS, where
    # Backends: build takes run's aliases too.
    run_backends = next(a for a in parsers["run"]._actions if "--backend" in a.option_strings).choices
    build_backends = next(a for a in parsers["build"]._actions if "--backend" in a.option_strings).choices
    assert {"ort", "trt"} <= set(build_backends) and {"ort", "trt"} <= set(run_backends)
    served = parsers["serve"].parse_args(["--repository", "r"])  # tritonserver's --model-repository, old spelling
    assert str(served.repository) == "r"
