"""Per-layer masking sensitivity and the layer choice that meets a MACs budget."""

from __future__ import annotations

import pytest
import torch

from sparse_deploy.errors import SparseDeployError
from sparse_deploy.learn.sensitivity import choose_for_budget, layer_sensitivity
from sparse_deploy.masks import nm_mask
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.sampling import training_scheduler


def test_choose_for_budget_takes_the_cheapest_loss_per_mac_first():
    macs = {"a": 400, "b": 400, "c": 200}
    sens = {"a": 4.0, "b": 1.0, "c": 1.0}  # per MAC saved: c 0.01, b 0.005, a 0.02
    got = choose_for_budget(macs, 1000, sens, 0.8)  # need 200 saved: b alone (saves 200)
    assert got.selected == ["b"] and got.kept_dense == ["a", "c"] and got.effective_macs == 800
    assert choose_for_budget(macs, 1000, sens, 1.0).selected == []
    assert choose_for_budget(macs, 1000, sens, 0.5).selected == ["a", "b", "c"]
    with pytest.raises(SparseDeployError, match="out of reach"):
        choose_for_budget(macs, 1000, sens, 0.3)


def test_layer_sensitivity_is_zero_for_an_already_2_4_layer_and_positive_otherwise():
    preset = get_preset("tiny-dit")
    torch.manual_seed(0)
    model = build_model(preset, announce_random=False)
    layers = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.ff.net.2"]
    with torch.no_grad():  # make the first layer exactly 2:4 already: masking it changes nothing
        weight = model.net.transformer_blocks[0].attn1.to_q.weight
        weight.mul_(nm_mask(weight))
    images = torch.randn(16, preset.in_channels, preset.sample_size, preset.sample_size).clamp(-1, 1)
    labels = torch.arange(16) % max(preset.num_classes, 1)
    alphas = training_scheduler(preset.schedule).alphas_cumprod
    sens = layer_sensitivity(model, layers, images, labels, alphas, batches=2, batch_size=8, seed=0)
    assert sens[layers[0]] == pytest.approx(0.0, abs=1e-7) and sens[layers[1]] > 0
    again = layer_sensitivity(model, layers, images, labels, alphas, batches=2, batch_size=8, seed=0)
    assert again == sens  # the same fixed batches every time
