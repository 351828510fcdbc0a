"""The bad-input catalogue: every case exits 2 with one ``error:`` line, no traceback, and leaves
every existing artifact byte-identical (tiny presets, in-process CLI calls)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from sparse_deploy import train as train_mod
from sparse_deploy.checkpoint import LEGACY_TRAINING_STATE, MANIFEST, TRAINING_STATE
from sparse_deploy.provenance import seal

# --- helpers -----------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256); folders as empty markers."""
    out = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return out


def refused(capsys, main, argv: list[str], *watch: Path) -> str:
    """Run ``main(argv)``; assert exit 2, one ``error:`` line, no traceback, ``watch`` untouched."""
    before = {str(w): snapshot(w) if w.is_dir() else (w.read_bytes() if w.exists() else None) for w in watch}
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    after = {str(w): snapshot(w) if w.is_dir() else (w.read_bytes() if w.exists() else None) for w in watch}
    assert after == before, "a refused command changed artifacts"
    return lines[0]


# --- train: run identity, no pickle, flags ----------------------------------------------------------


def _train_argv(out: Path, data: str, *extra: str) -> list[str]:
    return ["--model", "tiny-dit", "--out", str(out), "--steps", "2", "--checkpoint-every", "1", "--preview", "0",
            "--batch-size", "4", "--data", data, "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fmnist_data) -> Path:
    out = tmp_path_factory.mktemp("cat") / "dense"
    assert train_mod.main(_train_argv(out, fmnist_data)) == 0
    return out


DIFFERENT_RUNS = {
    "smaller --steps": (["--steps", "1"], "steps (2 -> 1)"),
    "larger --steps": (["--steps", "3"], "steps (2 -> 3)"),
    "--lr": (["--lr", "0.002"], "lr ("),
    "--seed": (["--seed", "1"], "seed (0 -> 1)"),
    "--batch-size": (["--batch-size", "2"], "batch_size (4 -> 2)"),
    "--warmup-steps": (["--warmup-steps", "3"], "warmup_steps ("),
    "--ema": (["--ema", "0.5"], "ema_decay ("),
    "--data": (["--data", "synthetic:8"], "data ("),
    "--sparsity into a dense run": (["--sparsity", "fixed"], "sparsity ("),
}


@pytest.mark.parametrize("name", list(DIFFERENT_RUNS))
def test_a_different_config_is_refused_before_anything_is_written(capsys, finished_run, fmnist_data, name):
    # The data flag must be replaced, not repeated: build the argv with the override last (argparse keeps the last).
    extra, expected = DIFFERENT_RUNS[name]
    line = refused(capsys, train_mod.main, _train_argv(finished_run, fmnist_data, *extra), finished_run)
    assert "different run" in line and expected in line
    assert "another --out" in line and "delete" in line
    assert not (finished_run / "coverage.json").exists()


def test_the_same_config_is_a_no_op_on_a_finished_run(caplog, finished_run, fmnist_data):
    before = snapshot(finished_run)
    caplog.set_level("INFO")
    assert train_mod.main(_train_argv(finished_run, fmnist_data, "--checkpoint-every", "5")) == 0  # not identity
    assert "already complete" in caplog.text
    assert snapshot(finished_run) == before


def test_a_planted_pickle_is_never_loaded(capsys, tmp_path, finished_run, fmnist_data):
    out = tmp_path / "planted"
    shutil.copytree(finished_run, out)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (out / "checkpoint" / TRAINING_STATE).unlink()
    (out / "checkpoint" / LEGACY_TRAINING_STATE).write_bytes(pickle.dumps(Payload()))
    line = refused(capsys, train_mod.main, _train_argv(out, fmnist_data), out)
    assert "pickled training state" in line
    assert not marker.exists()


def test_a_pickle_under_the_state_name_is_refused(capsys, tmp_path, finished_run, fmnist_data):
    out = tmp_path / "planted2"
    shutil.copytree(finished_run, out)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    state = out / "checkpoint" / TRAINING_STATE
    state.write_bytes(pickle.dumps(Payload()))
    line = refused(capsys, train_mod.main, _train_argv(out, fmnist_data), out)
    assert TRAINING_STATE in line and "hash" in line
    manifest = json.loads((out / "checkpoint" / MANIFEST).read_text())  # even with a matching hash: unreadable, not run
    manifest["training_state_sha256"] = hashlib.sha256(state.read_bytes()).hexdigest()
    (out / "checkpoint" / MANIFEST).write_text(json.dumps(seal(manifest)))
    line = refused(capsys, train_mod.main, _train_argv(out, fmnist_data), out)
    assert "unreadable" in line
    assert not marker.exists()


def test_a_torn_metrics_line_is_tolerated_on_resume(tmp_path, finished_run, fmnist_data):
    out = tmp_path / "torn"
    shutil.copytree(finished_run, out)
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')
    assert train_mod.main(_train_argv(out, fmnist_data)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


BAD_TRAIN_FLAGS = {
    "--lr -1": (["--lr", "-1"], "--lr"),
    "--lr nan": (["--lr", "nan"], "--lr"),
    "--lr inf": (["--lr", "inf"], "--lr"),
    "--device tpu": (["--device", "tpu"], "--device"),
    "--warmup-steps -4": (["--warmup-steps", "-4"], "--warmup-steps"),
    "--steps 0": (["--steps", "0"], "--steps"),
    "--steps -3": (["--steps", "-3"], "--steps"),
    "--preview -2": (["--preview", "-2"], "--preview"),
    "--preview-steps 0": (["--preview-steps", "0"], "--preview-steps"),
    "--batch-size 0": (["--batch-size", "0"], "--batch-size"),
    "--checkpoint-every 0": (["--checkpoint-every", "0"], "--checkpoint-every"),
    "--ema nan": (["--ema", "nan"], "--ema"),
    "--ema 1": (["--ema", "1"], "--ema"),
    "--decay nan": (["--sparsity", "srste", "--decay", "nan"], "--decay"),
    "--mask-every 0": (["--sparsity", "srste", "--mask-every", "0"], "--mask-every"),
    "--model nope": (["--model", "nope"], "unknown preset"),
}


@pytest.mark.parametrize("name", list(BAD_TRAIN_FLAGS))
def test_bad_train_flags_are_refused_before_work(capsys, tmp_path, fmnist_data, name):
    extra, expected = BAD_TRAIN_FLAGS[name]
    out = tmp_path / "run"
    line = refused(capsys, train_mod.main, _train_argv(out, fmnist_data, *extra), tmp_path)
    assert expected in line
    assert not out.exists()


def test_kd_weight_nan_is_refused(capsys, tmp_path, finished_run, fmnist_data):
    line = refused(capsys, train_mod.main, _train_argv(tmp_path / "run", fmnist_data, "--sparsity", "srste", "--init",
                                                       str(finished_run / "checkpoint"), "--kd-weight", "nan"), tmp_path)
    assert "--kd-weight" in line


def test_out_that_is_a_file_is_refused(capsys, tmp_path, fmnist_data):
    target = tmp_path / "file"
    target.write_text("keep me")
    line = refused(capsys, train_mod.main, _train_argv(target, fmnist_data), tmp_path)
    assert "--out" in line and "is a file" in line
    line = refused(capsys, train_mod.main, _train_argv(target / "below", fmnist_data), tmp_path)
    assert "--out" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores write permissions")
def test_out_without_write_permission_is_refused(capsys, tmp_path, fmnist_data):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = refused(capsys, train_mod.main, _train_argv(locked / "run", fmnist_data), tmp_path)
        assert "not writable" in line
    finally:
        locked.chmod(0o700)


def test_disk_full_during_checkpointing_is_one_line_and_keeps_the_last_checkpoint(capsys, tmp_path, finished_run, fmnist_data, monkeypatch):
    import errno

    out = tmp_path / "full"
    shutil.copytree(finished_run, out)
    ckpt_before = snapshot(out / "checkpoint")

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "training_state.safetensors")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    line = refused(capsys, train_mod.main, _train_argv(out, fmnist_data, "--steps", "1", "--out", str(tmp_path / "fresh")), out)
    assert "No space left" in line and "free some space" in line
    assert snapshot(out / "checkpoint") == ckpt_before
    assert not (tmp_path / "fresh" / "checkpoint").exists()
    assert not [p for p in (tmp_path / "fresh").glob(".checkpoint.*")]
