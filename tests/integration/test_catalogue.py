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

from sparse_deploy.checkpoint import LEGACY_TRAINING_STATE, MANIFEST, TRAINING_STATE
from sparse_deploy.learn.cli import main as train_main
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


def planted_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when unpickled: proof that a loader ran foreign code."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Payload())


# --- train: run identity, no pickle, flags ----------------------------------------------------------


def _train_argv(out: Path, data: str, *extra: str) -> list[str]:
    return [
        "--model",
        "tiny-dit",
        "--out",
        str(out),
        "--steps",
        "2",
        "--checkpoint-every",
        "1",
        "--preview",
        "0",
        "--batch-size",
        "4",
        "--data",
        data,
        "--device",
        "cpu",
        *extra,
    ]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fmnist_data) -> Path:
    out = tmp_path_factory.mktemp("cat") / "dense"
    assert train_main(_train_argv(out, fmnist_data)) == 0
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
    line = refused(capsys, train_main, _train_argv(finished_run, fmnist_data, *extra), finished_run)
    assert "different run" in line and expected in line
    assert "another --out" in line and "delete" in line
    assert not (finished_run / "coverage.json").exists()


def test_the_same_config_is_a_no_op_on_a_finished_run(caplog, finished_run, fmnist_data):
    before = snapshot(finished_run)
    caplog.set_level("INFO")
    assert train_main(_train_argv(finished_run, fmnist_data, "--checkpoint-every", "5")) == 0  # not identity
    assert "already complete" in caplog.text
    assert snapshot(finished_run) == before


def test_a_planted_pickle_is_never_loaded(capsys, tmp_path, finished_run, fmnist_data):
    out = tmp_path / "planted"
    shutil.copytree(finished_run, out)
    marker = tmp_path / "pwned"

    (out / "checkpoint" / TRAINING_STATE).unlink()
    (out / "checkpoint" / LEGACY_TRAINING_STATE).write_bytes(planted_pickle(marker))
    line = refused(capsys, train_main, _train_argv(out, fmnist_data), out)
    assert "pickled training state" in line
    assert not marker.exists()


def test_a_pickle_under_the_state_name_is_refused(capsys, tmp_path, finished_run, fmnist_data):
    out = tmp_path / "planted2"
    shutil.copytree(finished_run, out)
    marker = tmp_path / "pwned"

    state = out / "checkpoint" / TRAINING_STATE
    state.write_bytes(planted_pickle(marker))
    line = refused(capsys, train_main, _train_argv(out, fmnist_data), out)
    assert TRAINING_STATE in line and "hash" in line
    manifest = json.loads((out / "checkpoint" / MANIFEST).read_text())  # even with a matching hash: unreadable, not run
    manifest["training_state_sha256"] = hashlib.sha256(state.read_bytes()).hexdigest()
    (out / "checkpoint" / MANIFEST).write_text(json.dumps(seal(manifest)))
    line = refused(capsys, train_main, _train_argv(out, fmnist_data), out)
    assert "unreadable" in line
    assert not marker.exists()


def test_a_torn_metrics_line_is_tolerated_on_resume(tmp_path, finished_run, fmnist_data):
    out = tmp_path / "torn"
    shutil.copytree(finished_run, out)
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')
    assert train_main(_train_argv(out, fmnist_data)) == 0
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
    line = refused(capsys, train_main, _train_argv(out, fmnist_data, *extra), tmp_path)
    assert expected in line
    assert not out.exists()


def test_kd_weight_nan_is_refused(capsys, tmp_path, finished_run, fmnist_data):
    line = refused(
        capsys,
        train_main,
        _train_argv(
            tmp_path / "run",
            fmnist_data,
            "--sparsity",
            "srste",
            "--init",
            str(finished_run / "checkpoint"),
            "--kd-weight",
            "nan",
        ),
        tmp_path,
    )
    assert "--kd-weight" in line


