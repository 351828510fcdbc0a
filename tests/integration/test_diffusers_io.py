"""A diffusers model in, a diffusers model out: pipeline folders built with diffusers itself.

A tiny DiT pipeline (a layout that is no preset, learned sigma, a tiny VAE, a DDIM scheduler with
a non-default beta schedule) and a tiny UNet2DModel pipeline (a DDPM scheduler with a cosine
schedule) go through the toolchain with no ``--model``: sparse fine-tuning from the pipeline
root, ``<run>/diffusers/`` loaded back in ``DiTPipeline`` / ``DDPMPipeline``, engines built from
the checkpoint and run, and engine sampling compared with diffusers' own pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparse_deploy.checkpoint import load_checkpoint
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.inputs import run_preset
from sparse_deploy.masks import is_nm_sparse
from sparse_deploy.presets import get_preset
from sparse_deploy.schedule import DEFAULT_SCHEDULE, sampling_scheduler, schedule_record, training_target
from sparse_deploy.sources import resolve_source, resolve_vae, source_preset
from sparse_deploy.sparsify import masked_modules

DIT_SCHEDULE = dict(
    num_train_timesteps=500,
    beta_schedule="scaled_linear",
    beta_start=0.0005,
    beta_end=0.015,
    clip_sample=False,
    set_alpha_to_one=False,
)


def _dit_pipeline(root: Path) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=5,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler(**DIT_SCHEDULE)).save_pretrained(str(root))
    return root


def _unet_pipeline(root: Path) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(root))
    return root


@pytest.fixture(scope="module")
def dit_root(tmp_path_factory) -> Path:
    return _dit_pipeline(tmp_path_factory.mktemp("pipelines") / "my-dit")


@pytest.fixture(scope="module")
def unet_root(tmp_path_factory) -> Path:
    return _unet_pipeline(tmp_path_factory.mktemp("pipelines") / "my-unet")


def _finetune_build(root: Path, work: Path, extra: tuple[str, ...] = ()) -> dict[str, Path]:
    """Sparse fine-tuning from the pipeline root (no --model), then engines from the checkpoint."""
    from sparse_deploy.build import main as build_main
    from sparse_deploy.learn.cli import main as train_main

    run = work / "run"
    assert (
        train_main(
            [
                "--weights",
                str(root),
                "--sparsity",
                "srste",
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--data",
                "synthetic:8",
                "--out",
                str(run),
                "--preview",
                "0",
                "--lr",
                "1e-3",
                "--warmup-steps",
                "0",
            ]
        )
        == 0
    )
    engines = work / "engines"
    assert (
        build_main(
            [
                "--checkpoint",
                str(run / "checkpoint"),
                "--backend",
                "onnxruntime",
                "--precision",
                "fp32",
                "--export-dir",
                str(work / "export"),
                "--engine-dir",
                str(engines),
                "--max-batch",
                "4",
            ]
        )
        == 0
    )
    return {
        "run": run,
        "checkpoint": run / "checkpoint",
        "diffusers": run / "diffusers",
        "dense": engines / "dense-fp32.ort.onnx",
        "sparse": engines / "sparse-fp32.ort.onnx",
    }


@pytest.fixture(scope="module")
def dit_run(dit_root, tmp_path_factory) -> dict[str, Path]:
    return _finetune_build(dit_root, tmp_path_factory.mktemp("dit-work"))


@pytest.fixture(scope="module")
def unet_run(unet_root, tmp_path_factory) -> dict[str, Path]:
    return _finetune_build(unet_root, tmp_path_factory.mktemp("unet-work"))


# ------------------------------------------------------------------------------------------------
# Resolving inputs


def test_sources_find_parts_by_model_index(dit_root):
    pipe = resolve_source(dit_root)
    assert (pipe.kind, pipe.component, pipe.model_dir) == ("pipeline", "transformer", dit_root / "transformer")
    assert pipe.vae_dir == dit_root / "vae" and pipe.scheduler_config["beta_schedule"] == "scaled_linear"
    component = resolve_source(dit_root / "transformer")  # a component still sees its pipeline's siblings
    assert (
        component.kind == "model"
        and component.vae_dir == dit_root / "vae"
        and component.scheduler_config == pipe.scheduler_config
    )
    file = resolve_source(dit_root / "transformer" / "diffusion_pytorch_model.safetensors")
    assert file.kind == "file" and file.config["_class_name"] == "DiTTransformer2DModel"
    assert resolve_vae(dit_root) == dit_root / "vae" and resolve_vae(dit_root / "vae") == dit_root / "vae"


def test_sources_errors_name_what_was_found(dit_root, tmp_path):
    with pytest.raises(SparseDeployError, match=r"neither model_index.json .* found: notes.txt"):
        (tmp_path / "notes.txt").write_text("x")
        resolve_source(tmp_path)
    with pytest.raises(SparseDeployError, match="AutoencoderKL config; the model must be"):
        resolve_source(dit_root / "vae")
    with pytest.raises(SparseDeployError, match="DiTTransformer2DModel config, not an AutoencoderKL"):
        resolve_vae(dit_root / "transformer")
    broken = tmp_path / "broken"
    broken.mkdir()
    index = json.loads((dit_root / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(SparseDeployError, match=r"names component 'transformer' .* has no config.json"):
        resolve_source(broken)
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes((dit_root / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(SparseDeployError, match="pass --model PRESET"):
        run_preset(None, bare)
    with pytest.raises(SparseDeployError, match="--model dit-s does not match"):
        run_preset("dit-s", dit_root)


def test_any_config_becomes_a_preset(dit_root, unet_root, tmp_path):
    dit = source_preset(resolve_source(dit_root))
    assert (dit.name, dit.family, dit.in_channels, dit.sample_size, dit.num_classes, dit.learned_sigma, dit.latent) == (
        "my-dit",
        "dit",
        4,
        8,
        5,
        True,
        True,
    )
    assert dit.schedule["_class_name"] == "DDIMScheduler" and dit.model_kwargs["patch_size"] == 2
    unet = source_preset(resolve_source(unet_root))
    assert (unet.family, unet.num_classes, unet.latent, unet.learned_sigma) == ("unet", 0, False, False)
    # A config equal to a built-in layout keeps the preset's name (and its defaults).
    from sparse_deploy.models import build_model

    build_model(get_preset("tiny-dit"), announce_random=False).net.save_pretrained(str(tmp_path / "tiny"))
    assert run_preset(None, tmp_path / "tiny").name == "tiny-dit"


# ------------------------------------------------------------------------------------------------
# The schedule


def test_default_schedule_is_the_old_linear_one():
    ddim = sampling_scheduler("ddim")
    assert (
        ddim.config.beta_schedule,
        ddim.config.num_train_timesteps,
        ddim.config.set_alpha_to_one,
        ddim.config.clip_sample,
    ) == ("linear", 1000, False, False)
    record = schedule_record(None)
    assert record["config"] == DEFAULT_SCHEDULE and len(record["alphas_cumprod"]) == 1000
    x0, noise, a = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 1, 1), 0.25)
    assert torch.equal(training_target(None, x0, noise, a), noise)
    assert torch.allclose(
        training_target({"prediction_type": "v_prediction"}, x0, noise, a), 0.5 * noise - 0.75**0.5 * x0
    )
    assert torch.equal(training_target({"prediction_type": "sample"}, x0, noise, a), x0)


# ------------------------------------------------------------------------------------------------
# DiT pipeline end to end


def test_dit_pipeline_finetuned_out_and_back_in(dit_root, dit_run):
    from diffusers import DiTPipeline, DiTTransformer2DModel

    manifest = json.loads((dit_run["checkpoint"] / "manifest.json").read_text())
    assert manifest["preset"] == "my-dit" and manifest["preset_spec"]["model_kwargs"]["num_embeds_ada_norm"] == 5
    assert manifest["preset_spec"]["schedule"]["beta_schedule"] == "scaled_linear"
    # <run>/diffusers is the whole pipeline with the sparse transformer in place.
    out = dit_run["diffusers"]
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DiTPipeline"
    transformer = DiTTransformer2DModel.from_pretrained(str(out / "transformer"))
    modules = dict(transformer.named_modules())
    assert len(manifest["masked_layers"]) == 12
    for name in manifest["masked_layers"]:
        assert is_nm_sparse(modules[name].weight, 2, 4), name
    pipe = DiTPipeline.from_pretrained(str(out))
    images = pipe(
        class_labels=[0, 4],
        guidance_scale=1.0,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (2, 16, 16, 3) and (images >= 0).all() and (images <= 1).all()


def test_dit_engines_sample_like_diffusers(dit_root, dit_run, tmp_path):
    from diffusers import DiTPipeline

    from sparse_deploy.backends import load_runner
    from sparse_deploy.run import main as run_main
    from sparse_deploy.sampling import image_generators, sample
    from sparse_deploy.sources import load_vae

    engine_manifest = json.loads(dit_run["sparse"].with_suffix(".json").read_text())
    assert engine_manifest["schedule"]["num_train_timesteps"] == 500
    assert engine_manifest["schedule"]["config"]["beta_schedule"] == "scaled_linear"
    assert (
        run_main(
            [
                "--engine",
                str(dit_run["sparse"]),
                "--out",
                str(tmp_path / "s"),
                "--num",
                "2",
                "--batch",
                "2",
                "--steps",
                "2",
                "--vae",
                str(dit_root),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "s" / "run.json").read_text())
    assert record["decode"].startswith("vae") and (tmp_path / "s" / "grid.png").is_file()

    # The same noise through the engine and through diffusers' own DiTPipeline (its DDIM scheduler).
    vae = load_vae(dit_root)
    with load_runner(dit_run["sparse"]) as runner:
        x, _ = sample(runner, runner.preset, batch=2, steps=5, scheduler="ddim", seed=3, labels=[0, 1])
        plain, _ = sample(
            runner,
            get_preset("dit-s").__class__.from_dict({**runner.preset.to_dict(), "schedule": None}),
            batch=2,
            steps=5,
            scheduler="ddim",
            seed=3,
            labels=[0, 1],
        )
    with torch.no_grad():
        ours = (vae.decode(x / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        pipe = DiTPipeline.from_pretrained(str(dit_run["diffusers"]))
        ref = pipe(
            class_labels=[0, 1],
            guidance_scale=1.0,
            num_inference_steps=5,
            output_type="pt",
            generator=image_generators(3, 0, 2),  # image i's own generator, as sampling.sample seeds it
        ).images
    if not isinstance(ref, torch.Tensor):  # diffusers before 0.36 returns NHWC numpy whatever output_type says
        ref = torch.from_numpy(ref).permute(0, 3, 1, 2)
    assert (ours - ref).abs().max() < 1e-4
    assert (x - plain).abs().max() > 1e-2  # the schedule matters: the default linear one gives other samples


def test_dit_dense_graph_comes_from_the_pipeline(dit_root, dit_run):
    manifest = json.loads(dit_run["dense"].with_suffix(".json").read_text())
    assert manifest["source"]["type"] == "weights" and manifest["source"]["path"] == str(dit_root.resolve())
    assert manifest["preset_spec"]["name"] == "my-dit" and manifest["sparse_layers"] == []


# ------------------------------------------------------------------------------------------------
# UNet pipeline end to end


def test_unet_pipeline_end_to_end(unet_root, unet_run, tmp_path):
    from diffusers import DDPMPipeline

    from sparse_deploy.backends import load_runner
    from sparse_deploy.run import main as run_main
    from sparse_deploy.sampling import image_generators, sample

    manifest = json.loads((unet_run["checkpoint"] / "manifest.json").read_text())
    out = unet_run["diffusers"]
    pipe = DDPMPipeline.from_pretrained(str(out))
    modules = dict(pipe.unet.named_modules())
    assert manifest["masked_layers"]
    for name in manifest["masked_layers"]:
        assert is_nm_sparse(modules[name].weight, 2, 4), name  # convs: groups of 4 input channels per tap
    assert (
        run_main(
            [
                "--engine",
                str(unet_run["sparse"]),
                "--out",
                str(tmp_path / "s"),
                "--num",
                "2",
                "--batch",
                "2",
                "--steps",
                "2",
            ]
        )
        == 0
    )
    assert run_main(["--engine", str(unet_run["sparse"]), "--out", str(tmp_path / "v"), "--vae", str(unet_root)]) == 2
    # DDPM is stochastic: the same per-image generators drive the noise in both loops.
    with load_runner(unet_run["sparse"]) as runner:
        x, _ = sample(runner, runner.preset, batch=2, steps=4, scheduler="ddpm", seed=5)
    with torch.no_grad():
        ref = pipe(batch_size=2, num_inference_steps=4, output_type="np", generator=image_generators(5, 0, 2)).images
    ours = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(ours - ref).max() < 1e-4


# ------------------------------------------------------------------------------------------------
# Learned sigma


def test_learned_sigma_channels_stay_close_to_the_teacher(dit_root):
    import dataclasses

    from sparse_deploy.learn.train import TrainConfig, prepare_run, train_step
    from sparse_deploy.models import example_inputs
    from sparse_deploy.sparsify import SparsityConfig

    def sigma_error(run) -> float:
        inputs = example_inputs(run.preset, 8, seed=1)
        with torch.no_grad():
            student, teacher = run.model(*inputs), run.teacher(*inputs)
        c = run.preset.in_channels
        return float((student[:, c:] - teacher[:, c:]).pow(2).mean() / teacher[:, c:].pow(2).mean())

    def finetune(distil_sigma: bool) -> tuple[float, list[dict]]:
        torch.manual_seed(0)
        config = TrainConfig(
            preset=None,
            out="unused",
            weights=str(dit_root),
            sparsity=SparsityConfig(mode="srste"),
            kd_weight=0.1,
            steps=12,
            batch_size=8,
            lr=5e-4,
            warmup_steps=0,
            data="synthetic:16",
        ).validate()
        run = prepare_run(config, torch.device("cpu"))
        assert run.preset.learned_sigma and run.teacher is not None
        if not distil_sigma:  # the control: the same run with no loss on the variance channels
            run.preset = dataclasses.replace(run.preset, learned_sigma=False)
        rows = [train_step(run, step) for step in range(config.steps)]
        return sigma_error(run), rows

    kept, rows = finetune(True)
    drifted, control_rows = finetune(False)
    assert all(r["loss_sigma"] > 0 for r in rows) and all(r["loss_sigma"] == 0 for r in control_rows)
    # Seen here: 0.028 with the variance distilled, 0.093 without (relative mean squared error).
    assert kept < 0.05 and kept < 0.5 * drifted, (kept, drifted)


# ------------------------------------------------------------------------------------------------
# Our own diffusers output, back in: plain diffusers, then export/build, run and train


TRAIN_FAST = ("--data", "synthetic:8", "--batch-size", "4", "--preview", "0", "--warmup-steps", "0")


@pytest.fixture(scope="module")
def own_output(tmp_path_factory) -> dict[str, Path]:
    """tiny-dit: dense run -> shipped-style fp16 weights -> sparse fine-tune -> <run>/diffusers/."""
    from sparse_deploy import shipped
    from sparse_deploy.learn.cli import main as train_main

    work = tmp_path_factory.mktemp("own")
    assert train_main(["--model", "tiny-dit", "--steps", "2", "--out", str(work / "dense"), *TRAIN_FAST]) == 0
    weights = shipped.pack_weights(work / "dense" / "checkpoint", work / "weights")
    assert (
        train_main(
            [
                "--weights",
                str(weights),
                "--sparsity",
                "srste",
                "--steps",
                "2",
                "--out",
                str(work / "sparse"),
                *TRAIN_FAST,
            ]
        )
        == 0
    )
    return {"work": work, "weights": weights, "out": work / "sparse" / "diffusers", "run": work / "sparse"}


def test_our_output_samples_with_plain_diffusers(own_output):
    from diffusers import DDIMScheduler, DiTTransformer2DModel
    from safetensors.torch import load_file

    out = own_output["out"]
    stored = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}  # fp16 in (the packed weights), fp16 out
    model = DiTTransformer2DModel.from_pretrained(str(out), subfolder="transformer", torch_dtype=torch.float32)
    scheduler = DDIMScheduler.from_pretrained(str(out), subfolder="scheduler")
    assert not scheduler.config.clip_sample and not scheduler.config.set_alpha_to_one
    scheduler.set_timesteps(4)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(x, timestep=t.expand(2), class_labels=torch.tensor([0, 1])).sample
            x = scheduler.step(eps, t, x).prev_sample
    assert torch.isfinite(x).all() and x.shape == (2, 1, 16, 16)
    card = (out / "README.md").read_text()
    assert card.startswith('---\nlibrary_name: "diffusers"') and "2:4" in card


def test_the_toolchain_accepts_its_own_output(own_output, tmp_path):
    from sparse_deploy.build import main as build_main
    from sparse_deploy.learn.cli import main as train_main
    from sparse_deploy.models import build_model
    from sparse_deploy.run import main as run_main
    from sparse_deploy.sparsify import zero_masks

    out = own_output["out"]
    # build --weights <out>: the sparse graph is the folder as it is, the dense one the weights it was tuned from.
    engines = tmp_path / "engines"
    argv = ["--weights", str(out), "--backend", "onnxruntime", "--precision", "fp32", "--max-batch", "4"]
    assert (
        build_main([*argv, "--require-masks", "--export-dir", str(tmp_path / "x"), "--engine-dir", str(engines)]) == 0
    )
    sparse = json.loads((engines / "sparse-fp32.ort.json").read_text())
    assert sparse["source"]["masks"].startswith("weights") and sparse["source"]["path"] == str(out.resolve())
    dense = json.loads((engines / "dense-fp32.ort.json").read_text())
    assert dense["source"]["path"] == str(own_output["weights"].resolve())
    # run --engine <out>: the PyTorch backend on the folder.
    assert run_main(["--engine", str(out), "--out", str(tmp_path / "s"), "--num", "2", "--steps", "2"]) == 0
    record = json.loads((tmp_path / "s" / "run.json").read_text())
    assert record["backend"] == "torch" and record["kind"] == "sparse"
    # train --weights <out>: its zeros are the masks (not pruned again), with the dense weights as the teacher.
    run = tmp_path / "again"
    argv = ["--weights", str(out), "--teacher", str(own_output["weights"]), "--sparsity", "fixed", "--steps", "2"]
    assert train_main([*argv, "--out", str(run), *TRAIN_FAST]) == 0
    coverage = json.loads((run / "coverage.json").read_text())
    assert coverage["mask_start"]["kept_as_is"] and coverage["mask_start"]["count"] == 12
    model, manifest = load_checkpoint(run / "checkpoint")
    start = zero_masks(build_model(get_preset("tiny-dit"), out))
    masks = {k: m.weight_mask for k, m in masked_modules(model).items()}
    assert sorted(masks) == sorted(start) and all(torch.equal(masks[k].cpu(), start[k]) for k in start)
    assert manifest["dense_weights"] == str(own_output["weights"].resolve())  # the teacher: its dense engine
