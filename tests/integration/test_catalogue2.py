"""The second bad-input catalogue: nothing lost, nothing faked.

Every case exits 2 with one ``error:`` line and no traceback, and leaves what was there
byte-identical (tiny presets, in-process CLI calls, as in test_catalogue.py). The classes:

1. output folders are owned: a stage writes only into a new or empty folder or an earlier output of
   its own kind, never over shipped weights, a run or anyone's files; one writer at a time;
   symlinks are followed;
2. input manifests are sealed and checked against their files and config (shipped weights, engines);
3. what a killed process left is removed by the next run, and a half-written sample folder is
   refused by its readers until it is finished;
4. bounded inputs: seeds, counts, idx headers, model configs, image sizes, Triton's default steps;
   files get a plain file's mode; samples are written batch by batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from sparse_deploy import run as rn
from sparse_deploy import shipped
from sparse_deploy import train as train_mod
from sparse_deploy.provenance import MANIFEST_SEAL, seal

ROOT = Path(__file__).resolve().parents[2]

# --- helpers (as in test_catalogue.py) ------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256); folders and links as markers."""
    out = {}
    if root.is_symlink():
        return {".": f"<link {os.readlink(root)}>"}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return out


def refused(capsys, main, argv: list[str], *watch: Path) -> str:
    """Run ``main(argv)``; assert exit 2, one ``error:`` line, no traceback, ``watch`` untouched."""
    before = {str(w): snapshot(w) for w in watch}
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert {str(w): snapshot(w) for w in watch} == before, "a refused command changed artifacts"
    return lines[0]


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


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fmnist_data) -> Path:
    """A finished 2-step tiny-dit training run."""
    out = tmp_path_factory.mktemp("cat2") / "dense"
    assert train_mod.main(_train_argv(out, fmnist_data)) == 0
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory, run_dir) -> Path:
    """The run packed as shipped weights (a diffusers folder + sealed MANIFEST.json)."""
    return shipped.pack_weights(run_dir / "checkpoint", tmp_path_factory.mktemp("cat2-w") / "tiny-dit")


@pytest.fixture(scope="module")
def engine(tmp_path_factory, run_dir) -> Path:
    """The run's dense fp32 ONNX Runtime engine (batch profile 1..2), beside a one-shot sparse one."""
    from sparse_deploy.build import BuildConfig, build_engines
    from sparse_deploy.export import ExportConfig

    tmp = tmp_path_factory.mktemp("cat2-e")
    config = BuildConfig(
        export=ExportConfig(checkpoint=run_dir / "checkpoint", out=tmp / "export", precisions=("fp32",), max_batch=2),
        backend="onnxruntime",
        engine_dir=tmp / "engines",
    )
    return next(e.path for e in build_engines(config).engines if e.kind == "dense")


def _foreign(folder: Path) -> Path:
    """A user's folder: notes and photos sparse-deploy did not write."""
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "photo.png").write_bytes(b"\x89PNG not really")
    return folder


# --- 1. output folders are owned ------------------------------------------------------------------


def test_shipped_checkpoint_never_replaces_the_weights_folder(capsys, weights):
    line = refused(capsys, shipped.main, ["checkpoint", str(weights), "--out", str(weights)], weights)
    assert "--out" in line and "holds a shipped weights folder" in line and "refusing to replace" in line


def test_pack_never_replaces_a_training_run(capsys, run_dir):
    line = refused(
        capsys, shipped.main, ["pack", "--checkpoint", str(run_dir / "checkpoint"), "--out", str(run_dir)], run_dir
    )
    assert "holds a training run" in line


def test_shipped_checkpoint_never_replaces_a_runs_checkpoint(capsys, weights, run_dir):
    line = refused(capsys, shipped.main, ["checkpoint", str(weights), "--out", str(run_dir / "checkpoint")], run_dir)
    assert "training run's checkpoint" in line


def _stages(tmp: Path, engine: Path, run_dir: Path, weights: Path, fmnist_data: str):
    from sparse_deploy import build as bd
    from sparse_deploy.export import cli as ex
    from sparse_deploy.triton import __main__ as triton

    return {
        "train --out": lambda out: (train_mod.main, _train_argv(out, fmnist_data)),
        "run --out": lambda out: (rn.main, ["--engine", str(engine), "--out", str(out), "--num", "1", "--steps", "1"]),
        "export --out": lambda out: (
            ex.main,
            ["--model", "tiny-dit", "--precision", "fp32", "--kinds", "dense", "--out", str(out)],
        ),
        "build --engine-dir": lambda out: (
            bd.main,
            [
                "--model",
                "tiny-dit",
                "--precision",
                "fp32",
                "--kinds",
                "dense",
                "--backend",
                "onnxruntime",
                "--export-dir",
                str(tmp / "never-exported"),
                "--engine-dir",
                str(out),
            ],
        ),
        "triton --out": lambda out: (triton.main, ["--engine", str(engine), "--out", str(out)]),
        "shipped pack --out": lambda out: (
            shipped.main,
            ["pack", "--checkpoint", str(run_dir / "checkpoint"), "--out", str(out)],
        ),
        "shipped checkpoint --out": lambda out: (shipped.main, ["checkpoint", str(weights), "--out", str(out)]),
    }