def test_out_that_is_a_file_is_refused(capsys, tmp_path, fmnist_data):
    target = tmp_path / "file"
    target.write_text("keep me")
    line = refused(capsys, train_main, _train_argv(target, fmnist_data), tmp_path)
    assert "--out" in line and "is a file" in line
    line = refused(capsys, train_main, _train_argv(target / "below", fmnist_data), tmp_path)
    assert "--out" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores write permissions")
def test_out_without_write_permission_is_refused(capsys, tmp_path, fmnist_data):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = refused(capsys, train_main, _train_argv(locked / "run", fmnist_data), tmp_path)
        assert "not writable" in line
    finally:
        locked.chmod(0o700)


def test_disk_full_during_checkpointing_is_one_line_and_keeps_the_last_checkpoint(
    capsys, tmp_path, finished_run, fmnist_data, monkeypatch
):
    import errno

    out = tmp_path / "full"
    shutil.copytree(finished_run, out)
    ckpt_before = snapshot(out / "checkpoint")

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "training_state.safetensors")

    from sparse_deploy import checkpoint, statefile

    monkeypatch.setattr(checkpoint, "save_file", full)  # the weights and the training state: both land on a full disk
    monkeypatch.setattr(statefile, "save_file", full)
    line = refused(
        capsys, train_main, _train_argv(out, fmnist_data, "--steps", "1", "--out", str(tmp_path / "fresh")), out
    )
    assert "No space left" in line and "free some space" in line
    assert snapshot(out / "checkpoint") == ckpt_before
    assert not (tmp_path / "fresh" / "checkpoint").exists()
    assert not [p for p in (tmp_path / "fresh").glob(".checkpoint.*")]


# --- sampling, manifests, FID, bench, report, export, Triton ----------------------------------------


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, Path]:
    """Dense and sparse fp32 ONNX Runtime engines of a random tiny-dit (batch profile 1..2), plus its checkpoint."""
    from sparse_deploy.build import BuildConfig, build_engines
    from sparse_deploy.checkpoint import save_checkpoint
    from sparse_deploy.export import ExportConfig
    from sparse_deploy.models import build_model
    from sparse_deploy.presets import get_preset

    tmp = tmp_path_factory.mktemp("cat-engines")
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp / "ckpt", build_model(get_preset("tiny-dit"), announce_random=False), sparsity=None)
    config = BuildConfig(
        export=ExportConfig(checkpoint=ckpt, out=tmp / "export", precisions=("fp32",), max_batch=2),
        backend="onnxruntime",
        engine_dir=tmp / "tiny-dit",
    )
    return {**{e.kind: e.path for e in build_engines(config).engines}, "checkpoint": ckpt}


BAD_RUN_FLAGS = {
    "--guidance nan": (["--guidance", "nan"], "--guidance"),
    "--guidance -1": (["--guidance", "-1"], "--guidance"),
    "--sample-steps 5000": (["--sample-steps", "5000"], "--sample-steps"),
    "--steps 0 (its old spelling)": (["--steps", "0"], "--sample-steps"),
    "--labels ,": (["--labels", ","], "--labels"),
    "--labels 42": (["--labels", "42"], "outside"),
    "--num 0": (["--num", "0"], "--num"),
    "--batch 4 (outside the profile)": (["--num", "4", "--batch", "4"], "profile"),
    "--device tpu": (["--device", "tpu"], "--device"),
    "--scheduler euler": (["--scheduler", "euler"], "scheduler"),
}


@pytest.mark.parametrize("name", list(BAD_RUN_FLAGS))
def test_bad_run_flags_write_nothing(capsys, tmp_path, engines, name):
    from sparse_deploy import run as rn

    extra, expected = BAD_RUN_FLAGS[name]
    line = refused(
        capsys,
        rn.main,
        ["--engine", str(engines["dense"]), "--out", str(tmp_path / "s"), "--num", "2", "--steps", "2", *extra],
        tmp_path,
        engines["dense"].parent,
    )
    assert expected in line
    assert not list(tmp_path.rglob("*.png"))


