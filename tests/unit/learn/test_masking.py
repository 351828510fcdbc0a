"""How masked layers train: SR-STE/STE gradients, MaskLLM-style logits, mask refresh, decoupled decay, loss scaling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sparse_deploy.learn.masking import (
    SRSTE,
    decay_pruned_,
    mask_logit_parameters,
    mask_schedule,
    refresh_masks_,
    set_grad_scale_,
    set_mask_temperature_,
    soft_mask,
    sparsify_for_training_,
    train_masks_,
)
from sparse_deploy.masks import nm_mask
from sparse_deploy.models import build_model
from sparse_deploy.modes import MODES
from sparse_deploy.presets import get_preset
from sparse_deploy.sparsify import SparsityConfig, masked_modules, sparsify_


def _fresh(preset: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(get_preset(preset), announce_random=False).eval()


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 16)
        self.conv = nn.Conv2d(16, 8, 3)


def _masked(mode: str, **kw) -> _Two:
    torch.manual_seed(0)
    model = _Two()
    sparsify_for_training_(model, SparsityConfig(mode=mode, include=("fc", "conv"), **kw), layers=["fc", "conv"])
    return model


@pytest.mark.parametrize("shape", [(8, 16), (4, 8, 3, 3)])
def test_srste_gradient_formula(shape):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = nm_mask(w)
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
    lam = 0.37  # large, so that a missing or misplaced decay term cannot hide in rounding
    out = SRSTE.apply(w, mask, lam)
    assert_close(out, w.detach() * mask)
    out.backward(upstream)
    expected = upstream + lam * (~mask).to(torch.float64) * w.detach()
    assert_close(w.grad, expected, rtol=0, atol=1e-15)
    # Kept weights see only the upstream gradient; pruned ones also the decay towards zero.
    assert_close(w.grad[mask], upstream[mask], rtol=0, atol=0)


def test_plain_ste_passes_dense_gradient_unchanged():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(8, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = nm_mask(w)
    upstream = torch.randn(8, 16, generator=gen, dtype=torch.float64)
    SRSTE.apply(w, mask, 0.0).backward(upstream)
    assert_close(w.grad, upstream, rtol=0, atol=0)
    assert torch.all(w.grad[~mask] != 0)  # pruned weights still receive the dense gradient


def _masked_linear(mode: str, decay: float = 2e-4) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8)).double()
    sparsify_for_training_(model, SparsityConfig(mode=mode, decay=decay), layers=["0"])
    return model


@pytest.mark.parametrize("mode,decay", [("srste", 0.5), ("ste", 0.5), ("fixed", 0.5)])
def test_masked_linear_gradients_by_mode(mode, decay):
    model = _masked_linear(mode, decay)
    layer = model[0]
    assert type(layer).__name__ == "MaskedLinear"
    mask = layer.weight_mask.clone()
    x = torch.randn(5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    upstream = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = model(x)
    assert_close(out, x @ (layer.weight.detach() * mask).t() + layer.bias.detach())
    out.backward(upstream)
    dense_grad = upstream.t() @ x  # dL/d(W*M)
    if mode == "fixed":
        expected = dense_grad * mask
        assert torch.all(layer.weight.grad[~mask] == 0)
    elif mode == "ste":
        expected = dense_grad  # decay is forced to 0 outside srste
    else:
        expected = dense_grad + decay * (~mask).double() * layer.weight.detach()
    assert_close(layer.weight.grad, expected, rtol=0, atol=1e-12)


def test_refresh_masks_follows_dense_weights():
    model = _fresh("tiny-dit")
    names = sparsify_(model, SparsityConfig())
    layers = masked_modules(model)
    assert sorted(layers) == sorted(names)
    for layer in layers.values():
        assert torch.equal(layer.weight_mask, nm_mask(layer.weight))
    assert refresh_masks_(model) == 0.0  # nothing changed yet
    layer = layers["transformer_blocks.0.attn1.to_q"]
    with torch.no_grad():
        row = layer.weight[0, :4]
        dropped = (~layer.weight_mask[0, :4]).nonzero().flatten()
        row[dropped[0]] = 100.0  # a pruned weight becomes the largest of its group
    assert not layer.weight_mask[0, dropped[0]]
    flipped = refresh_masks_(model)
    total = sum(m.weight_mask.numel() for m in layers.values())
    assert flipped == pytest.approx(2 / total)  # one weight in, one out
    assert layer.weight_mask[0, dropped[0]]
    assert layer.weight_mask[0, :4].sum() == 2
    for layer in layers.values():
        assert torch.equal(layer.weight_mask, nm_mask(layer.weight))


def test_fixed_mode_keeps_masks_at_sparsify_time_but_refresh_recomputes():
    # refresh_masks_ is what the loop calls for srste/ste; the loop never calls it for fixed.
    model = _fresh("tiny-dit")
    sparsify_(model, SparsityConfig(mode="fixed"))
    layer = masked_modules(model)["transformer_blocks.1.ff.net.2"]
    before = layer.weight_mask.clone()
    with torch.no_grad():
        layer.weight.mul_(-1)  # same magnitudes: same mask
    refresh_masks_(model)
    assert torch.equal(layer.weight_mask, before)


def test_maskllm_starts_from_the_magnitude_mask_and_learns_logits():
    model = _masked("maskllm", mask_prior=3.0)
    for module in masked_modules(model).values():
        assert module.mask_logits.shape == (module.weight.numel() // 4, 6)
        assert torch.equal(module.weight_mask, nm_mask(module.weight))
        # The hard mask at refresh is the argmax pattern: unchanged at the start.
    assert refresh_masks_(model) == 0.0
    assert len(mask_logit_parameters(model)) == 2

    model.train()
    set_mask_temperature_(model, 1.0, 1.0)
    torch.manual_seed(1)
    x = torch.randn(2, 32)
    model.fc(x).pow(2).sum().backward()
    assert model.fc.mask_logits.grad is not None and model.fc.mask_logits.grad.abs().sum() > 0
    assert model.fc.weight.grad.abs().sum() > 0  # weights learn together with the masks

    # Inference (eval or no_grad) uses the hard mask only, exactly.
    model.eval()
    with torch.no_grad():
        assert_close(model.fc(x), nn.functional.linear(x, model.fc.weight * model.fc.weight_mask, model.fc.bias))


def test_maskllm_soft_mask_hardens_as_the_temperature_falls():
    model = _masked("maskllm", mask_prior=3.0).train()
    spreads = []
    for tau, scale in ((4.0, 1.0), (0.05, 20.0)):
        set_mask_temperature_(model, tau, scale)
        torch.manual_seed(0)
        soft = soft_mask(model.fc)
        spreads.append(float((soft.detach() - model.fc.weight_mask.float()).abs().max()))
    assert spreads[0] > 0.3 and spreads[1] < 1e-6


def test_maskllm_refresh_takes_the_argmax_pattern():
    model = _masked("maskllm")
    with torch.no_grad():
        model.fc.mask_logits.zero_()
        model.fc.mask_logits[:, 5] = 1.0  # pattern (2, 3): keep the last two of every group
    flipped = refresh_masks_(model)
    assert flipped > 0
    want = torch.tensor([False, False, True, True]).repeat(16, 8)
    assert torch.equal(model.fc.weight_mask, want)


def test_decoupled_decay_shrinks_only_pruned_weights():
    model = _masked("srste", pruned_decay=1.0)
    before = model.fc.weight.detach().clone()
    decay_pruned_(model, 0.5)
    mask = model.fc.weight_mask
    assert_close(model.fc.weight[mask], before[mask], rtol=0, atol=0)
    assert_close(model.fc.weight[~mask], before[~mask] * 0.5, rtol=0, atol=0)


def test_mask_schedule_anneals_from_start_to_end():
    config = SparsityConfig(mode="maskllm", tau=(4.0, 0.1), logit_scale=(1.0, 10.0))
    assert mask_schedule(config, 0, 100) == pytest.approx((4.0, 1.0))
    assert mask_schedule(config, 99, 100) == pytest.approx((0.1, 10.0))
    mid_tau, mid_scale = mask_schedule(config, 50, 101)
    assert mid_tau == pytest.approx(math.sqrt(0.4)) and mid_scale == pytest.approx(5.5)


def test_srste_decay_is_exact_after_unscaling():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8)).double()
    sparsify_for_training_(model, SparsityConfig(mode="srste", decay=0.5), layers=["0"])
    x = torch.randn(4, 16, dtype=torch.float64)
    model(x).square().sum().backward()
    reference = model[0].weight.grad.clone()
    model[0].weight.grad = None
    set_grad_scale_(model, 1024.0)
    (1024.0 * model(x).square().sum()).backward()  # what GradScaler.scale(loss).backward() does
    assert_close(model[0].weight.grad / 1024.0, reference, rtol=1e-12, atol=0)


def test_outside_training_a_masked_layer_uses_the_hard_mask_in_every_mode():
    # sparsify_ alone (checkpoints, export, runners) puts no training weight on a layer: W * M, with gradients too.
    for mode in MODES:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 8)).double()
        sparsify_(model, SparsityConfig(mode=mode, decay=0.5), layers=["0"])
        x = torch.randn(3, 16, dtype=torch.float64)
        model(x).sum().backward()
        assert torch.all(model[0].weight.grad[~model[0].weight_mask] == 0), mode
        assert "mask_training" not in model[0].__dict__


def test_every_mode_has_a_training_weight_and_train_masks_follows_the_registry():
    for name, mode in MODES.items():
        model = _Two()
        sparsify_(model, SparsityConfig(mode=name, include=("fc", "conv")), layers=["fc", "conv"])
        train_masks_(model, SparsityConfig(mode=name))
        for module in masked_modules(model).values():
            assert module.mask_training.decay == (SparsityConfig().decay if mode.decays_pruned else 0.0)
        assert bool(mask_logit_parameters(model)) == mode.mask_logits


def test_temperature_and_grad_scale_reach_only_the_layers_of_the_model_they_are_set_on():
    model = _masked("maskllm")
    twin = _masked("maskllm")
    set_mask_temperature_(model, 0.5, 3.0)
    set_grad_scale_(model, 8.0)
    assert (model.fc.mask_training.tau, model.fc.mask_training.scale, model.fc.mask_training.grad_scale) == (
        0.5,
        3.0,
        8.0,
    )
    assert (twin.fc.mask_training.tau, twin.fc.mask_training.scale, twin.fc.mask_training.grad_scale) == (1.0, 1.0, 1.0)