STAGES = [
    "train --out",
    "run --out",
    "export --out",
    "build --engine-dir",
    "triton --out",
    "shipped pack --out",
    "shipped checkpoint --out",
]


@pytest.mark.parametrize("stage", STAGES)
def test_an_unrelated_folder_is_refused_before_work(capsys, tmp_path, engine, run_dir, weights, fmnist_data, stage):
    folder = _foreign(tmp_path / "mine")
    main, argv = _stages(tmp_path, engine, run_dir, weights, fmnist_data)[stage](folder)
    line = refused(capsys, main, argv, folder)
    assert (
        f"'{folder}'" in line and "did not write" in line and "'notes.txt'" in line and "move its contents away" in line
    )
    assert not (tmp_path / "never-exported").exists()  # build refused before exporting anything


@pytest.mark.parametrize("stage", ["run --out", "export --out", "triton --out", "shipped checkpoint --out"])
def test_another_kind_of_output_is_refused(capsys, tmp_path, engine, run_dir, weights, fmnist_data, stage):
    main, argv = _stages(tmp_path, engine, run_dir, weights, fmnist_data)[stage](run_dir)
    assert "holds a training run" in refused(capsys, main, argv, run_dir)


def test_run_never_touches_a_users_images(capsys, tmp_path, engine):
    mine = tmp_path / "pictures"
    mine.mkdir()
    (mine / "grid.png").write_bytes(b"my grid")
    (mine / "sample-0042.png").write_bytes(b"my favourite sample")
    line = refused(
        capsys,
        rn.main,
        ["--engine", str(engine), "--out", str(mine), "--num", "2", "--batch", "2", "--steps", "1"],
        mine,
    )
    assert "'grid.png'" in line and "'sample-0042.png'" in line


def test_an_earlier_output_of_the_same_kind_is_written_again(tmp_path, weights):
    """The same command twice: the second run replaces the first's output (its own kind), nothing else."""
    out = tmp_path / "dense"
    assert shipped.main(["checkpoint", str(weights), "--out", str(out)]) == 0
    assert shipped.main(["checkpoint", str(weights), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]  # no lock file, no temporaries


def test_out_through_a_symlink_writes_the_target(tmp_path, engine, weights):
    target = tmp_path / "real-samples"
    link = tmp_path / "samples"
    link.symlink_to(target, target_is_directory=True)
    target.mkdir()
    assert rn.main(["--engine", str(engine), "--out", str(link), "--num", "2", "--batch", "2", "--steps", "1"]) == 0
    assert link.is_symlink() and (target / "run.json").is_file() and (target / "sample-0001.png").is_file()
    ckpt = tmp_path / "real-ckpt"
    assert shipped.main(["checkpoint", str(weights), "--out", str(ckpt)]) == 0
    (tmp_path / "ckpt").symlink_to(ckpt, target_is_directory=True)
    assert shipped.main(["checkpoint", str(weights), "--out", str(tmp_path / "ckpt")]) == 0  # replaced through the link
    assert (tmp_path / "ckpt").is_symlink() and (ckpt / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"pid %d: the other writer\n" % os.getpid())
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("stage", ["run --out", "export --out", "shipped checkpoint --out", "train --out"])
def test_a_folder_another_process_writes_is_refused(capsys, tmp_path, engine, run_dir, weights, fmnist_data, stage):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / ".busy.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        main, argv = _stages(tmp_path, engine, run_dir, weights, fmnist_data)[stage](out)
        line = refused(capsys, main, argv, tmp_path)
        assert "is being written by another process" in line and f"pid {holder.pid}" in line and "wait for it" in line
    finally:
        holder.stdin.close()
        holder.wait()
    assert not out.exists()


def test_two_trainings_into_one_folder(capsys, tmp_path, fmnist_data):
    """A real second training while the first runs: refused, and the first finishes alone."""
    import time

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sparse_deploy.train",
            *_train_argv(out, fmnist_data, "--steps", "400", "--checkpoint-every", "50"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        while first.poll() is None and not (tmp_path / ".run.lock").exists():
            time.sleep(0.02)
        assert first.poll() is None, first.stderr.read()
        line = refused(
            capsys, train_mod.main, _train_argv(out, fmnist_data, "--steps", "400", "--checkpoint-every", "50")
        )
        assert "is being written by another process" in line and f"pid {first.pid}" in line
    finally:
        first.kill()
        first.wait()


# --- 2. input manifests are sealed and checked against their files and config ------------------------


def _edited_weights(weights: Path, dst: Path, change, reseal: bool) -> Path:
    shutil.copytree(weights, dst)
    manifest = json.loads((dst / "MANIFEST.json").read_text())
    change(manifest, dst)
    (dst / "MANIFEST.json").write_text(json.dumps(seal(manifest) if reseal else manifest, indent=2))
    return dst


def _zero_weights(manifest: dict, folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "diffusion_pytorch_model.safetensors"
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(path)).items()}, str(path))
    manifest["files"] = {}