def test_run_out_that_is_a_file(capsys, tmp_path, engines):
    from sparse_deploy import run as rn

    target = tmp_path / "file"
    target.write_text("keep")
    line = refused(
        capsys,
        rn.main,
        ["--engine", str(engines["dense"]), "--out", str(target), "--num", "1", "--steps", "1"],
        tmp_path,
    )
    assert "--out" in line and "is a file" in line


def test_a_reused_out_keeps_no_stale_images_and_fid_reads_only_the_run(tmp_path, engines):
    from sparse_deploy import fid
    from sparse_deploy import run as rn

    out = tmp_path / "s"
    base = ["--engine", str(engines["dense"]), "--out", str(out), "--steps", "1", "--batch", "2"]
    assert rn.main(base + ["--num", "4"]) == 0
    assert rn.main(base + ["--num", "2"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["grid.png", "sample-0000.png", "sample-0001.png"]
    assert json.loads((out / "run.json").read_text())["images"] == ["sample-0000.png", "sample-0001.png"]
    assert fid.source_identity(out)["num"] == 2  # grid.png is not a sample
    assert len(fid.load_images(out)) == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary litter


def _edit_manifest(src: Path, dst_dir: Path, change, reseal: bool) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    engine = dst_dir / src.name
    shutil.copy(src, engine)
    manifest = json.loads(src.with_suffix(".json").read_text())
    change(manifest)
    engine.with_suffix(".json").write_text(json.dumps(seal(manifest) if reseal else manifest))
    return engine


MANIFEST_EDITS = {
    "precision, unsealed": (lambda m: m.update(precision="fp16"), False, "does not match its own hash"),
    "preset, resealed": (lambda m: m.update(preset="tiny-unet"), True, "contract is for tiny-dit"),
    "precision, resealed": (lambda m: m.update(precision="fp16"), True, "contract is for tiny-dit/fp32"),
    "profile, unsealed": (lambda m: m["contract"]["profile"].update(max=9), False, "does not match its own hash"),
    "dtype, resealed": (
        lambda m: m["contract"]["inputs"][0].update(dtype="float16"),
        True,
        "not the one preset 'tiny-dit'",
    ),
    "I/O name, resealed": (
        lambda m: m["contract"]["inputs"][1].update(name="t"),
        True,
        "not the one preset 'tiny-dit'",
    ),
    "missing contract, resealed": (lambda m: m.pop("contract"), True, "lacks 'contract'"),
    "missing preset, resealed": (lambda m: m.pop("preset"), True, "lacks 'preset'"),
}


@pytest.mark.parametrize("name", list(MANIFEST_EDITS))
def test_edited_engine_manifests_are_refused_with_the_right_rebuild_command(capsys, tmp_path, engines, name):
    from sparse_deploy import run as rn

    change, reseal, expected = MANIFEST_EDITS[name]
    engine = _edit_manifest(engines["dense"], tmp_path / "1", change, reseal)  # a Triton-style version folder
    line = refused(
        capsys,
        rn.main,
        ["--engine", str(engine), "--out", str(tmp_path / "s"), "--num", "2", "--batch", "2", "--steps", "1"],
        tmp_path,
    )
    assert expected in line
    assert "MODEL=1" not in line and "MODEL=tiny-dit" in line  # the engine's real preset, not its folder


def test_a_profile_edited_to_a_larger_batch_is_refused_by_the_session_or_the_contract(capsys, tmp_path, engines):
    from sparse_deploy import run as rn

    engine = _edit_manifest(
        engines["dense"],
        tmp_path / "tiny-dit",
        lambda m: m["contract"]["outputs"][0].update(shape=[-1, 2, 16, 16]),
        True,
    )
    line = refused(
        capsys, rn.main, ["--engine", str(engine), "--out", str(tmp_path / "s"), "--num", "1", "--steps", "1"], tmp_path
    )
    assert "MODEL=tiny-dit" in line


def test_an_edited_checkpoint_manifest_is_refused(capsys, tmp_path, engines):
    from sparse_deploy import run as rn

    ckpt = tmp_path / "ckpt"
    shutil.copytree(engines["checkpoint"], ckpt)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["preset"] = "tiny-unet"
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    line = refused(
        capsys, rn.main, ["--engine", str(ckpt), "--out", str(tmp_path / "s"), "--num", "1", "--steps", "1"], tmp_path
    )
    assert "does not match its own hash" in line


def test_fid_bad_sources(capsys, tmp_path):
    import numpy as np

    from sparse_deploy.fid import cli as fid_cli

    good = tmp_path / "good"
    good.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(good / f"{i}.png")
    garbage = tmp_path / "garbage"
    shutil.copytree(good, garbage)
    (garbage / "3.png").write_bytes(b"not a png at all")
    line = refused(capsys, fid_cli.main, [str(garbage), str(good), "--no-cache", "--quiet"], tmp_path)
    assert "3.png" in line and "not a readable image" in line
    np.savez(tmp_path / "feats.npz", features=np.zeros((4, 2048), np.float32))
    line = refused(capsys, fid_cli.main, [str(tmp_path / "feats.npz"), str(good), "--no-cache", "--quiet"], tmp_path)
    assert "feats.npz" in line
    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    line = refused(capsys, fid_cli.main, [str(tmp_path / "objects.npz"), str(good), "--no-cache", "--quiet"], tmp_path)
    assert "objects.npz" in line
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"images": ["sample-0000.png"]}))
    line = refused(capsys, fid_cli.main, [str(tmp_path / "run"), str(good), "--no-cache", "--quiet"], tmp_path)
    assert "missing" in line
    line = refused(capsys, fid_cli.main, [str(good), str(good), "--json", str(good), "--no-cache", "--quiet"], tmp_path)
    assert "--json" in line and "is a folder" in line
    line = refused(
        capsys,
        fid_cli.main,
        [str(good), str(good), "--json", str(good / "0.png" / "r.json"), "--no-cache", "--quiet"],
        tmp_path,
    )
    assert "--json" in line
    line = refused(capsys, fid_cli.main, [str(good), str(good), "--cache-dir", str(good / "0.png")], tmp_path)
    assert "--cache-dir" in line


