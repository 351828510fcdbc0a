"""The training loop on tiny-dit: dense pretraining, SR-STE + distillation, exact resume, CLI errors."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from sparse_deploy import train as train_mod
from sparse_deploy.checkpoint import MANIFEST, TRAINING_STATE, WEIGHTS, load_checkpoint, read_manifest
from sparse_deploy.masks import is_nm_sparse
from sparse_deploy.models import Denoiser
from sparse_deploy.provenance import seal, sha256_file
from sparse_deploy.sparsify import SparsityConfig, bake_, masked_modules
from sparse_deploy.statefile import load_state

STEPS = 4
DIT_SELECTED = sorted(
    f"transformer_blocks.{b}.{name}"
    for b in range(2)
    for name in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")
)


def _sparse_config(out: Path, dense: Path, data: str) -> train_mod.TrainConfig:
    return train_mod.TrainConfig(
        preset="tiny-dit",
        out=str(out),
        steps=STEPS,
        checkpoint_every=2,
        preview=0,
        data=data,
        init=str(dense),
        sparsity=SparsityConfig(mode="srste"),
        kd_weight=0.1,
    )


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory, fmnist_data) -> Path:
    out = tmp_path_factory.mktemp("dense")
    return train_mod.train(
        train_mod.TrainConfig(preset="tiny-dit", out=str(out), steps=STEPS, preview=0, data=fmnist_data)
    )


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory, dense_ckpt, fmnist_data):
    """An uninterrupted SR-STE + KD run; records every Denoiser the loop deep-copies."""
    out = tmp_path_factory.mktemp("sparse")
    copies: list[Denoiser] = []
    grad_modes: list[tuple[bool, bool]] = []
    real_deepcopy = copy.deepcopy

    def recording_deepcopy(obj, *args, **kwargs):
        result = real_deepcopy(obj, *args, **kwargs)
        if isinstance(obj, Denoiser) and not masked_modules(obj):
            # Copied before masks go on: the distillation teacher.
            def hook(_module, _inputs, output):
                grad_modes.append((torch.is_grad_enabled(), output.requires_grad))

            result.register_forward_hook(hook)
            copies.append(result)
        return result

    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod.copy, "deepcopy", recording_deepcopy)
    try:
        ckpt = train_mod.train(_sparse_config(out, dense_ckpt, fmnist_data))
    finally:
        mp.undo()
    return {"out": out, "ckpt": ckpt, "teachers": copies, "teacher_calls": grad_modes}


def test_dense_run_writes_a_checkpoint(dense_ckpt):
    assert {p.name for p in dense_ckpt.iterdir()} == {MANIFEST, WEIGHTS, TRAINING_STATE}
    manifest = read_manifest(dense_ckpt)
    assert manifest["preset"] == "tiny-dit"
    assert manifest["step"] == STEPS and manifest["complete"] is True
    assert manifest["sparsity"] is None and manifest["masked_layers"] == []
    assert manifest["weights_sha256"] == sha256_file(dense_ckpt / WEIGHTS)
    model, _ = load_checkpoint(dense_ckpt)
    assert masked_modules(model) == {}
    assert not model.training
    rows = [json.loads(line) for line in (dense_ckpt.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss_kd"] == 0 for r in rows)


def test_sparse_run_bakes_to_exact_2_4(sparse_run):
    model, manifest = load_checkpoint(sparse_run["ckpt"])
    assert manifest["complete"] is True and manifest["step"] == STEPS
    assert manifest["sparsity"]["mode"] == "srste"
    assert sorted(manifest["masked_layers"]) == DIT_SELECTED
    assert sorted(masked_modules(model)) == DIT_SELECTED
    baked = bake_(model)
    assert sorted(baked) == DIT_SELECTED
    modules = {n[4:]: m for n, m in model.named_modules()}
    for name in DIT_SELECTED:
        weight = modules[name].weight
        assert is_nm_sparse(weight)
        groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
        assert torch.all(groups == 2), name  # trained weights: exactly 2 non-zeros per group
    coverage = json.loads((sparse_run["out"] / "coverage.json").read_text())
    assert sorted(coverage["sparse_layers"]) == DIT_SELECTED


def test_distillation_teacher_is_frozen(sparse_run, dense_ckpt):
    teachers = sparse_run["teachers"]
    assert len(teachers) == 1
    teacher = teachers[0]
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    # Unchanged by training: still the dense checkpoint's weights.
    dense, _ = load_checkpoint(dense_ckpt)
    for (name, p), (_, q) in zip(teacher.state_dict().items(), dense.state_dict().items()):
        assert torch.equal(p, q), name
    # Called once per step, under no_grad.
    assert sparse_run["teacher_calls"] == [(False, False)] * STEPS
    rows = [json.loads(line) for line in (sparse_run["out"] / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == STEPS
    for row in rows:
        assert row["loss_kd"] > 0
        assert row["loss"] == pytest.approx(row["loss_eps"] + 0.1 * row["loss_kd"], rel=1e-5)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, killed_at_step, sparse_run, dense_ckpt, fmnist_data):
    out = tmp_path / "killed"
    config = _sparse_config(out, dense_ckpt, fmnist_data)
    with killed_at_step(3), pytest.raises(KeyboardInterrupt):  # step 3, after the step-2 checkpoint was written
        train_mod.train(config)
    ckpt = out / "checkpoint"
    partial = read_manifest(ckpt)
    assert partial["step"] == 2 and partial["complete"] is False

    resumed = train_mod.train(_sparse_config(out, dense_ckpt, fmnist_data))
    assert read_manifest(resumed)["step"] == STEPS
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # steps 3-4 done once, by the resumed run

    reference = sparse_run["ckpt"]
    got_state = load_state(resumed / TRAINING_STATE)
    want_state = load_state(reference / TRAINING_STATE)
    assert got_state["step"] == want_state["step"] == STEPS
    for name, want in want_state["model"].items():
        assert_close(got_state["model"][name], want, rtol=0, atol=1e-6, msg=lambda m, name=name: f"student {name}: {m}")
    for idx, want in want_state["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(got_state["optimizer"]["state"][idx][key], want[key], rtol=0, atol=1e-6)
    got_ema, want_ema = load_file(str(resumed / WEIGHTS)), load_file(str(reference / WEIGHTS))
    assert got_ema.keys() == want_ema.keys()
    for name, want in want_ema.items():
        assert_close(got_ema[name], want, rtol=0, atol=1e-6, msg=lambda m, name=name: f"EMA {name}: {m}")
    # Matching rows of the loss log too: the resumed steps saw the same batches and noise.
    ref_rows = [json.loads(line) for line in (sparse_run["out"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], abs=1e-6)


def test_resume_refuses_a_different_run(tmp_path, sparse_run, dense_ckpt, fmnist_data):
    out = tmp_path / "other"
    shutil.copytree(sparse_run["out"], out)
    config = _sparse_config(out, dense_ckpt, fmnist_data)
    config.sparsity = SparsityConfig(mode="fixed")
    with pytest.raises(
        train_mod.SparseDeployError, match=r"different run \(differs in sparsity.mode \('srste' -> 'fixed'\)\)"
    ):
        train_mod.train(config)


# --- the CLI: one-line errors, exit status 2 -------------------------------------------------


def _cli_error(capsys, argv: list[str]) -> str:
    status = train_mod.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _base(tmp_path: Path, fmnist_data: str) -> list[str]:
    return [
        "--model",
        "tiny-dit",
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "1",
        "--preview",
        "0",
        "--data",
        fmnist_data,
    ]


def test_cli_unknown_preset(capsys, tmp_path):
    line = _cli_error(capsys, ["--model", "nope", "--out", str(tmp_path / "run")])
    assert "unknown preset 'nope'" in line and "tiny-dit" in line and "fmnist-dit" in line


def test_cli_missing_init(capsys, tmp_path, fmnist_data):
    missing = tmp_path / "no-such-checkpoint"
    line = _cli_error(capsys, _base(tmp_path, fmnist_data) + ["--sparsity", "srste", "--init", str(missing)])
    assert str(missing) in line and "does not exist" in line
    assert not (tmp_path / "run").exists()


def _copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_cli_corrupt_weights_hash_mismatch(capsys, tmp_path, fmnist_data, dense_ckpt):
    bad = _copy_ckpt(dense_ckpt, tmp_path / "bad")
    (bad / WEIGHTS).write_bytes(b"\x00garbage" * 100)
    line = _cli_error(capsys, _base(tmp_path, fmnist_data) + ["--sparsity", "srste", "--init", str(bad)])
    assert "does not match the hash" in line and WEIGHTS in line


def test_cli_corrupt_weights_with_matching_hash(capsys, tmp_path, fmnist_data, dense_ckpt):
    bad = _copy_ckpt(dense_ckpt, tmp_path / "bad")
    (bad / WEIGHTS).write_bytes(b"\x00garbage" * 100)
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["weights_sha256"] = sha256_file(bad / WEIGHTS)
    (bad / MANIFEST).write_text(json.dumps(seal(manifest)))
    line = _cli_error(capsys, _base(tmp_path, fmnist_data) + ["--sparsity", "srste", "--init", str(bad)])
    assert "is corrupt" in line and WEIGHTS in line


def test_cli_corrupt_manifest(capsys, tmp_path, fmnist_data, dense_ckpt):
    bad = _copy_ckpt(dense_ckpt, tmp_path / "bad")
    (bad / MANIFEST).write_text("{not json")
    line = _cli_error(capsys, _base(tmp_path, fmnist_data) + ["--sparsity", "srste", "--init", str(bad)])
    assert "manifest" in line and "corrupt" in line


def test_cli_sparse_init_refused(capsys, tmp_path, fmnist_data, sparse_run):
    line = _cli_error(capsys, _base(tmp_path, fmnist_data) + ["--sparsity", "srste", "--init", str(sparse_run["ckpt"])])
    assert "sparse checkpoint" in line


def test_cli_layer_pattern_matching_nothing(capsys, tmp_path, fmnist_data):
    line = _cli_error(capsys, _base(tmp_path, fmnist_data) + ["--sparsity", "srste", "--include", "nope*"])
    assert "nope*" in line and "match no" in line


def test_cli_data_folder_without_images(capsys, tmp_path):
    empty = tmp_path / "empty"
    (empty / "class0").mkdir(parents=True)
    (empty / "class0" / "notes.txt").write_text("not an image")
    line = _cli_error(
        capsys,
        ["--model", "tiny-dit", "--out", str(tmp_path / "run"), "--steps", "1", "--preview", "0", "--data", str(empty)],
    )
    assert str(empty) in line and "no images" in line


def test_cli_kd_weight_without_init(capsys, tmp_path, fmnist_data):
    line = _cli_error(capsys, _base(tmp_path, fmnist_data) + ["--sparsity", "srste", "--kd-weight", "0.1"])
    assert "--kd-weight" in line and "--init" in line


def test_ema_warmup_forgets_random_init():
    # A from-scratch run must not keep a visible share of the random init in its EMA weights.
    keep = 1.0
    for step in range(2000):
        keep *= train_mod.ema_decay_at(0.999, step)
    assert keep < 1e-3
    assert train_mod.ema_decay_at(0.999, 10**6) == 0.999


def test_cli_distils_block_outputs_by_default_when_sparse_from_dense_weights(tmp_path, dense_ckpt):
    from sparse_deploy.settings import DEFAULT_KD_FEATURES, DEFAULT_KD_WEIGHT
    from sparse_deploy.train_cli import build_parser, config_from_args

    def config(*flags: str) -> train_mod.TrainConfig:
        return config_from_args(
            build_parser().parse_args(["--model", "tiny-dit", "--out", str(tmp_path / "r"), *flags])
        )

    default = config("--sparsity", "srste", "--init", str(dense_ckpt))
    assert (default.kd_weight, default.kd_features) == (DEFAULT_KD_WEIGHT, DEFAULT_KD_FEATURES) == (0.1, 0.5)
    paper = config("--sparsity", "srste", "--init", str(dense_ckpt), "--kd-features", "0")  # SparseDM exactly
    assert (paper.kd_weight, paper.kd_features) == (0.1, 0.0)
    dense = config("--init", str(dense_ckpt))  # dense fine-tuning: nothing to distil
    assert (dense.kd_weight, dense.kd_features) == (0.0, 0.0)
    scratch = config("--sparsity", "srste")  # no teacher
    assert (scratch.kd_weight, scratch.kd_features) == (0.0, 0.0)