def _other_preset(manifest: dict, folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["num_layers"] += 1  # config.json no longer is the preset's model
    (folder / "config.json").write_text(json.dumps(config))
    manifest["files"]["config.json"] = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()


WEIGHTS_EDITS = {
    "an edited FID, not resealed": (lambda m, _: m.update(fid={"value": 0.5}), False, "does not match its own hash"),
    "the seal removed": (lambda m, _: m.pop(MANIFEST_SEAL), False, "carries no seal"),
    "an empty file list, zeroed weights, resealed": (_zero_weights, True, "lists no files"),
    "a file list without the weights, resealed": (
        lambda m, _: m["files"].pop("diffusion_pytorch_model.safetensors"),
        True,
        "does not list",
    ),
    "a file outside the folder, resealed": (
        lambda m, _: m["files"].update({"../x": "0" * 64}),
        True,
        "not a file of the folder",
    ),
    "a preset config.json contradicts, resealed": (_other_preset, True, "contradicts it (num_layers"),
    "an unknown preset, resealed": (lambda m, _: m.update(preset="nope"), True, "not a built-in one"),
}


@pytest.mark.parametrize("name", list(WEIGHTS_EDITS))
def test_tampered_or_inconsistent_shipped_manifests_are_refused(capsys, tmp_path, weights, name):
    change, reseal, expected = WEIGHTS_EDITS[name]
    folder = _edited_weights(weights, tmp_path / "w", change, reseal)
    line = refused(capsys, shipped.main, ["checkpoint", str(folder), "--out", str(tmp_path / "dense")], tmp_path)
    assert expected in line and "git checkout" in line
    assert not (tmp_path / "dense").exists()


def test_seal_weights_seals_only_what_matches(capsys, tmp_path, weights):
    folder = _edited_weights(weights, tmp_path / "w", lambda m, _: m.pop(MANIFEST_SEAL), False)
    assert shipped.main(["seal", str(folder)]) == 0
    assert json.loads((folder / "MANIFEST.json").read_text()) == json.loads((weights / "MANIFEST.json").read_text())
    bad = _edited_weights(weights, tmp_path / "bad", _zero_weights, False)
    assert "lists no files" in refused(capsys, shipped.main, ["seal", str(bad)], bad)


def test_the_shipped_weights_in_the_repository_are_sealed_and_consistent():
    folder = ROOT / "weights" / "fmnist-dit"
    if not (folder / "MANIFEST.json").is_file():
        pytest.skip("weights/fmnist-dit is not in this checkout")
    assert shipped.verify_weights(folder)[MANIFEST_SEAL]


def test_an_engine_manifest_without_its_seal_is_refused(capsys, tmp_path, engine):
    copy = tmp_path / "engines" / engine.name
    copy.parent.mkdir()
    shutil.copy(engine, copy)
    manifest = json.loads(engine.with_suffix(".json").read_text())
    manifest.pop(MANIFEST_SEAL)
    copy.with_suffix(".json").write_text(json.dumps(manifest))
    line = refused(
        capsys, rn.main, ["--engine", str(copy), "--out", str(tmp_path / "s"), "--num", "1", "--steps", "1"], tmp_path
    )
    assert "carries no seal" in line and "rebuild" in line


def test_a_json_result_never_overwrites_someones_file(capsys, tmp_path):
    import numpy as np
    from PIL import Image

    from sparse_deploy.fid import cli as fid_cli

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), i * 60, np.uint8)).save(images / f"{i}.png")
    mine = tmp_path / "results.json"
    mine.write_text('{"my": "own numbers"}')
    line = refused(
        capsys, fid_cli.main, [str(images), str(images), "--json", str(mine), "--no-cache", "--quiet"], tmp_path
    )
    assert "--json" in line and "did not write" in line


