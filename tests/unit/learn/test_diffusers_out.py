"""A run's model out as a diffusers folder: baked (exact 2:4), loadable with from_pretrained, with its provenance."""

from __future__ import annotations

import json
import re
import stat

import pytest
import torch
from diffusers import DDPMPipeline, DiTPipeline, DiTTransformer2DModel
from safetensors.torch import load_file

from sparse_deploy.backends import load_runner
from sparse_deploy.checkpoint import save_checkpoint
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.learn.diffusers_out import DIFFUSERS_DIR, write_diffusers, write_run_diffusers
from sparse_deploy.masks import is_nm_sparse
from sparse_deploy.models import build_model, cast_
from sparse_deploy.presets import get_preset
from sparse_deploy.sampling import make_scheduler
from sparse_deploy.sources import resolve_source, source_preset
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


# -- plain diffusers, no code of ours ---------------------------------------------------------------


def _card_code(out) -> str:
    card = (out / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", card, re.S).group(1).replace("path/to/this/folder", str(out))


def _card_meta(out) -> dict:
    head = (out / "README.md").read_text().split("---\n")[1]
    return {k: json.loads(v) for k, v in (line.split(": ", 1) for line in head.splitlines())}


@pytest.fixture(scope="module")
def pixel_dit(tmp_path_factory):
    """A 2:4 tiny DiT (pixel space, no VAE) written as a diffusers folder from fp16 weights."""
    root = tmp_path_factory.mktemp("pixel")
    model, config = _sparse_model("tiny-dit")
    source = root / "weights"
    cast_(build_model(get_preset("tiny-dit"), announce_random=False).net, torch.float16).save_pretrained(str(source))
    bake_(model)
    return write_diffusers(model, root / "out", weights=source, info={"coverage": {"sparse_share": 0.5}}), model


def test_a_pixel_dit_folder_loads_as_a_pipeline_with_no_vae(pixel_dit):
    out, model = pixel_dit
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DiTPipeline" and index["vae"] == [None, None]
    pipe = DiTPipeline.from_pretrained(str(out), vae=None)
    assert pipe.vae is None and pipe.scheduler.__class__.__name__ == "DDIMScheduler"
    assert not pipe.scheduler.config.clip_sample and not pipe.scheduler.config.set_alpha_to_one
    # The toolchain reads it back as the model it was: same preset, the default schedule.
    assert source_preset(resolve_source(out)) == get_preset("tiny-dit")


def test_fp16_in_fp16_out_readable_and_marked(pixel_dit):
    out, model = pixel_dit
    stored = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert stat.S_IMODE((out / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mode) & 0o044
    record = json.loads((out / "sparse_deploy.json").read_text())
    assert record["precision"] == "fp16" and record["pattern"] == "2:4" and len(record["sparse_layers"]) == 12
    mark = json.loads((out / "transformer" / "config.json").read_text())["_sparse_deploy"]
    assert mark == {"pattern": "2:4", "sparse_layers": 12, "card": "README.md"}
    meta = _card_meta(out)
    assert meta["library_name"] == "diffusers" and meta["sparsity"]["pattern"] == "2:4"
    assert meta["sparsity"]["sparse_share_of_macs"] == 0.5 and meta["precision"] == "fp16"


def test_the_cards_loop_draws_what_the_toolchain_draws(pixel_dit):
    out, _ = pixel_dit
    ns: dict = {}
    exec(_card_code(out), ns)  # diffusers alone
    with load_runner(out) as runner:  # the toolchain on the same folder (PyTorch backend)
        assert runner.kind == "sparse"
        sched = make_scheduler("ddim", runner.preset.schedule)
        sched.set_timesteps(25)
        x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        labels = torch.arange(8) % 10
        for t in sched.timesteps:
            x = sched.step(runner(x, t.expand(8), labels), t, x).prev_sample
    torch.testing.assert_close(ns["x"], x, rtol=1e-4, atol=1e-4)
    assert ns["images"].dtype == torch.uint8 and ns["images"].shape == (8, 1, 16, 16)


def test_a_dense_model_says_so(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_preset("tiny-dit"), announce_random=False)
    out = write_diffusers(model, tmp_path / "dense")
    assert json.loads((out / "sparse_deploy.json").read_text())["pattern"] is None
    assert "dense model" in (out / "README.md").read_text()
    assert _card_meta(out)["precision"] == "fp32"
