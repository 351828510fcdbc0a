"""Calibrated mask starts: Wanda masks, SparseGPT's reconstruction, the calibration set and the model walk."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_deploy.errors import SparseDeployError
from sparse_deploy.learn.reconstruct import (
    CalibrationConfig,
    calibrate_masks_,
    calibration_batches,
    calibration_summary,
    layer_columns,
    output_error,
    sparsegpt_prune,
    wanda_mask,
    weight_2d,
    weight_from_2d,
)
from sparse_deploy.masks import is_nm_sparse, nm_mask, pattern_index
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.sampling import training_scheduler
from sparse_deploy.sparsify import SparsityConfig, masked_modules, select_layers, sparsify_


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return x.double().T @ x.double()


def test_conv_weights_and_columns_agree_on_the_column_order():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 8, 5, 5)
    cols = layer_columns(conv, x)
    out = cols @ weight_2d(conv.weight.detach()).T  # the same product the convolution computes
    torch.testing.assert_close(out.view(2, 25, 4).permute(0, 2, 1).reshape(2, 4, 5, 5), conv(x).detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weight_from_2d(weight_2d(conv.weight), conv.weight.shape), conv.weight)


def test_wanda_scales_magnitudes_by_input_norms():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.equal(wanda_mask(w, torch.ones(4)), nm_mask(w))  # equal inputs: the magnitude mask
    assert wanda_mask(w, torch.tensor([100.0, 100.0, 1.0, 1.0])).tolist() == [[True, True, False, False]]


def test_sparsegpt_is_exact_2_4_and_beats_magnitude_on_correlated_inputs():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(512, 8, generator=gen)
    x = torch.cat([base, base + 0.05 * torch.randn(512, 8, generator=gen)], dim=1)  # pairs of near-duplicate columns
    w = torch.randn(16, 16, generator=gen)
    h = _hessian(x)
    new, mask = sparsegpt_prune(w, h, block=8)
    assert mask.dtype == torch.bool and is_nm_sparse(new) and torch.equal(new != 0, mask & (new != 0))
    magnitude = w * nm_mask(w)
    assert output_error(new, w, h) < output_error(magnitude, w, h)  # the kept weights absorb the pruned ones' error
    with pytest.raises(SparseDeployError, match="does not fit a weight with 16 columns"):
        sparsegpt_prune(w, h[:8, :8])


def test_calibration_batches_are_stratified_labelled_and_seeded():
    preset = get_preset("tiny-dit")
    images = torch.randn(40, 1, 16, 16)
    labels = torch.arange(40) % 10
    alphas = training_scheduler(preset.schedule).alphas_cumprod
    config = CalibrationConfig(samples=20, batch=8, null_share=0.0)
    batches = calibration_batches(preset, images, labels, alphas, config, seed=3)
    assert [len(b[0]) for b in batches] == [8, 8, 4]
    t = torch.cat([b[1] for b in batches])
    assert sorted((t * 20 // len(alphas)).tolist()) == list(range(20))  # one timestep per equal-width bin
    assert sorted(torch.cat([b[2] for b in batches]).tolist()) == sorted((torch.arange(20) % 10).tolist())
    again = calibration_batches(preset, images, labels, alphas, config, seed=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    with pytest.raises(SparseDeployError, match="multiple of 4"):
        CalibrationConfig(block=6).validate()


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_calibrating_a_sparsified_model_keeps_exact_2_4_masks(criterion):
    preset = get_preset("tiny-dit")
    torch.manual_seed(0)
    model = build_model(preset, announce_random=False)
    sparsity = SparsityConfig(mode="maskllm", mask_init=criterion, calib_samples=16)
    sparsify_(model, sparsity, select_layers(model, sparsity).selected)
    images, labels = torch.randn(32, 1, 16, 16).clamp(-1, 1), torch.arange(32) % 10
    errors = calibrate_masks_(model, sparsity, preset, images, labels, training_scheduler(preset.schedule).alphas_cumprod, progress=False)
    assert set(errors) == set(masked_modules(model))
    for module in masked_modules(model).values():
        assert is_nm_sparse(module.weight * module.weight_mask)
        assert torch.equal(module.mask_logits.argmax(-1), pattern_index(module.weight_mask).reshape(-1))  # logits follow the new masks
    summary = calibration_summary(errors, sparsity)
    assert summary["mask_init"] == criterion and summary["calib_samples"] == 16 and summary["mean_output_error"] >= 0
    assert calibrate_masks_(model, SparsityConfig(), preset, images, labels, torch.ones(10)) is None  # magnitude: nothing to do
    assert calibration_summary(None, SparsityConfig()) is None