def test_summary_never_joins_one_runs_settings_with_another_runs_engines(capsys, tmp_path, engine, fmnist_data):
    from sparse_deploy import summary

    other = tmp_path / "other"
    assert train_mod.main(_train_argv(other, fmnist_data, "--steps", "1", "--seed", "3")) == 0
    line = refused(
        capsys,
        summary.main,
        ["--run", str(other), "--engines", str(engine.parent), "--num", "2", "--ref-num", "2"],
        engine.parent,
    )
    assert "was built from" in line and "not from the run's" in line and "--checkpoint" in line


# --- 3. what killed processes leave, and half-written sample folders ---------------------------------


def test_temporaries_of_dead_processes_are_removed_by_the_next_run(tmp_path, engine, weights):
    dead, alive = _dead_pid(), os.getppid()
    samples = tmp_path / "s"
    assert rn.main(["--engine", str(engine), "--out", str(samples), "--num", "1", "--steps", "1"]) == 0
    litter = [samples / f".sample-0007.png.tmp-{dead}", tmp_path / f".s.old-{dead}", tmp_path / f".dense.tmp-{dead}"]
    for path in litter:
        path.mkdir() if path.name.startswith((".s.", ".dense")) else path.write_bytes(b"half a png")
    (tmp_path / f".dense.tmp-{dead}" / "model.safetensors").write_bytes(b"x" * 1000)
    mine = samples / f".grid.png.tmp-{alive}"  # a live process's (this test's parent's) temporary is never touched
    mine.write_bytes(b"in progress")
    assert rn.main(["--engine", str(engine), "--out", str(samples), "--num", "1", "--steps", "1"]) == 0
    assert shipped.main(["checkpoint", str(weights), "--out", str(tmp_path / "dense")]) == 0
    assert not any(p.exists() for p in litter) and mine.exists()


def test_a_killed_run_leaves_a_folder_that_readers_refuse_until_it_is_finished(capsys, tmp_path, engine, monkeypatch):
    """Killed in its second batch: the first batch's PNGs are on disk (written batch by batch), the record says
    incomplete, fid (and bench, through fid) refuses the folder, and the same command finishes it."""
    from sparse_deploy import fid, sampling
    from sparse_deploy.fid import cli as fid_cli

    out = tmp_path / "s"
    argv = ["--engine", str(engine), "--out", str(out), "--num", "6", "--batch", "2", "--steps", "1"]
    assert rn.main(argv) == 0
    real, calls = sampling.sample, []

    def killed_in_the_second_batch(*args, **kwargs):
        calls.append(kwargs["first"])
        if len(calls) == 2:
            assert (out / "sample-0000.png").is_file() and (out / "sample-0001.png").is_file()
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample", killed_in_the_second_batch)
    assert rn.main(argv + ["--seed", "5"]) == 130
    monkeypatch.setattr(sampling, "sample", real)
    record = json.loads((out / "run.json").read_text())
    assert record["complete"] is False and record["seed"] == 5
    line = refused(capsys, fid_cli.main, [str(out), str(out), "--no-cache", "--quiet"], out)
    assert "incomplete sample folder" in line and "--seed 5" in line
    with pytest.raises(Exception, match="incomplete sample folder"):
        fid.reference_stats(out, cache_dir=None, progress=False)  # what bench methods calls for its --reference
    assert rn.main(argv + ["--seed", "5"]) == 0
    assert json.loads((out / "run.json").read_text())["complete"] is True
    assert fid.source_identity(out)["num"] == 6


# --- 4. bounded inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--seed", str(2**64), "--seed must be between 0 and 2**64 - 1"),
        ("--seed", "-1", "--seed must be between 0"),
        ("--seed", "9" * 200, "(200 digits)"),
        ("--num", "1000000000", "--num must be between 1 and 1000000"),
        ("--batch", "100000", "--batch must be between 1 and 4096"),
    ],
)
def test_run_range_checks(capsys, tmp_path, engine, flag, value, expected):
    line = refused(
        capsys, rn.main, ["--engine", str(engine), "--out", str(tmp_path / "s"), "--steps", "1", flag, value], tmp_path
    )
    assert expected in line and len(line) < 300
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--seed", str(2**64 + 5)], "--seed must be between 0 and 2**64 - 1"),
        (["--batch-size", "1000000000"], "--batch-size must be between 1 and 65536"),
        (["--preview", "100000"], "--preview must be between 0 and 1024"),
    ],
)
def test_train_range_checks(capsys, tmp_path, fmnist_data, extra, expected):
    line = refused(capsys, train_mod.main, _train_argv(tmp_path / "run", fmnist_data, *extra), tmp_path)
    assert expected in line
    assert not (tmp_path / "run").exists()