def test_a_truncated_fid_cache_is_recomputed_with_a_warning(tmp_path, monkeypatch, caplog):
    import numpy as np

    from sparse_deploy import fid

    net = tmp_path / "net.pt"
    net.write_bytes(b"w")
    monkeypatch.setattr(fid, "inception_path", lambda: net)
    monkeypatch.setattr(
        fid,
        "features_from_images",
        lambda images, **_: np.random.default_rng(0).standard_normal((len(images), 4)).astype(np.float32),
    )
    src = tmp_path / "s.npz"
    np.savez(src, images=np.zeros((3, 4, 4), np.uint8))
    first = fid.reference_stats(src, cache_dir=tmp_path / "c", progress=False)
    first.cache_path.write_bytes(first.cache_path.read_bytes()[:100])  # a torn zip
    again = fid.reference_stats(src, cache_dir=tmp_path / "c", progress=False)
    assert not again.cached and "recomputing" in caplog.text
    assert fid.reference_stats(src, cache_dir=tmp_path / "c", progress=False).cached


def test_bench_latency_refusals(capsys, tmp_path, engines):
    from sparse_deploy import bench

    out = tmp_path / "report"
    base = ["latency", "--repeats", "1", "--warmup", "0", "--e2e-repeats", "0", "--no-memory", "--out", str(out)]
    line = refused(
        capsys,
        bench.main,
        ["--device", "cpu", *base, "--engines", str(engines["dense"]), str(engines["dense"])],
        tmp_path,
    )
    assert "twice" in line
    copy = tmp_path / "copy" / engines["dense"].name
    copy.parent.mkdir()
    shutil.copy(engines["dense"], copy)
    shutil.copy(engines["dense"].with_suffix(".json"), copy.with_suffix(".json"))
    line = refused(
        capsys, bench.main, ["--device", "cpu", *base, "--engines", str(engines["dense"]), str(copy)], tmp_path
    )
    assert "same engine" in line
    line = refused(
        capsys,
        bench.main,
        ["--device", "cpu", *base, "--batches", "16,32", "--engines", str(engines["dense"]), str(engines["sparse"])],
        tmp_path,
    )
    assert "no batch" in line
    line = refused(
        capsys,
        bench.main,
        ["--device", "tpu", *base, "--engines", str(engines["dense"]), str(engines["sparse"])],
        tmp_path,
    )
    assert "--device" in line
    assert not out.exists()


