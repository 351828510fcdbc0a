"""The Python API: the stages' command lines as keyword arguments, calling what the commands call."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

import sparse_deploy
from sparse_deploy import api, cli
from sparse_deploy.errors import SparseDeployError

REPO = Path(__file__).resolve().parents[2]


def test_keywords_become_the_flags():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kd-weight", type=float)
    parser.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction)
    parser.add_argument("--no-tf32", dest="tf32", action="store_false")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--precision")
    parser.add_argument("--engines", nargs=2)
    argv = api.flags_of(
        parser, kd_weight=0.1, ema_warmup=False, tf32=False, force=True, precision=("fp32", "fp16"), engines=["a", "b"]
    )
    assert " ".join(argv) == "--kd-weight 0.1 --no-ema-warmup --no-tf32 --force --precision fp32,fp16 --engines a b"
    assert api.flags_of(parser, kd_weight=None, tf32=True, force=False) == []
    with pytest.raises(SparseDeployError, match="unknown keyword 'kd_wieght'.*known: .*kd_weight"):
        api.flags_of(parser, kd_wieght=1)


CALLS = {  # API function, its keywords, the same command line (split on spaces)
    "finetune": ((), dict(weights="w", steps=3, out="o"), "train --weights w --steps 3 --out o"),
    "prune": ((), dict(init="c", mask_init="wanda"), "train --init c --mask-init wanda"),
    "export_graphs": ((), dict(checkpoint="c", precision="fp32"), "export --checkpoint c --precision fp32"),
    "build_engines": ((), dict(weights="w", backend="ort", out="e"), "build --weights w --backend ort --out e"),
    "sample": ((), dict(engine="e", out="s", num=2, sample_steps=5), "run --engine e --out s --num 2 --sample-steps 5"),
    "compute_fid": (("a", "b"), dict(num=10), "fid a b --num 10"),
}


@pytest.mark.parametrize("function", list(CALLS))
def test_each_function_is_what_the_command_calls(monkeypatch, function):
    positional, keywords, line = CALLS[function]
    argv = line.split()
    module = api.STAGES[function]
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(module, "from_args", lambda args: seen.append(args) or {})
    getattr(api, function)(*positional, **keywords)
    if function == "finetune":
        argv = [*argv, "--sparsity", "srste"]
    if function == "prune":
        argv = [*argv, "--sparsity", "oneshot"]
    try:
        cli.main(argv)
    except (TypeError, AttributeError, KeyError):  # the command then prints what from_args returned: not ours
        pass
    assert len(seen) == 2 and vars(seen[0]) == vars(seen[1]), function


def test_a_bad_value_is_one_sentence_not_an_exit():
    with pytest.raises(SparseDeployError, match="invalid choice: 'gpu'"):
        api.build_engines(model="tiny-dit", backend="gpu")
    with pytest.raises(SparseDeployError, match="required"):
        api.sample(num=2)


def test_the_api_is_reexported_lazily():
    assert sparse_deploy.finetune is api.finetune and sparse_deploy.compute_fid is api.compute_fid
    assert set(sparse_deploy.API) <= set(api.__all__) and set(sparse_deploy.API) <= set(dir(sparse_deploy))
    code = "import sys, sparse_deploy; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))"
    proc = subprocess.run(
        [sys.executable, "-c", "import json; " + code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and json.loads(proc.stdout) == []  # import sparse_deploy stays torch-free


def test_modelopt_rules_are_our_selection():
    rules = api.modelopt_rules(model="tiny-dit")
    assert rules["nn.Conv2d"] == {"*": None} and len(rules["nn.Linear"]) == 13  # "*" and our 12 layers


def test_docs_api_md_lists_every_function_and_every_stage():
    text = (REPO / "docs" / "API.md").read_text()
    for name in sparse_deploy.API:
        assert f"| `{name}(" in text, name
    for stage in cli.COMMANDS:
        assert f"`{stage}`" in text, stage