def test_the_largest_seed_trains_and_samples(tmp_path, fmnist_data, engine):
    """2**64 - 1 is a seed like any other: training's per-step seeds fold into 64 bits."""
    assert train_mod.main(_train_argv(tmp_path / "run", fmnist_data, "--seed", str(2**64 - 1), "--steps", "1")) == 0
    assert (
        rn.main(
            [
                "--engine",
                str(engine),
                "--out",
                str(tmp_path / "s"),
                "--num",
                "1",
                "--steps",
                "1",
                "--seed",
                str(2**64 - 1),
            ]
        )
        == 0
    )


def test_export_seed_is_range_checked(capsys, tmp_path):
    from sparse_deploy.export import cli as ex

    line = refused(
        capsys, ex.main, ["--model", "tiny-dit", "--seed", str(2**70), "--out", str(tmp_path / "e")], tmp_path
    )
    assert "--seed" in line


@pytest.mark.parametrize("shape", [(2**31 - 1, 2**16, 2**16), (60000, 28, 28, 1, 1), (0xFFFFFFFF,)])
def test_idx_headers_declaring_absurd_sizes_are_refused_before_reading(capsys, tmp_path, fmnist_dir, shape):
    import gzip

    data = tmp_path / "fmnist"
    shutil.copytree(fmnist_dir, data)
    header = bytes([0, 0, 0x08, len(shape)]) + b"".join(int(d).to_bytes(4, "big") for d in shape)
    with gzip.open(data / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(header + b"\0" * 64)
    line = refused(capsys, train_mod.main, _train_argv(tmp_path / "run", f"fashion-mnist:{data}"), tmp_path)
    assert "declares a shape" in line and "reinstall the dataset" in line


@pytest.mark.parametrize(
    "edit, expected",
    [
        ({"num_layers": 10**9}, "num_layers = 1000000000"),
        ({"num_attention_heads": 4096, "attention_head_dim": 4096}, "parameters, over the"),
        ({"sample_size": 10**6}, "sample_size = 1000000"),
        ({"patch_size": 0}, "not a valid model"),
    ],
)
def test_model_configs_asking_for_absurd_sizes_are_refused_before_allocating(
    capsys, tmp_path, fmnist_data, edit, expected
):
    from sparse_deploy.models import build_model
    from sparse_deploy.presets import get_preset

    folder = tmp_path / "custom-dit"  # not "weights": a folder of that name in the working directory would shadow it
    build_model(get_preset("tiny-dit"), announce_random=False).net.save_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edit}))
    argv = [
        "--model",
        str(folder),
        *_train_argv(tmp_path / "run", fmnist_data)[2:],
    ]  # a model folder: its config says the layout
    line = refused(capsys, train_mod.main, argv, tmp_path)
    assert expected in line


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` (its pixel data never comes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("size", [(100_000, 100_000), (9000, 9000)])
def test_fid_refuses_huge_images_before_decoding(capsys, tmp_path, size):
    import numpy as np
    from PIL import Image

    from sparse_deploy.fid import cli as fid_cli

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), i * 60, np.uint8)).save(folder / f"{i}.png")
    (folder / "2.png").write_bytes(_png_header(*size))
    line = refused(capsys, fid_cli.main, [str(folder), str(folder), "--no-cache", "--quiet"], tmp_path)
    assert "2.png" in line and ("pixels" in line or "too large" in line)


def test_triton_default_steps_above_the_schedule_are_refused_at_generation(capsys, tmp_path, engine):
    from sparse_deploy.triton import __main__ as triton

    line = refused(
        capsys,
        triton.main,
        ["--engine", str(engine), "--out", str(tmp_path / "repo"), "--default-steps", "5000"],
        tmp_path,
    )
    assert "--default-steps 5000" in line and "1000-step schedule" in line and "--default-steps 1000 or fewer" in line
    assert not (tmp_path / "repo").exists()


def test_written_files_get_a_plain_files_mode(tmp_path, run_dir, weights):
    """safetensors writes through a private 0600 temporary; every artifact here gets what a plain open() gives."""
    mask = os.umask(0)
    os.umask(mask)
    want = 0o666 & ~mask
    dense = tmp_path / "dense"
    assert shipped.main(["checkpoint", str(weights), "--out", str(dense)]) == 0
    files = [*dense.iterdir(), *run_dir.rglob("*.safetensors"), *weights.iterdir()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files if p.is_file()} == {
        p.name: oct(want) for p in files if p.is_file()
    }