def test_report_refuses_results_of_the_wrong_shape(capsys, tmp_path):
    from sparse_deploy import bench

    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "latency-x.json").write_text(json.dumps([1, 2, 3]))
    line = refused(capsys, bench.main, ["report", "--out", str(folder)], folder)
    assert "latency-x.json" in line and "not a latency result" in line
    (folder / "latency-x.json").write_text(json.dumps({"kind": "latency", "batches": "nope"}))
    line = refused(capsys, bench.main, ["report", "--out", str(folder)], folder)
    assert "shape" in line


def test_export_refusals(capsys, tmp_path, engines):
    from sparse_deploy import export as ex
    from sparse_deploy.checkpoint import save_checkpoint
    from sparse_deploy.models import build_model
    from sparse_deploy.presets import get_preset
    from sparse_deploy.sparsify import SparsityConfig, masked_modules, sparsify_

    line = refused(
        capsys, ex.main, ["--model", "tiny-dit", "--max-batch", "1000000000", "--out", str(tmp_path / "e")], tmp_path
    )
    assert "--max-batch" in line
    target = tmp_path / "file"
    target.write_text("x")
    line = refused(capsys, ex.main, ["--model", "tiny-dit", "--out", str(target)], tmp_path)
    assert "--out" in line
    model = build_model(get_preset("tiny-dit"), announce_random=False)
    config = SparsityConfig(mode="fixed")
    sparsify_(model, config)
    for module in masked_modules(model).values():
        module.weight_mask.fill_(True)  # damaged masks: nothing pruned
    ckpt = save_checkpoint(tmp_path / "bad-masks", model, sparsity=config)
    line = refused(
        capsys,
        ex.main,
        ["--checkpoint", str(ckpt), "--kinds", "sparse", "--precision", "fp32", "--out", str(tmp_path / "e")],
        tmp_path,
    )
    assert "not 2:4 sparse" in line


def test_triton_refusals(capsys, tmp_path, engines):
    import socket

    from sparse_deploy.triton import cli as generate
    from sparse_deploy.triton import server

    empty = tmp_path / "repo"
    empty.mkdir()
    line = refused(capsys, server.main, ["--repository", str(empty), "--http-port", "0", "--grpc-port", "0"], tmp_path)
    assert "holds no models" in line
    (empty / "m").mkdir()
    (empty / "m" / "config.pbtxt").write_text('name: "m"\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = refused(
            capsys, server.main, ["--repository", str(empty), "--http-port", str(port), "--grpc-port", "0"], tmp_path
        )
    assert f"port {port}" in line and "already in use" in line
    line = refused(capsys, server.main, ["--repository", str(empty), "--http-port", "70000"], tmp_path)
    assert "--http-port" in line
    target = tmp_path / "file"
    target.write_text("x")
    line = refused(capsys, generate.main, ["--engine", str(engines["dense"]), "--out", str(target)], tmp_path)
    assert "--out" in line


def test_a_pickled_diffusers_folder_is_never_loaded(capsys, tmp_path, fmnist_data):
    from sparse_deploy.models import build_model
    from sparse_deploy.presets import get_preset

    folder = tmp_path / "weights"
    build_model(get_preset("tiny-dit"), announce_random=False).net.save_pretrained(str(folder))
    marker = tmp_path / "pwned"

    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(planted_pickle(marker))
    line = refused(capsys, train_main, _train_argv(tmp_path / "run", fmnist_data, "--weights", str(folder)), tmp_path)
    assert "could not load diffusers weights" in line
    assert not marker.exists()
