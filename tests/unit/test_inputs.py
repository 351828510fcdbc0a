"""A stage's model flags: the preset of --model / --weights / --init, and the VAE."""

from __future__ import annotations

import pytest
import torch

from sparse_deploy.checkpoint import save_checkpoint
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.inputs import is_checkpoint, open_model, open_weights, run_preset, run_vae, weights_are_sparse
from sparse_deploy.models import build_model
from sparse_deploy.presets import DEFAULT_PRESET, get_preset
from sparse_deploy.sparsify import SparsityConfig, bake_, sparsify_


def test_a_preset_name_or_the_default():
    assert run_preset("tiny-dit").name == "tiny-dit" and run_preset(None).name == DEFAULT_PRESET


def test_a_dense_checkpoint_names_its_own_preset(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "c", build_model(get_preset("tiny-unet"), announce_random=False), sparsity=None)
    assert run_preset(None, init=ckpt).name == "tiny-unet"
    assert run_preset("tiny-unet", init=ckpt).name == "tiny-unet"  # checked where the checkpoint is loaded
    with pytest.raises(
        SparseDeployError, match="--init checkpoint is preset 'tiny-unet', not 'my-model'; drop --model"
    ):
        run_preset("my-model", init=ckpt)


def test_a_path_given_as_model_is_the_weights_once(tmp_path):
    with pytest.raises(SparseDeployError, match="is a path and --weights .* too; pass the model once"):
        run_preset(str(tmp_path / "pipe"), weights=tmp_path / "other")


def test_no_vae_unless_asked_or_in_the_pipeline(tmp_path):
    assert run_vae(None) is None
    with pytest.raises(SparseDeployError, match="--vae"):
        run_vae(tmp_path / "nothing-here")


def test_weights_that_are_already_2_4_open_as_they_are(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_preset("tiny-dit"), announce_random=False)
    model.net.save_pretrained(str(tmp_path / "dense"))
    assert not weights_are_sparse(tmp_path / "dense")
    net, record = open_weights(tmp_path / "dense")
    assert record["masked_layers"] == [] and record["pattern"] is None and record["preset"] == "tiny-dit"
    layers = sparsify_(model, SparsityConfig(mode="oneshot"))
    bake_(model)
    model.net.save_pretrained(str(tmp_path / "sparse"))
    assert weights_are_sparse(tmp_path / "sparse")
    net, record = open_weights(tmp_path / "sparse")
    assert record["masked_layers"] == sorted(layers) and record["pattern"] == "2:4"
    assert not hasattr(dict(net.net.named_modules())[layers[0]], "weight_mask")  # its zeros are the masks
    assert open_model(tmp_path / "sparse")[1]["weights_sha256"] == record["weights_sha256"]
    ckpt = save_checkpoint(tmp_path / "ckpt", model, sparsity=None)
    assert is_checkpoint(ckpt) and not is_checkpoint(tmp_path / "sparse")
    with pytest.raises(SparseDeployError, match="neither an engine nor a checkpoint nor a diffusers model"):
        open_model(tmp_path)
