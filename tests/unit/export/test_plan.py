"""Where the dense and sparse graphs come from (plan_sources): identities, one-shot, dense parents; no model built."""

from __future__ import annotations

import pytest
import torch

from sparse_deploy import models
from sparse_deploy.checkpoint import save_checkpoint
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.export.config import ExportConfig
from sparse_deploy.export.plan import plan_sources
from sparse_deploy.masks import is_nm_sparse
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.sparsify import SparsityConfig, masked_modules, select_layers, sparsify_


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(
        tmp_path_factory.mktemp("dense") / "checkpoint",
        build_model(get_preset("tiny-dit"), announce_random=False),
        sparsity=None,
        info={"step": 3},
    )


def _sparse_ckpt(path, dense, mode: str = "srste"):
    torch.manual_seed(1)
    model = build_model(get_preset("tiny-dit"), announce_random=False)
    config = SparsityConfig(mode=mode)
    sparsify_(model, config, select_layers(model, config).selected)
    return save_checkpoint(
        path, model, sparsity=config, info={"step": 5, "dense_checkpoint": str(dense) if dense else None}
    )


def test_planning_builds_no_model(monkeypatch, dense_ckpt):
    def refuse(*_a, **_k):
        raise AssertionError("plan_sources built a model")

    monkeypatch.setattr(models, "build_model", refuse)
    preset, sources = plan_sources(ExportConfig(model="tiny-dit"))
    assert preset.name == "tiny-dit" and set(sources) == {"dense", "sparse"}
    plan_sources(ExportConfig(checkpoint=dense_ckpt))


def test_random_init_gives_a_dense_graph_and_its_one_shot_prune(caplog):
    _, sources = plan_sources(ExportConfig(model="tiny-dit", seed=4))
    assert sources["dense"].identity == {"type": "random", "seed": 4, "quality": "meaningless (random init)"}
    sparse = sources["sparse"]
    assert sparse.identity["masks"] == "oneshot-magnitude" and sparse.identity["fine_tuned"] is False
    assert sparse.identity["sparsity"]["mode"] == "oneshot"
    with caplog.at_level("WARNING"):
        model, layers = sparse.load()
    assert "ONE-SHOT" in caplog.text and layers and not masked_modules(model)
    named = dict(model.named_modules())
    assert all(is_nm_sparse(named[f"net.{name}"].weight) for name in layers)
    dense, none = sources["dense"].load()
    assert none == [] and not is_nm_sparse(
        dense.net.transformer_blocks[0].attn1.to_q.weight
    )  # the one-shot copy, not the base


def test_a_dense_checkpoint_is_the_dense_graph_and_require_masks_refuses_the_one_shot(dense_ckpt):
    _, sources = plan_sources(ExportConfig(checkpoint=dense_ckpt, kinds=("dense",)))
    identity = sources["dense"].identity
    assert (
        identity["type"] == "checkpoint"
        and identity["step"] == 3
        and identity["sparsity_mode"] is None
        and len(identity["weights_sha256"]) == 64
    )
    with pytest.raises(SparseDeployError, match="--require-masks forbids one-shot pruning"):
        plan_sources(ExportConfig(checkpoint=dense_ckpt, require_masks=True))


def test_a_sparse_checkpoint_bakes_its_own_masks_and_names_its_dense_parent(tmp_path, dense_ckpt):
    sparse_ckpt = _sparse_ckpt(tmp_path / "sparse", dense_ckpt)
    _, sources = plan_sources(ExportConfig(checkpoint=sparse_ckpt))
    assert sources["sparse"].identity["masks"] == "checkpoint" and sources["sparse"].identity["fine_tuned"] is True
    assert sources["sparse"].identity["sparsity_mode"] == "srste"
    assert sources["dense"].identity["path"] == str(dense_ckpt.resolve())
    model, layers = sources["sparse"].load()
    assert layers and not masked_modules(model)
    oneshot = _sparse_ckpt(tmp_path / "oneshot", dense_ckpt, mode="oneshot")
    assert (
        plan_sources(ExportConfig(checkpoint=oneshot, kinds=("sparse",)))[1]["sparse"].identity["fine_tuned"] is False
    )  # the registry: trains nothing


def test_a_sparse_checkpoint_without_a_dense_parent_says_what_to_pass(tmp_path, dense_ckpt):
    orphan = _sparse_ckpt(tmp_path / "orphan", None)
    with pytest.raises(SparseDeployError, match="pass --dense-checkpoint DIR .* or --kinds sparse"):
        plan_sources(ExportConfig(checkpoint=orphan))
    assert set(plan_sources(ExportConfig(checkpoint=orphan, kinds=("sparse",)))[1]) == {"sparse"}
    _, sources = plan_sources(ExportConfig(checkpoint=orphan, dense_checkpoint=dense_ckpt))
    with pytest.raises(SparseDeployError, match="is a sparse checkpoint .* given as the dense checkpoint"):
        plan_sources(ExportConfig(checkpoint=orphan, dense_checkpoint=orphan))[1]["dense"].load()
    assert sources["dense"].identity["type"] == "checkpoint"


def test_a_checkpoint_of_another_preset_is_refused(dense_ckpt):
    with pytest.raises(SparseDeployError, match="holds preset 'tiny-dit', not 'tiny-unet'"):
        plan_sources(ExportConfig(model="tiny-unet", checkpoint=dense_ckpt))
