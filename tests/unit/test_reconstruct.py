"""Calibrated one-shot 2:4 (sparse_deploy.reconstruct): the math exactly, the model walk on tiny presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sparse_deploy.errors import SparseDeployError
from sparse_deploy.masks import from_groups, is_nm_sparse, nm_mask, nm_patterns, to_groups
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.reconstruct import (
    CalibrationConfig,
    init_masks_,
    calibration_batches,
    layer_columns,
    output_error,
    reconstruct_,
    refit_kept,
    sparsegpt_prune,
    wanda_mask,
    weight_2d,
    weight_from_2d,
)
from sparse_deploy.sparsify import SparsityConfig, bake_, masked_modules, select_layers, sparsify_


def _correlated_inputs(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose channels differ in scale and are correlated, as real activations are."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, cols, generator=gen) @ torch.randn(cols, cols, generator=gen) / cols**0.5
    return base * torch.linspace(0.1, 3.0, cols)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_lowers_the_output_error_below_magnitude_and_wanda(seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(32, 64, generator=gen)
    x = _correlated_inputs(2048, 64, seed)
    h = x.T @ x / len(x)
    obs, mask = sparsegpt_prune(w, h)
    assert mask.dtype == torch.bool and is_nm_sparse(obs) and bool((obs[~mask] == 0).all())
    assert int(mask.sum()) == w.numel() // 2
    mag = output_error(w * nm_mask(w), w, h)
    wanda_keep = wanda_mask(w, torch.diagonal(h))
    wanda = output_error(w * wanda_keep, w, h)
    # SparseGPT's pass updates the kept weights: better than its own mask without the update.
    assert output_error(obs, w, h) < output_error(w * mask, w, h) < mag
    # Wanda scales |w| by its input channel's norm: a heuristic (not always below magnitude), but a different mask.
    assert not torch.equal(wanda_keep, nm_mask(w)) and wanda < 1.2 * mag
    # The least-squares refit is the optimum for a given mask: never worse than SparseGPT's pass,
    # and on SparseGPT's mask better than on Wanda's.
    refit = refit_kept(w, mask, h, damp=0.0)
    assert bool((refit[~mask] == 0).all())
    ours = output_error(refit, w, h)
    assert ours <= output_error(obs, w, h) + 1e-9 and ours < output_error(refit_kept(w, wanda_keep, h, damp=0.0), w, h)
    # The error is the relative output error on the inputs themselves.
    direct = ((x @ (refit - w).T) ** 2).sum() / ((x @ w.T) ** 2).sum()
    assert abs(ours - float(direct)) < 1e-4


def test_refit_is_the_least_squares_solution_row_by_row():
    x = _correlated_inputs(300, 16, seed=4)
    w = torch.randn(4, 16)
    mask = nm_mask(w)
    refit = refit_kept(w, mask, x.T @ x, damp=0.0)
    for r in range(4):
        cols = mask[r].nonzero().flatten()
        expected = torch.linalg.lstsq(x[:, cols].double(), (x @ w[r]).double().unsqueeze(1)).solution.flatten()
        assert_close(refit[r, cols].double(), expected, atol=1e-4, rtol=1e-4)


def test_sparsegpt_is_deterministic_and_block_size_does_not_change_the_answer():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(16, 32, generator=gen)
    x = _correlated_inputs(512, 32, seed=3)
    h = x.T @ x
    a = sparsegpt_prune(w, h, block=32)
    b = sparsegpt_prune(w, h, block=32)
    c = sparsegpt_prune(w, h, block=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[1], c[1]) and torch.allclose(a[0], c[0], atol=1e-5)


def test_sparsegpt_zeroes_dead_input_channels_and_refuses_a_wrong_hessian():
    w = torch.randn(8, 16)
    x = torch.randn(256, 16)
    x[:, 3] = 0.0  # a channel that is always zero carries nothing: its weights go
    new, mask = sparsegpt_prune(w, x.T @ x)
    assert bool((new[:, 3] == 0).all()) and is_nm_sparse(new)
    with pytest.raises(SparseDeployError, match="does not fit"):
        sparsegpt_prune(w, torch.eye(8))


def test_conv_columns_match_the_convolution_and_groups_stay_within_a_tap():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 5, 5)
    cols = layer_columns(conv, x)
    out = cols @ weight_2d(conv.weight).T + conv.bias
    expected = conv(x).permute(0, 2, 3, 1).reshape(-1, 16)
    assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(weight_from_2d(weight_2d(conv.weight), conv.weight.shape), conv.weight)
    new, mask = sparsegpt_prune(conv.weight.detach(), cols.T @ cols)
    assert mask.shape == conv.weight.shape and is_nm_sparse(new)  # 2:4 along C for every (k, r, s)


def test_calibration_covers_the_schedule_every_class_and_the_null_label():
    preset = get_preset("tiny-dit")
    images = torch.randn(40, preset.in_channels, preset.sample_size, preset.sample_size)
    labels = torch.arange(40) % preset.num_classes
    alphas = torch.linspace(0.999, 0.01, 1000)
    config = CalibrationConfig(samples=200, batch=64, null_share=0.2)
    batches = calibration_batches(preset, images, labels, alphas, config, seed=0)
    assert [len(b[0]) for b in batches] == [64, 64, 64, 8]
    t = torch.cat([b[1] for b in batches])
    y = torch.cat([b[2] for b in batches])
    assert t.min() < 50 and t.max() > 950  # stratified over the whole schedule
    assert set(y.tolist()) == set(range(preset.num_classes)) | {preset.null_class}
    assert 0.1 < float((y == preset.null_class).float().mean()) < 0.3
    again = calibration_batches(preset, images, labels, alphas, config, seed=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    other = calibration_batches(preset, images, labels, alphas, config, seed=1)
    assert not torch.equal(batches[0][0], other[0][0])


def _tiny_masked(preset_name: str, criterion: str):
    torch.manual_seed(0)
    preset = get_preset(preset_name)
    model = build_model(preset, announce_random=False)
    config = SparsityConfig(mode="fixed", mask_init=criterion, calib_samples=64)
    sparsify_(model, config, select_layers(model, config).selected)
    images = torch.randn(32, preset.in_channels, preset.sample_size, preset.sample_size)
    labels = torch.arange(32) % max(preset.num_classes, 1)
    alphas = torch.linspace(0.999, 0.01, 1000)
    return model, config, preset, images, labels, alphas


@pytest.mark.parametrize("preset_name", ["tiny-dit", "tiny-unet"])
def test_reconstruction_beats_magnitude_on_every_layer_is_exact_2to4_and_deterministic(preset_name):
    model, config, preset, images, labels, alphas = _tiny_masked(preset_name, "sparsegpt")
    twin = _tiny_masked(preset_name, "sparsegpt")[0]
    batches = calibration_batches(preset, images, labels, alphas, CalibrationConfig(samples=64, batch=32), seed=0)
    errors = reconstruct_(model, "sparsegpt", batches, progress=False)
    assert set(errors) == set(masked_modules(model))
    assert all(e["error"] < e["magnitude_error"] for e in errors.values())
    twin_errors = reconstruct_(twin, "sparsegpt", batches, progress=False)
    assert errors == twin_errors
    for name, module in masked_modules(model).items():
        assert torch.equal(module.weight, masked_modules(twin)[name].weight)
        assert bool((module.weight[~module.weight_mask] == 0).all())  # SR-STE's magnitude refresh keeps this mask
        assert torch.equal(nm_mask(module.weight), module.weight_mask)
    baked = bake_(model)
    assert baked and all(is_nm_sparse(m.weight) for n, m in model.named_modules() if n.removeprefix("net.") in baked)


def test_init_masks_magnitude_is_plain_sparsify_and_a_calibrated_start_resets_maskllm_logits():
    preset = get_preset("tiny-dit")
    images = torch.randn(32, preset.in_channels, preset.sample_size, preset.sample_size)
    labels = torch.arange(32) % preset.num_classes
    alphas = torch.linspace(0.999, 0.01, 1000)
    torch.manual_seed(0)
    model = build_model(preset, announce_random=False)
    config = SparsityConfig(mode="fixed")
    selected = select_layers(model, config).selected
    layers, errors = init_masks_(model, config, selected, preset, images, labels, alphas, progress=False)
    assert errors is None and layers == selected
    assert all(torch.equal(nm_mask(m.weight), m.weight_mask) for m in masked_modules(model).values())

    torch.manual_seed(0)
    model = build_model(preset, announce_random=False)
    ml = SparsityConfig(mode="maskllm", mask_init="wanda", calib_samples=32)
    layers, errors = init_masks_(
        model, ml, select_layers(model, ml).selected, preset, images, labels, alphas, progress=False
    )
    assert set(errors) == set(layers)
    for module in masked_modules(model).values():
        chosen = nm_patterns().bool()[module.mask_logits.argmax(dim=-1)]
        argmax_mask = from_groups(chosen.reshape(to_groups(module.weight, 4).shape), module.weight.shape)
        assert torch.equal(argmax_mask, module.weight_mask)


def test_unknown_criterion_and_unsparsified_model_are_refused():
    preset = get_preset("tiny-dit")
    model = build_model(preset, announce_random=False)
    with pytest.raises(SparseDeployError, match="unknown mask criterion"):
        reconstruct_(model, "obs", [], progress=False)
    with pytest.raises(SparseDeployError, match="no masked layers"):
        reconstruct_(model, "wanda", [], progress=False)
    with pytest.raises(SparseDeployError, match="--mask-init"):
        SparsityConfig(mask_init="random").validate()
    with pytest.raises(SparseDeployError, match="--modelopt-default-rules"):
        SparsityConfig(mask_init="sparsegpt", modelopt_default_rules=True).validate()
