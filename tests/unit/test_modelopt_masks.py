"""NVIDIA Model Optimizer's masks on our models (its own code), and its outputs / ASP's / baked zeros imported.

Tests that run Model Optimizer skip with a reason where ``nvidia-modelopt`` is not installed
(the optional extra ``sparse-deploy[modelopt]``); the importers that need no Model Optimizer always run.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from sparse_deploy.errors import SparseDeployError
from sparse_deploy.masks import PATTERN_M, PATTERN_N, is_nm_sparse, nm_mask, to_groups
from sparse_deploy.models import build_model, short_name
from sparse_deploy.modelopt_masks import (
    MODELOPT_MODES,
    masks_from_asp_state_dict,
    masks_from_modelopt_state,
    masks_from_zeros,
    modelopt_default_layers,
    modelopt_masks,
    modelopt_rules,
)
from sparse_deploy.presets import get_preset
from sparse_deploy.sparsify import SparsityConfig, bake_, select_layers, sparsify_

SKIP_REASON = "NVIDIA Model Optimizer (nvidia-modelopt, the optional extra sparse-deploy[modelopt]) is not installed"


@pytest.fixture(scope="module")
def mts():
    return pytest.importorskip("modelopt.torch.sparsity", reason=SKIP_REASON)


@pytest.fixture(scope="module")
def mto(mts):
    import modelopt.torch.opt as mto

    return mto


def _tiny(preset: str = "tiny-dit", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(get_preset(preset), announce_random=False).eval()


@pytest.fixture(scope="module")
def tiny_dit():
    return _tiny()


@pytest.fixture(scope="module")
def ours(tiny_dit):
    return select_layers(tiny_dit, SparsityConfig()).selected


def _calibration(preset_name: str = "tiny-dit", batches: int = 2, batch: int = 8) -> list[tuple]:
    """Noise-like inputs at timesteps over the schedule, all classes and the null label (as guidance uses it)."""
    preset = get_preset(preset_name)
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(batches):
        sample = torch.randn(batch, preset.in_channels, preset.sample_size, preset.sample_size, generator=gen)
        timestep = torch.randint(0, 1000, (batch,), generator=gen)
        labels = None
        if preset.num_classes:
            labels = torch.randint(0, preset.num_classes, (batch,), generator=gen)
            labels[::4] = preset.null_class
        out.append((sample, timestep, labels))
    return out


def _weights(model: nn.Module) -> dict[str, nn.Module]:
    return {short_name(n): m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _assert_exact_2_4(masks: dict[str, torch.Tensor], model: nn.Module) -> None:
    modules = _weights(model)
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == modules[name].weight.shape, name
        kept = to_groups(mask, PATTERN_M).sum(dim=-1)
        assert bool((kept == PATTERN_N).all()), f"{name} is not exact 2:4 along its reduction axis"


# --- Model Optimizer computes the masks ------------------------------------------------------------


@pytest.mark.parametrize("mode", MODELOPT_MODES)
def test_modes_give_exact_2_4_masks_on_the_requested_layers_only(mts, tiny_dit, ours, mode):
    masks = modelopt_masks(tiny_dit, mode, _calibration(), layers=ours)
    assert list(masks) == ours
    _assert_exact_2_4(masks, tiny_dit)


def test_sparse_magnitude_is_the_magnitude_mask_and_sparsegpt_differs(mts, tiny_dit, ours):
    modules = _weights(tiny_dit)
    magnitude = modelopt_masks(tiny_dit, "sparse_magnitude", None, layers=ours)
    sparsegpt = modelopt_masks(tiny_dit, "sparsegpt", _calibration(), layers=ours)
    for name in ours:  # ASP's best-pattern search equals our magnitude mask (random weights: no ties)
        assert torch.equal(magnitude[name], nm_mask(modules[name].weight)), name
    assert any(not torch.equal(magnitude[n], sparsegpt[n]) for n in ours)  # the Hessian changed the choice somewhere


@pytest.mark.parametrize("mode", MODELOPT_MODES)
def test_default_rules_also_take_the_layers_we_leave_dense(mts, tiny_dit, ours, mode):
    masks = modelopt_masks(tiny_dit, mode, _calibration())
    assert set(ours) < set(masks)
    assert list(masks) == modelopt_default_layers(tiny_dit, mode)
    extra = set(masks) - set(ours)
    assert {n for n in extra if n.endswith("norm1.linear")}, "adaLN modulation"
    assert {n for n in extra if "timestep_embedder" in n}, "timestep embedder"
    assert {"proj_out_1", "proj_out_2"} <= extra, "output layers"
    assert "pos_embed.proj" not in masks  # 1 input channel: its size check skips it
    _assert_exact_2_4(masks, tiny_dit)


def test_input_model_is_untouched(mts, ours):
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = {n: type(m) for n, m in model.named_modules()}
    for mode in MODELOPT_MODES:
        modelopt_masks(model, mode, _calibration(), layers=ours)
        modelopt_masks(model, mode, _calibration())
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert not model.training


def test_modelopt_rules_select_exactly_our_layers_in_modelopt(mts, tiny_dit, ours):
    rules = modelopt_rules(ours, tiny_dit)
    assert rules["nn.Conv2d"] == {"*": None}  # our DiT layers are all Linear; Conv2d must still be written out
    assert rules["nn.Linear"]["*"] is None and len(rules["nn.Linear"]) == len(ours) + 1
    # As a Model Optimizer user would run it: on the diffusers model, with the rules as the mode's config.
    net = copy.deepcopy(tiny_dit.net)
    mts.sparsify(net, [("sparse_magnitude", rules)], config={"verbose": False})
    sparse = [
        n
        for n, m in net.named_modules()
        if isinstance(m, mts.module.SparseModule)
        and m.is_sparse
        and m._weight_mask is not None
        and not bool(m._weight_mask.all())
    ]
    assert sparse == ours
    # On the Denoiser itself, with the net. prefix.
    wrapped = copy.deepcopy(tiny_dit)
    mts.sparsify(wrapped, [("sparse_magnitude", modelopt_rules(ours, prefix="net."))], config={"verbose": False})
    sparse = [
        short_name(n)
        for n, m in wrapped.named_modules()
        if isinstance(m, mts.module.SparseModule) and m._weight_mask is not None and not bool(m._weight_mask.all())
    ]
    assert sparse == ours


def test_modelopt_rules_refuse_unknown_layers(tiny_dit):
    with pytest.raises(SparseDeployError, match="not a Linear/Conv2d"):
        modelopt_rules(["transformer_blocks.0.attn1.to_z"], tiny_dit)
    rules = modelopt_rules(["a.b"])  # without a model: under both types
    assert rules == {"nn.Linear": {"*": None, "a.b": {}}, "nn.Conv2d": {"*": None, "a.b": {}}}


def test_sparsegpt_across_kernel_taps_is_refused_naming_the_layer(mts):
    unet = _tiny("tiny-unet")
    with pytest.raises(SparseDeployError, match=r"layer '[^']*conv[^']*'.*across kernel taps"):
        modelopt_masks(unet, "sparsegpt", _calibration("tiny-unet", batches=1, batch=2))
    # Its magnitude mode groups along input channels per tap, as TensorRT does: accepted.
    masks = modelopt_masks(unet, "sparse_magnitude", None)
    assert any(mask.dim() == 4 and mask.shape[-1] == 3 for mask in masks.values())
    _assert_exact_2_4(masks, unet)


def test_bad_inputs_are_one_sentence(mts, tiny_dit):
    with pytest.raises(SparseDeployError, match="unknown Model Optimizer sparsity mode"):
        modelopt_masks(tiny_dit, "wanda", None)
    with pytest.raises(SparseDeployError, match="needs calibration"):
        modelopt_masks(tiny_dit, "sparsegpt", [])
    with pytest.raises(SparseDeployError, match="calibration batch 0"):
        modelopt_masks(tiny_dit, "sparsegpt", [torch.zeros(2, 1, 16, 16)])
    with pytest.raises(SparseDeployError, match="left 1 requested layer"):
        modelopt_masks(tiny_dit, "sparse_magnitude", None, layers=["pos_embed.proj"])


def test_missing_modelopt_says_how_to_install(monkeypatch, tiny_dit):
    for name in ("modelopt", "modelopt.torch", "modelopt.torch.opt", "modelopt.torch.sparsity"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        SparseDeployError, match=r"NVIDIA Model Optimizer is not installed.*pip install 'sparse-deploy\[modelopt\]'"
    ):
        modelopt_masks(tiny_dit, "sparse_magnitude", None)


# --- importing Model Optimizer's outputs ---------------------------------------------------------------


def test_exported_and_saved_pretrained_model_round_trips_through_masks_from_zeros(mts, tiny_dit, tmp_path):
    expected = modelopt_masks(tiny_dit, "sparsegpt", _calibration())
    # What a Model Optimizer user ships: sparsify, export (bakes the zeros), save_pretrained.
    net = copy.deepcopy(tiny_dit.net)
    mts.sparsify(
        net,
        "sparsegpt",
        config={
            "data_loader": _calibration(),
            "verbose": False,
            "collect_func": lambda b: (b[0], {"timestep": b[1], "class_labels": b[2], "return_dict": False}),
        },
    )
    mts.export(net)
    net.save_pretrained(tmp_path / "exported")
    loaded = build_model(get_preset("tiny-dit"), tmp_path / "exported")
    found = masks_from_zeros(loaded)
    assert list(found) == list(expected)
    assert all(torch.equal(found[n], expected[n]) for n in expected)
    # The kept weights are the dense ones: Model Optimizer threw SparseGPT's update away.
    dense, baked = _weights(tiny_dit), _weights(loaded)
    for name, mask in found.items():
        assert torch.equal(baked[name].weight, dense[name].weight * mask), name


def test_masks_from_zeros_round_trips_our_bake_and_fills_groups_deterministically(ours):
    model = _tiny()
    sparsify_(model, SparsityConfig(mode="oneshot"))
    masks = {n: m.weight_mask.clone() for n, m in _weights(model).items() if hasattr(m, "weight_mask")}
    bake_(model)
    found = masks_from_zeros(model)
    assert list(found) == ours and all(torch.equal(found[n], masks[n]) for n in ours)
    # A group with more than 2 zeros: its non-zeros, then the lowest-indexed zeros.
    layer = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0, 0, 0, 5, 0, 0, 0, 0], [1, 0, 2, 0, 0, 3, 0, 0]], dtype=torch.float32))
    mask = masks_from_zeros(nn.Sequential(layer))["0"]
    assert mask.tolist() == [
        [True, False, False, True, True, True, False, False],
        [True, False, True, False, True, True, False, False],
    ]
    # All zeros (a zero-initialised layer) and dense layers are not "already sparse".
    assert (
        masks_from_zeros(
            nn.Sequential(
                nn.Linear(8, 2),
                nn.Linear(8, 8)
                .requires_grad_(False)
                .apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None),
            )
        )
        == {}
    )


@pytest.mark.parametrize("export", [False, True], ids=["masks", "exported"])
def test_masks_from_modelopt_state(mts, mto, tiny_dit, ours, tmp_path, export):
    expected = modelopt_masks(tiny_dit, "sparse_magnitude", None, layers=ours)
    net = copy.deepcopy(tiny_dit.net)
    mts.sparsify(net, [("sparse_magnitude", modelopt_rules(ours))], config={"verbose": False})
    if export:
        mts.export(net)
        found = masks_from_modelopt_state(tiny_dit, modelopt_state=mto.modelopt_state(net), state_dict=net.state_dict())
    else:
        mto.save(net, tmp_path / "modelopt.pth")
        found = masks_from_modelopt_state(tiny_dit, tmp_path / "modelopt.pth")
    assert list(found) == ours and all(torch.equal(found[n], expected[n]) for n in ours)
    # Saved from a Denoiser (names with net.) works too.
    wrapped = copy.deepcopy(tiny_dit)
    mts.sparsify(wrapped, [("sparse_magnitude", modelopt_rules(ours, prefix="net."))], config={"verbose": False})
    found = masks_from_modelopt_state(
        tiny_dit, {"modelopt_state": mto.modelopt_state(wrapped), "model_state_dict": wrapped.state_dict()}
    )
    assert list(found) == ours


def test_masks_from_modelopt_state_refuses_what_is_not_one(mts, tiny_dit, tmp_path):
    with pytest.raises(SparseDeployError, match="does not exist"):
        masks_from_modelopt_state(tiny_dit, tmp_path / "missing.pth")
    with pytest.raises(SparseDeployError, match="not one mto.save wrote"):
        masks_from_modelopt_state(tiny_dit, {"state_dict": {}})
    with pytest.raises(SparseDeployError, match="applied no weight sparsity"):
        masks_from_modelopt_state(
            tiny_dit, modelopt_state={"modelopt_state_dict": [], "modelopt_version": "0"}, state_dict={}
        )


def test_masks_from_asp_state_dict(tiny_dit, ours):
    modules = _weights(tiny_dit)
    state = {}
    for name in ours:
        mask = nm_mask(modules[name].weight)
        state[f"module.net.{name}.weight"] = modules[name].weight.detach() * mask  # ASP zeroes what it prunes
        state[f"module.net.{name}.__weight_mma_mask"] = mask
    state["module.net.proj_out_1.__weight_mma_mask"] = torch.ones_like(modules["proj_out_1"].weight, dtype=torch.bool)
    masks = masks_from_asp_state_dict(state, tiny_dit)
    assert list(masks) == ours and all(torch.equal(masks[n], nm_mask(modules[n].weight)) for n in ours)
    _assert_exact_2_4(masks, tiny_dit)

    name = ours[0]
    bad = dict(state)
    bad[f"module.net.{name}.weight"] = modules[name].weight.detach()
    with pytest.raises(SparseDeployError, match=f"layer '{name}'.*non-zero where its ASP mask prunes"):
        masks_from_asp_state_dict(bad)
    across = {f"net.{name}.__weight_mma_mask": torch.tensor([[True, True, True, False] * 8] * 32)}
    with pytest.raises(SparseDeployError, match=f"apex ASP mask for layer '{name}' keeps more than 2 of 4"):
        masks_from_asp_state_dict(across)
    with pytest.raises(SparseDeployError, match="no computed ASP mask"):
        masks_from_asp_state_dict(
            {"net.proj_out_1.__weight_mma_mask": state["module.net.proj_out_1.__weight_mma_mask"]}
        )
    assert is_nm_sparse(masks[name].float())
