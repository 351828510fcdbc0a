"""The C++ embedding (cpp/): CMake configures on a machine without TensorRT/CUDA and says why it
skips the TensorRT target; the TensorRT-free parts (manifest reader, fp16 conversion, DDIM loop)
agree with the Python implementation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sparse_deploy.contract import contract_for
from sparse_deploy.presets import get_preset
from sparse_deploy.provenance import seal
from sparse_deploy.sampling import initial_noise, sample

CPP = Path(__file__).resolve().parents[2] / "cpp"
CMAKE = shutil.which("cmake")
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")

pytestmark = [
    pytest.mark.skipif(CMAKE is None, reason="cmake is not installed (apt-get install cmake)"),
    pytest.mark.skipif(CXX is None, reason="no C++ compiler (apt-get install g++)"),
]


@pytest.fixture(scope="module")
def configured(tmp_path_factory) -> tuple[Path, str]:
    build = tmp_path_factory.mktemp("cpp-build")
    proc = subprocess.run([CMAKE, "-S", str(CPP), "-B", str(build)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return build, proc.stdout


@pytest.fixture(scope="module")
def selftest(configured) -> Path:
    build, _ = configured
    proc = subprocess.run(
        [CMAKE, "--build", str(build), "--target", "ddim_selftest"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return build / "ddim_selftest"


def test_configures_and_states_why_the_tensorrt_target_is_skipped(configured):
    build, out = configured
    has_trt = shutil.which("trtexec") is not None or Path("/usr/include/x86_64-linux-gnu/NvInfer.h").exists()
    if has_trt:
        assert "sparse_deploy_trt: TensorRT" in out or "sparse_deploy_trt: skipped" in out
    else:
        line = next(line for line in out.splitlines() if "sparse_deploy_trt" in line)
        assert "skipped:" in line and ("NvInfer.h" in line or "CUDA" in line or "libnvinfer" in line), line
    assert (build / "Makefile").exists() or (build / "build.ninja").exists()


def test_manifest_reader(selftest, tmp_path):
    contract = contract_for(get_preset("tiny-dit"), "fp16")
    manifest = {
        "format": "sparse-deploy-engine/1",
        "backend": "tensorrt",
        "engine": "sparse-fp16.trt.plan",
        "kind": "sparse",
        "precision": "fp16",
        "preset": "tiny-dit",
        "preset_spec": get_preset("tiny-dit").to_dict(),
        "contract": contract.to_dict(),
        "note": 'caf\u00e9 "quoted"',
        "nested": {"list": [1, 2.5e-3, -4, True, False, None]},
    }
    path = tmp_path / "m.json"
    path.write_text(json.dumps(seal(manifest), indent=1))
    out = subprocess.run(
        [str(selftest), "manifest", str(path)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "backend tensorrt" in out and "profile 1 8 64" in out and "precision fp16" in out
    assert "classes 10" in out  # from the model's own record (preset_spec), not a table of preset names
    assert (
        "input sample float16 -1 1 16 16" in out
        and "input class_labels int64 -1" in out
        and "output out float16 -1 1 16 16" in out
    )
    # Manifests written now hold one precision field, the contract's; older ones also a top-level copy.
    path.write_text(json.dumps(seal({k: v for k, v in manifest.items() if k != "precision"})))
    out = subprocess.run(
        [str(selftest), "manifest", str(path)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "precision fp16" in out
    path.write_text(json.dumps({**manifest, "format": "something-else"}))
    bad = subprocess.run([str(selftest), "manifest", str(path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a sparse-deploy engine manifest" in bad.stderr


def test_half_conversion_matches_numpy(selftest):
    out = subprocess.run([str(selftest), "half"], capture_output=True, text=True, check=True).stdout.split()
    values = np.array(out[0::2], dtype=np.float32)
    back = np.array(out[1::2], dtype=np.float32)
    np.testing.assert_allclose(back, values.astype(np.float16).astype(np.float32), rtol=1e-5, atol=0)


@pytest.mark.parametrize("steps, guidance, labels", [(10, 1.0, [1, 7]), (25, 2.5, [3, 0, 9])])
def test_ddim_loop_matches_sampling_sample(selftest, tmp_path, steps, guidance, labels):
    preset = get_preset("tiny-dit")

    def fake(x, t, y):  # the same analytic stand-in denoiser as selftest.cpp
        return 0.1 * x + 0.01 * (y.float() - 5).view(-1, 1, 1, 1) + 1e-4 * t.float().view(-1, 1, 1, 1)

    seed = 3
    want, _ = sample(
        fake, preset, batch=len(labels), steps=steps, scheduler="ddim", seed=seed, labels=labels, guidance=guidance
    )
    # sampling.sample's initial noise: with labels given, each image's first draw from its own generator.
    noise = initial_noise(preset, seed, len(labels))
    (tmp_path / "noise.f32").write_bytes(noise.numpy().astype("<f4").tobytes())
    cmd = [
        str(selftest),
        "sample",
        "--noise",
        str(tmp_path / "noise.f32"),
        "--labels",
        ",".join(map(str, labels)),
        "--steps",
        str(steps),
        "--guidance",
        str(guidance),
        "--channels",
        "1",
        "--size",
        "16",
        "--null-label",
        str(preset.num_classes),
        "--out",
        str(tmp_path / "x.f32"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    got = np.fromfile(tmp_path / "x.f32", dtype="<f4").reshape(want.shape)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
    from sparse_deploy.sampling import make_scheduler

    sched = make_scheduler("ddim")
    sched.set_timesteps(steps)
    assert out.splitlines()[0].split()[1:] == [str(int(t)) for t in sched.timesteps]


@pytest.mark.parametrize(
    "config",
    [
        dict(
            _class_name="DDIMScheduler",
            num_train_timesteps=500,
            beta_schedule="scaled_linear",
            beta_start=0.0005,
            beta_end=0.015,
            clip_sample=False,
            set_alpha_to_one=False,
        ),
        dict(
            _class_name="DDPMScheduler",
            num_train_timesteps=400,
            beta_schedule="squaredcos_cap_v2",
            prediction_type="v_prediction",
            timestep_spacing="trailing",
            clip_sample=False,
        ),
    ],
)
def test_ddim_loop_follows_the_manifest_schedule(selftest, tmp_path, config):
    """A non-default schedule recorded in an engine manifest: the C++ loop equals sampling.sample."""
    import dataclasses

    from sparse_deploy.schedule import schedule_record

    preset = dataclasses.replace(get_preset("tiny-dit"), schedule=config)
    contract = contract_for(preset, "fp32")
    manifest = {
        "format": "sparse-deploy-engine/1",
        "backend": "tensorrt",
        "engine": "e.trt.plan",
        "kind": "sparse",
        "precision": "fp32",
        "preset": preset.name,
        "contract": contract.to_dict(),
        "schedule": schedule_record(config),
    }
    (tmp_path / "e.trt.json").write_text(json.dumps(seal(manifest)))

    def fake(x, t, y):
        return 0.1 * x + 0.01 * (y.float() - 5).view(-1, 1, 1, 1) + 1e-4 * t.float().view(-1, 1, 1, 1)

    labels, steps, seed = [2, 8], 7, 4
    want, _ = sample(fake, preset, batch=2, steps=steps, scheduler="ddim", seed=seed, labels=labels)
    noise = initial_noise(preset, seed, 2)
    (tmp_path / "noise.f32").write_bytes(noise.numpy().astype("<f4").tobytes())
    cmd = [
        str(selftest),
        "sample",
        "--noise",
        str(tmp_path / "noise.f32"),
        "--labels",
        "2,8",
        "--steps",
        str(steps),
        "--guidance",
        "1",
        "--channels",
        "1",
        "--size",
        "16",
        "--null-label",
        "10",
        "--out",
        str(tmp_path / "x.f32"),
        "--manifest",
        str(tmp_path / "e.trt.json"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    from sparse_deploy.sampling import make_scheduler

    sched = make_scheduler("ddim", config)
    sched.set_timesteps(steps)
    assert out.splitlines()[0].split()[1:] == [str(int(t)) for t in sched.timesteps]
    got = np.fromfile(tmp_path / "x.f32", dtype="<f4").reshape(want.shape)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


# --- the C++ manifest reader checks what Python checks (bad-input catalogue, C++ side) -------------------


def _engine_manifest(**extra) -> dict:
    preset = get_preset("tiny-dit")
    return {
        "format": "sparse-deploy-engine/1",
        "backend": "tensorrt",
        "engine": "e.trt.plan",
        "kind": "sparse",
        "preset": preset.name,
        "preset_spec": preset.to_dict(),
        "contract": contract_for(preset, "fp16").to_dict(),
        **extra,
    }


def _read(selftest, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(selftest), "manifest", str(path)], capture_output=True, text=True, timeout=60)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_the_seal_is_checked_as_python_checks_it(selftest, tmp_path):
    """Python writes with ensure_ascii and indent; C++ re-emits raw tokens with sorted keys: the same bytes, the same
    hash.
    """
    from sparse_deploy.provenance import seal_problem

    tricky = {
        "note": 'caf\u00e9 "q" \\ / \n \t \x01 \u2603 \U0001f600',
        "numbers": [1, -2, 2.5e-3, 1e-05, 1e16, 0.1, 2**64, True, None],
        "nested": {"b": 1, "a": {"\u00e9": 2, "e": 3}, "empty": {}, "none": []},
    }
    path = tmp_path / "e.trt.json"
    sealed = seal(_engine_manifest(**tricky))
    path.write_text(json.dumps(sealed, indent=2, sort_keys=True))
    assert seal_problem(json.loads(path.read_text()), required=True) is None
    assert _read(selftest, path).returncode == 0
    for change in (
        lambda m: m.update(kind="dense"),
        lambda m: m["contract"]["profile"].update(max=128),
        lambda m: m["nested"]["a"].update(e=4),
        lambda m: m.update(extra=1),
    ):
        edited = json.loads(json.dumps(sealed))
        change(edited)
        path.write_text(json.dumps(edited, indent=1))
        assert "does not match its own hash" in _one_error_line(_read(selftest, path))
    path.write_text(json.dumps(_engine_manifest()))  # no seal at all: Python refuses it too
    assert "carries no seal" in _one_error_line(_read(selftest, path))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 200_000,
        '{"format": "sparse-deploy-engine/1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"a": ' * 50_000 + "1" + "}" * 50_000,
        '{"format": "sparse-deploy-engine/1", "x": "\\u12',
        "\x00\xff",
    ],
)
def test_hostile_json_is_one_error_line_not_a_crash(selftest, tmp_path, text):
    path = tmp_path / "e.trt.json"
    path.write_bytes(text.encode("latin-1"))
    line = _one_error_line(_read(selftest, path))
    assert "not valid JSON" in line or "not a sparse-deploy engine manifest" in line


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda m: m["contract"]["profile"].update(max=10**12), "profile's max"),
        (lambda m: m["contract"]["profile"].update(min=1.5), "whole number"),
        (lambda m: m["contract"]["inputs"][0].update(shape=[-1, 1, 1e300, 16]), "whole number"),
        (lambda m: m["contract"].update(inputs="nope"), "does not describe a denoiser"),
        (lambda m: m.update(contract=[]), "malformed"),
    ],
)
def test_sealed_but_absurd_manifests_are_refused(selftest, tmp_path, change, expected):
    manifest = _engine_manifest()
    change(manifest)
    path = tmp_path / "e.trt.json"
    path.write_text(json.dumps(seal(manifest)))
    assert expected in _one_error_line(_read(selftest, path))


@pytest.mark.parametrize("text", ["1,,2", "a", "", "3,", "-1", "99999999999999999999999", "1.5"])
def test_malformed_label_lists_are_one_error_line(selftest, text):
    done = subprocess.run([str(selftest), "labels", text], capture_output=True, text=True, timeout=60)
    assert "--labels takes comma-separated class ids" in _one_error_line(done)
    ok = subprocess.run([str(selftest), "labels", "0,7,3"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.split() == ["0", "7", "3"]


def test_the_readme_builds_from_the_checkpoint_make_writes():
    import re

    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "cpp" / "README.md").read_text()
    (checkpoint,) = re.findall(r"--checkpoint (\S+)", readme)
    makefile = (repo / "Makefile").read_text()
    assert "--out $(RUNS)/srste" in makefile and checkpoint == "runs/fmnist-dit/srste/checkpoint"
