"""The noise schedule: what a diffusers folder written here carries, and reading it back."""

from __future__ import annotations

from diffusers import DDIMScheduler

from sparse_deploy.schedule import DEFAULT_SCHEDULE, canonical_schedule, sampling_config, sampling_scheduler


def test_the_sampling_config_is_the_ddim_the_toolchain_samples_with():
    config = sampling_config(None)
    assert config["_class_name"] == "DDIMScheduler" and not config["clip_sample"] and not config["set_alpha_to_one"]
    assert (config["beta_start"], config["beta_end"], config["num_train_timesteps"]) == (0.0001, 0.02, 1000)
    loaded = DDIMScheduler.from_config(config)
    ours = sampling_scheduler("ddim", None)
    assert (
        loaded.alphas_cumprod == ours.alphas_cumprod
    ).all() and loaded.final_alpha_cumprod == ours.final_alpha_cumprod


def test_the_default_schedule_written_out_reads_back_as_the_default():
    assert canonical_schedule(sampling_config(None)) is None
    assert canonical_schedule(None) is None
    # What diffusers' own DDPMScheduler writes (clip_sample on) is a different sampler: kept.
    assert canonical_schedule(DEFAULT_SCHEDULE) == DEFAULT_SCHEDULE
    other = {**sampling_config(None), "beta_schedule": "scaled_linear"}
    assert canonical_schedule(other) == other and sampling_config(other)["beta_schedule"] == "scaled_linear"
