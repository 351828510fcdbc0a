"""Masked layers, layer selection, the sparsity config, bake and MAC coverage (training: learn/test_masking.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sparse_deploy.errors import SparseDeployError
from sparse_deploy.macs import layer_macs
from sparse_deploy.masks import PATTERN, is_nm_sparse, nm_mask
from sparse_deploy.models import build_model, example_inputs
from sparse_deploy.presets import get_preset
from sparse_deploy.sparsify import (
    SparsityConfig,
    adopt_masks_,
    bake_,
    coverage_report,
    masked_modules,
    select_layers,
    sparsify_,
    zero_masks,
)

DIT_BLOCK_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")


@pytest.fixture(scope="module")
def tiny_dit():
    return build_model(get_preset("tiny-dit"), announce_random=False)


@pytest.fixture(scope="module")
def tiny_unet():
    return build_model(get_preset("tiny-unet"), announce_random=False)


def _fresh(preset: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(get_preset(preset), announce_random=False).eval()


# --- the straight-through estimators -------------------------------------------------------

# --- layer selection -----------------------------------------------------------------------


def test_select_layers_tiny_dit_defaults(tiny_dit):
    choice = select_layers(tiny_dit, SparsityConfig())
    expected = [f"transformer_blocks.{b}.{name}" for b in range(2) for name in DIT_BLOCK_LAYERS]
    assert sorted(choice.selected) == sorted(expected)
    assert choice.skipped == {}


def test_select_layers_tiny_dit_adaln(tiny_dit):
    choice = select_layers(tiny_dit, SparsityConfig(adaln=True))
    expected = [f"transformer_blocks.{b}.{name}" for b in range(2) for name in (*DIT_BLOCK_LAYERS, "norm1.linear")]
    assert sorted(choice.selected) == sorted(expected)
    dense = [n for n in choice.selected if "pos_embed" in n or "proj_out" in n or "emb" in n]
    assert dense == []


def test_select_layers_tiny_unet_skips_io_and_embeddings(tiny_unet):
    choice = select_layers(tiny_unet, SparsityConfig())
    all_layers = {n[4:] for n, m in tiny_unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    kept_dense = {"conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"}
    assert kept_dense <= all_layers
    assert set(choice.selected) == all_layers - kept_dense
    assert "down_blocks.0.resnets.0.conv1" in choice.selected
    assert "mid_block.attentions.0.to_q" in choice.selected


def test_select_layers_reports_ineligible_shapes(tiny_unet):
    config = SparsityConfig(include=("conv_in", "conv_out", "down_blocks.0.resnets.0.conv1"))
    choice = select_layers(tiny_unet, config)
    assert choice.selected == ["down_blocks.0.resnets.0.conv1"]
    assert "1 channels" in choice.skipped["conv_in"]  # C=1: not 2:4 along C
    assert "multiple of 8" in choice.skipped["conv_out"]  # 1 output channel


def test_include_matching_nothing_raises_one_line(tiny_dit):
    with pytest.raises(SparseDeployError) as info:
        select_layers(tiny_dit, SparsityConfig(include=("nope*",)))
    message = str(info.value)
    assert "nope*" in message and "\n" not in message


def test_only_ineligible_layers_raises(tiny_unet):
    with pytest.raises(SparseDeployError, match="no layer is eligible"):
        select_layers(tiny_unet, SparsityConfig(include=("conv_in",)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="magic"), "unknown sparsity mode"),
        (dict(pattern="4:4"), "pattern .4:4. is not supported"),
        (dict(decay=-1.0), "decay"),
        (dict(mask_every=0), "mask-every"),
        (dict(types=("Embedding",)), "unknown layer types"),
    ],
)
def test_sparsity_config_validate(kwargs, match):
    with pytest.raises(SparseDeployError, match=match):
        SparsityConfig(**kwargs).validate()


def test_sparsify_rejects_unknown_layer_names(tiny_dit):
    model = _fresh("tiny-dit")
    with pytest.raises(SparseDeployError, match="not a Linear/Conv2d"):
        sparsify_(model, SparsityConfig(), layers=["transformer_blocks.9.attn1.to_q"])


# --- masks follow the dense weights ---------------------------------------------------------

# --- bake ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny-dit", "tiny-unet"])
def test_bake_leaves_plain_modules_with_exact_zeros(preset):
    model = _fresh(preset)
    names = sparsify_(model, SparsityConfig())
    masks = {n: m.weight_mask.clone() for n, m in masked_modules(model).items()}
    inputs = example_inputs(get_preset(preset), batch=2, seed=3)
    with torch.no_grad():
        before = model(*inputs)
    # Sanity: masking changes the model, so output equality after bake is not vacuous.
    dense = _fresh(preset)
    with torch.no_grad():
        assert not torch.allclose(dense(*inputs), before)

    baked = bake_(model)
    assert sorted(baked) == sorted(names)
    assert masked_modules(model) == {}
    assert not any(k.endswith("weight_mask") for k in model.state_dict())
    modules = {n[4:]: m for n, m in model.named_modules()}
    for name in names:
        layer = modules[name]
        assert type(layer) in (nn.Linear, nn.Conv2d)
        assert not hasattr(layer, "weight_mask")
        assert is_nm_sparse(layer.weight)
        assert torch.equal(layer.weight != 0, masks[name])  # zeros exactly where pruned
    with torch.no_grad():
        after = model(*inputs)
    assert_close(after, before, rtol=0, atol=1e-6)


# --- MACs ----------------------------------------------------------------------------------


def test_linear_and_conv_mac_counts(tiny_dit):
    preset = get_preset("tiny-dit")
    counts = {k[4:]: v for k, v in layer_macs(tiny_dit, example_inputs(preset, 1)).items()}
    tokens = (16 // 4) ** 2  # 16x16 sample, patch 4
    assert counts["transformer_blocks.0.attn1.to_q"] == 32 * 32 * tokens
    assert counts["transformer_blocks.1.ff.net.0.proj"] == 32 * 128 * tokens
    assert counts["transformer_blocks.1.ff.net.2"] == 128 * 32 * tokens
    # One token per sample; block 0's embedder runs twice (diffusers' DiT reuses it for the
    # final layer's conditioning), and the counter adds up every call.
    assert counts["transformer_blocks.1.norm1.emb.timestep_embedder.linear_1"] == 256 * 32
    assert counts["transformer_blocks.0.norm1.emb.timestep_embedder.linear_1"] == 2 * 256 * 32
    assert counts["pos_embed.proj"] == 32 * tokens * 1 * 4 * 4  # out elements x C x R x S
    batch2 = {k[4:]: v for k, v in layer_macs(tiny_dit, example_inputs(preset, 2)).items()}
    assert batch2["transformer_blocks.0.attn1.to_q"] == 2 * counts["transformer_blocks.0.attn1.to_q"]


def test_coverage_report_is_consistent():
    preset = get_preset("tiny-dit")
    model = _fresh("tiny-dit")
    choice = select_layers(model, SparsityConfig())
    sparsify_(model, SparsityConfig(), choice.selected)
    report = coverage_report(model, example_inputs(preset, 1), choice.selected, choice.skipped)
    tokens = 16
    per_block = (4 * 32 * 32 + 2 * 32 * 128) * tokens
    assert report.sparse_macs == 2 * per_block
    assert report.sparse_macs == sum(report.layer_macs[n] for n in choice.selected)
    linear_conv = sum(report.layer_macs.values())
    assert report.model_macs > linear_conv  # attention matmuls are counted too
    assert report.sparse_share == pytest.approx(report.sparse_macs / report.model_macs)
    assert 0 < report.sparse_share < 1
    assert report.effective_macs == report.model_macs - report.sparse_macs // 2
    data = report.to_dict()
    assert data["pattern"] == "2:4" and data["effective_macs"] == report.effective_macs
    assert f"{len(choice.selected)} layers 2:4-sparse" in report.summary()


# --- the one pattern ----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["4:8", "1:4", "2:8"])
def test_other_patterns_are_refused_at_config_time(pattern):
    with pytest.raises(SparseDeployError, match=rf"sparsity pattern '{pattern}' is not supported: .* run 2:4 only"):
        SparsityConfig(pattern=pattern).validate()
    n, m = pattern.split(":")
    # A manifest written when the pattern was two numbers: refused the same way, not baked as 2:4.
    with pytest.raises(SparseDeployError, match="is not supported"):
        SparsityConfig.from_dict({"mode": "srste", "n": int(n), "m": int(m)}).validate()


def test_the_pattern_is_one_constant_recorded_everywhere():
    assert PATTERN == "2:4"
    assert SparsityConfig().to_dict()["pattern"] == "2:4"
    assert SparsityConfig.from_dict({"mode": "ste", "n": 2, "m": 4}).validate().pattern == "2:4"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="fixed", pruned_decay=1.0), "pruned-decay"),
        (dict(mode="srste", pruned_decay=-1.0), "pruned-decay"),
        (dict(mode="maskllm", tau=(1.0, 0.0)), "tau"),
        (dict(mode="maskllm", mask_lr=0.0), "mask-lr"),
    ],
)
def test_new_settings_validate(kwargs, match):
    from sparse_deploy.errors import SparseDeployError

    with pytest.raises(SparseDeployError, match=match):
        SparsityConfig(**kwargs).validate()


def test_zero_masks_find_a_baked_model_and_adopt_masks_keeps_them(tiny_dit):
    import copy

    assert zero_masks(tiny_dit) == {}  # trained or random weights are never exact 2:4
    model = copy.deepcopy(tiny_dit)
    layers = sparsify_(model, SparsityConfig(mode="oneshot"))
    masks = {n: m.weight_mask.clone() for n, m in masked_modules(model).items()}
    bake_(model)
    found = zero_masks(model)
    assert sorted(found) == sorted(layers) and all(torch.equal(found[n], masks[n]) for n in layers)
    # Adopted as they are: a mask that magnitude would not pick stays (no re-pruning).
    fresh = copy.deepcopy(tiny_dit)
    name = layers[0]
    weight = dict(fresh.net.named_modules())[name].weight.detach()
    odd = {name: nm_mask(-weight.abs())}  # keeps the two smallest of four: never magnitude's choice
    kept = adopt_masks_(fresh, odd, SparsityConfig(mode="fixed"))
    module = masked_modules(fresh)[name]
    assert kept == [name] and torch.equal(module.weight_mask, odd[name])
    assert torch.equal(module.weight != 0, odd[name])
    with pytest.raises(SparseDeployError, match="has shape"):
        adopt_masks_(copy.deepcopy(tiny_dit), {name: odd[name][:, :4]}, SparsityConfig(mode="fixed"))
