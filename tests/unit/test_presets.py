"""Presets and models, checkpoint round trips, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from sparse_deploy.checkpoint import MANIFEST, TRAINING_STATE, WEIGHTS, load_checkpoint, read_manifest, save_checkpoint
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.masks import nm_mask
from sparse_deploy.models import build_model, example_inputs
from sparse_deploy.presets import DEFAULT_PRESET, PRESETS, get_preset
from sparse_deploy.provenance import atomic_dir, atomic_path, seal, sha256_file
from sparse_deploy.sparsify import SparsityConfig, masked_modules, sparsify_

SMALL = ("tiny-dit", "tiny-unet", "fmnist-dit")


def test_unknown_preset_lists_known_names():
    with pytest.raises(SparseDeployError) as info:
        get_preset("dit-zz")
    message = str(info.value)
    assert "dit-zz" in message
    for name in PRESETS:
        assert name in message
    assert DEFAULT_PRESET in PRESETS


@pytest.mark.parametrize("name", SMALL)
def test_build_small_presets(name):
    preset = get_preset(name)
    torch.manual_seed(0)
    model = build_model(preset, announce_random=False).eval()
    assert model.preset is preset
    inputs = example_inputs(preset, batch=2)
    assert inputs[0].shape == (2, preset.in_channels, preset.sample_size, preset.sample_size)
    with torch.no_grad():
        out = model(*inputs)
    assert out.shape == (2, preset.out_channels, preset.sample_size, preset.sample_size)
    assert torch.isfinite(out).all()
    if preset.num_classes:
        # The null label (classifier-free guidance) is a valid input and changes the output.
        null = torch.full((2,), preset.null_class, dtype=torch.int64)
        with torch.no_grad():
            unconditional = model(inputs[0], inputs[1], null)
        assert unconditional.shape == out.shape and not torch.allclose(unconditional, out)


def test_label_dropout_is_left_to_the_training_loop():
    model = build_model(get_preset("tiny-dit"), announce_random=False).train()
    embeddings = [m for m in model.modules() if m.__class__.__name__ == "LabelEmbedding"]
    assert embeddings and all(m.dropout_prob == 0.0 for m in embeddings)
    assert all(m.embedding_table.num_embeddings == 11 for m in embeddings)  # 10 classes + null
    inputs = example_inputs(get_preset("tiny-dit"), batch=4)
    with torch.no_grad():
        assert torch.equal(model(*inputs), model(*inputs))  # no random label drops inside the model


def test_preset_geometry():
    tiny = get_preset("tiny-dit")
    assert (tiny.in_channels, tiny.sample_size, tiny.num_classes, tiny.null_class) == (1, 16, 10, 10)
    assert get_preset("dit-s").out_channels == 8  # learned sigma: 2 x 4 latent channels
    assert get_preset("ddpm-cifar10").null_class is None


@pytest.mark.parametrize("preset_name,sparse", [("tiny-dit", True), ("tiny-dit", False), ("tiny-unet", True)])
def test_checkpoint_round_trip(tmp_path, preset_name, sparse):
    preset = get_preset(preset_name)
    torch.manual_seed(0)
    model = build_model(preset, announce_random=False).eval()
    config = SparsityConfig(mode="srste") if sparse else None
    names = sparsify_(model, config) if sparse else []
    inputs = example_inputs(preset, batch=2, seed=1)
    with torch.no_grad():
        expected = model(*inputs)
    path = save_checkpoint(tmp_path / "ckpt", model, sparsity=config, info={"step": 7})
    assert {p.name for p in path.iterdir()} == {MANIFEST, WEIGHTS}
    manifest = read_manifest(path)
    assert manifest["preset"] == preset_name and manifest["step"] == 7
    assert manifest["masked_layers"] == sorted(names)
    assert manifest["weights_sha256"] == sha256_file(path / WEIGHTS)

    loaded, manifest2 = load_checkpoint(path)
    assert manifest2 == manifest
    assert not loaded.training
    assert sorted(masked_modules(loaded)) == sorted(names)
    for name, layer in masked_modules(loaded).items():
        assert torch.equal(layer.weight_mask, masked_modules(model)[name].weight_mask)
        assert layer.sparsity_mode == "srste"
    with torch.no_grad():
        assert_close(loaded(*inputs), expected, rtol=0, atol=0)


def test_checkpoint_keeps_saved_masks_not_recomputed_ones(tmp_path):
    # A fixed-mode mask need not be the magnitude mask of the final weights: loading must
    # restore the saved mask buffer, not recompute it.
    model = build_model(get_preset("tiny-dit"), announce_random=False).eval()
    config = SparsityConfig(mode="fixed")
    sparsify_(model, config)
    layer = masked_modules(model)["transformer_blocks.0.attn1.to_q"]
    layer.weight_mask.copy_(~layer.weight_mask)  # the other 2 of every 4
    assert not torch.equal(layer.weight_mask, nm_mask(layer.weight))
    path = save_checkpoint(tmp_path / "ckpt", model, sparsity=config, training_state={"step": 1})
    assert (path / TRAINING_STATE).is_file()
    loaded, _ = load_checkpoint(path)
    assert torch.equal(masked_modules(loaded)["transformer_blocks.0.attn1.to_q"].weight_mask, layer.weight_mask)


def test_load_checkpoint_errors(tmp_path):
    model = build_model(get_preset("tiny-dit"), announce_random=False)
    path = save_checkpoint(tmp_path / "ckpt", model, sparsity=None)
    with pytest.raises(SparseDeployError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(SparseDeployError, match="is a file"):
        load_checkpoint(path / WEIGHTS)
    with pytest.raises(SparseDeployError, match="no manifest.json"):
        load_checkpoint(tmp_path)
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last tensor
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(SparseDeployError, match="does not match the hash"):
        load_checkpoint(path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["preset"] = "tiny-unet"
    manifest["preset_spec"] = get_preset("tiny-unet").to_dict()  # the recorded layout is what is rebuilt
    manifest["weights_sha256"] = sha256_file(path / WEIGHTS)
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SparseDeployError, match="does not match its own hash"):
        load_checkpoint(path)
    (path / MANIFEST).write_text(json.dumps(seal(manifest)))
    with pytest.raises(SparseDeployError, match="does not fit preset 'tiny-unet'"):
        load_checkpoint(path)


def test_atomic_dir_failure_leaves_no_final_folder(tmp_path):
    final = tmp_path / "out" / "ckpt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []  # no temporary litter either


def test_atomic_dir_failure_keeps_previous_version(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_dir(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError("killed")
    assert (final / "v").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    with atomic_dir(final) as tmp:
        (tmp / "w").write_text("3")
    assert [p.name for p in final.iterdir()] == ["w"]  # replaced whole, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_save_checkpoint_failure_leaves_no_folder(tmp_path):
    model = build_model(get_preset("tiny-dit"), announce_random=False)
    with pytest.raises(TypeError, match="holds a function"):
        # A function is not stored (statefile: tensors and JSON only): saving fails after the weights were written.
        save_checkpoint(tmp_path / "ckpt", model, sparsity=None, training_state={"bad": lambda: None})
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_failure_leaves_no_file(tmp_path):
    final = tmp_path / "file.json"
    with pytest.raises(ValueError):
        with atomic_path(final) as tmp:
            tmp.write_text("partial")
            raise ValueError("stop")
    assert list(tmp_path.iterdir()) == []
