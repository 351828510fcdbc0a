"""A run's model out as a diffusers folder: baked (exact 2:4), loadable with from_pretrained, with its provenance."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMPipeline, DiTTransformer2DModel

from sparse_deploy.checkpoint import save_checkpoint
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.learn.diffusers_out import DIFFUSERS_DIR, write_diffusers, write_run_diffusers
from sparse_deploy.masks import is_nm_sparse
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.sparsify import SparsityConfig, bake_, select_layers, sparsify_


def _sparse_model(preset: str):
    torch.manual_seed(0)
    model = build_model(get_preset(preset), announce_random=False)
    config = SparsityConfig(mode="fixed")
    sparsify_(model, config, select_layers(model, config).selected)
    return model, config


def test_a_masked_model_is_refused(tmp_path):
    model, _ = _sparse_model("tiny-dit")
    with pytest.raises(SparseDeployError, match="needs a baked model"):
        write_diffusers(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_checkpoint_comes_out_baked_and_loads_with_diffusers(tmp_path):
    model, config = _sparse_model("tiny-dit")
    layers = sorted(n for n in select_layers(model, config).selected)
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoint", model, sparsity=config, info={"step": 3})
    out = write_run_diffusers(tmp_path / "run", ckpt)
    assert out == tmp_path / "run" / DIFFUSERS_DIR
    info = json.loads((out / "sparse_deploy.json").read_text())
    assert info["component"] == "transformer" and info["preset"] == "tiny-dit" and info["step"] == 3
    assert info["masked_layers"] == layers and info["sparsity"]["mode"] == "fixed" and info["source"] is None
    net = DiTTransformer2DModel.from_pretrained(str(out / "transformer"))
    named = dict(net.named_modules())
    assert all(is_nm_sparse(named[name].weight) for name in layers)
    assert (out / "scheduler" / "scheduler_config.json").is_file()
    baked, _ = _sparse_model("tiny-dit")
    bake_(baked)
    torch.testing.assert_close(named[layers[0]].weight, dict(baked.net.named_modules())[layers[0]].weight)


def test_a_unet_gets_a_ddpm_pipeline_index(tmp_path):
    model, _ = _sparse_model("tiny-unet")
    bake_(model)
    out = write_diffusers(model, tmp_path / "unet", info={"note": "x"})
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
    assert json.loads((out / "sparse_deploy.json").read_text())["note"] == "x"
    pipe = DDPMPipeline.from_pretrained(str(out))
    assert pipe.unet.config.sample_size == get_preset("tiny-unet").sample_size
