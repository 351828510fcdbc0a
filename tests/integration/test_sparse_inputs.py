"""Already-sparse models in (Model Optimizer's ``mts.export`` folders, ``mto.save`` states, apex ASP masks, sparse
checkpoints) and our layer selection back out as Model Optimizer rules.

A model that is already 2:4 is never pruned again: train, export/build and run keep its zeros as the masks, and
``--teacher DENSE`` fine-tunes a mask made elsewhere with our distillation. Runs with the real ``nvidia-modelopt``
(the optional extra ``sparse-deploy[modelopt]``); those tests skip with the reason where it is not installed.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch

from sparse_deploy.build import main as build_main
from sparse_deploy.checkpoint import load_checkpoint
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.learn.cli import main as train_main
from sparse_deploy.learn.modelopt_masks import modelopt_default_layers
from sparse_deploy.learn.train import TrainConfig, prepare_run
from sparse_deploy.masks import nm_mask
from sparse_deploy.models import build_model, short_name
from sparse_deploy.presets import get_preset
from sparse_deploy.run import main as run_main
from sparse_deploy.sparsify import SparsityConfig, masked_modules, select_layers, zero_masks

SKIP_REASON = "NVIDIA Model Optimizer (nvidia-modelopt, the optional extra sparse-deploy[modelopt]) is not installed"
FAST = ("--data", "synthetic:8", "--batch-size", "4", "--preview", "0", "--warmup-steps", "0", "--steps", "2")


@pytest.fixture(scope="module")
def mts():
    return pytest.importorskip("modelopt.torch.sparsity", reason=SKIP_REASON)


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    """A dense tiny DiT as a diffusers model folder (random weights: what matters here is which are zero)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dense") / "tiny-dit"
    build_model(get_preset("tiny-dit"), announce_random=False).net.save_pretrained(str(folder))
    return folder


def _dense_net(dense: Path):
    return build_model(get_preset("tiny-dit"), dense).net.eval()


@pytest.fixture(scope="module")
def exported(mts, dense, tmp_path_factory) -> Path:
    """What a Model Optimizer user ships: mts.sparsify (its default rules), mts.export, save_pretrained."""
    net = _dense_net(dense)
    mts.sparsify(net, "sparse_magnitude", config={"verbose": False})
    mts.export(net)
    folder = tmp_path_factory.mktemp("modelopt") / "exported"
    net.save_pretrained(str(folder))
    return folder


def _masks_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(checkpoint)
    return {name: m.weight_mask.cpu() for name, m in masked_modules(model).items()}


def test_an_exported_model_optimizer_folder_goes_to_engines_as_it_is(exported, dense, tmp_path):
    net = build_model(get_preset("tiny-dit"), exported)
    zeros = zero_masks(net)
    ours = select_layers(net, SparsityConfig()).selected
    assert sorted(zeros) == sorted(modelopt_default_layers(net)) and set(ours) < set(zeros)
    argv = ["--weights", str(exported), "--backend", "onnxruntime", "--precision", "fp32", "--max-batch", "4"]
    engines, graphs = tmp_path / "engines", tmp_path / "export"
    # No dense model is named by the folder: the dense graph needs one, said in one sentence.
    with pytest.raises(SparseDeployError, match="names no dense model.*--dense-checkpoint"):
        from sparse_deploy.export import ExportConfig, export_all

        export_all(ExportConfig(weights=exported, out=graphs, precisions=("fp32",)))
    assert (
        build_main(
            [*argv, "--require-masks", "--kinds", "sparse", "--export-dir", str(graphs), "--engine-dir", str(engines)]
        )
        == 0
    )
    manifest = json.loads((engines / "sparse-fp32.ort.json").read_text())
    assert sorted(manifest["sparse_layers"]) == sorted(zeros)  # every 2:4 layer, none pruned again
    # The dense graph from the dense model it was made from (a diffusers folder given as --dense-checkpoint).
    assert (
        build_main([*argv, "--dense-checkpoint", str(dense), "--export-dir", str(graphs), "--engine-dir", str(engines)])
        == 0
    )
    assert json.loads((engines / "dense-fp32.ort.json").read_text())["source"]["path"] == str(dense.resolve())
    assert run_main(["--engine", str(exported), "--out", str(tmp_path / "s"), "--num", "2", "--steps", "2"]) == 0
    assert json.loads((tmp_path / "s" / "run.json").read_text())["kind"] == "sparse"


def test_a_model_optimizer_mask_is_fine_tuned_with_a_dense_teacher(exported, dense, tmp_path, caplog):
    run = tmp_path / "run"
    argv = ["--weights", str(exported), "--teacher", str(dense), "--sparsity", "srste", "--out", str(run), *FAST]
    assert train_main(argv) == 0
    start = zero_masks(build_model(get_preset("tiny-dit"), exported))
    coverage = json.loads((run / "coverage.json").read_text())
    assert coverage["mask_start"]["kept_as_is"] and sorted(coverage["sparse_layers"]) == sorted(start)
    assert coverage["mask_start"]["outside_selection"]  # Model Optimizer's adaLN/timestep layers: kept too
    manifest = json.loads((run / "checkpoint" / "manifest.json").read_text())
    assert manifest["dense_weights"] == str(dense.resolve()) and manifest["train_config"]["teacher"] == str(dense)
    # The teacher is the dense model, not a copy of the sparse start.
    config = TrainConfig(
        preset=None,
        out="unused",
        weights=str(exported),
        teacher=str(dense),
        sparsity=SparsityConfig(mode="fixed"),
        kd_weight=0.1,
        steps=2,
        data="synthetic:8",
    ).validate()
    prepared = prepare_run(config, torch.device("cpu"))
    teacher = {short_name(k): v for k, v in prepared.teacher.state_dict().items()}
    for name, value in _dense_net(dense).state_dict().items():
        assert torch.equal(teacher[name], value), name
    assert all(torch.equal(m.weight_mask.cpu(), start[k]) for k, m in masked_modules(prepared.model).items())
    # Without --teacher the start distils from itself: said, with the way out.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prepare_run(dataclass_replace(config, teacher=None), torch.device("cpu"))
    assert "--teacher DENSE" in caplog.text


def dataclass_replace(config: TrainConfig, **changes) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_an_mto_save_state_and_apex_asp_masks_import(mts, dense, tmp_path):
    import modelopt.torch.opt as mto

    net = _dense_net(dense)
    ours = select_layers(net, SparsityConfig(), get_preset("tiny-dit")).selected
    rules = json.loads(_printed_rules(dense))
    sparsified = copy.deepcopy(net)
    mts.sparsify(sparsified, [("sparse_magnitude", rules)], config={"verbose": False})
    mto.save(sparsified, tmp_path / "modelopt.pth")
    run = tmp_path / "mto"
    assert (
        train_main(
            [
                "--weights",
                str(dense),
                "--masks",
                str(tmp_path / "modelopt.pth"),
                "--sparsity",
                "fixed",
                "--out",
                str(run),
                *FAST,
            ]
        )
        == 0
    )
    masks = _masks_of(run / "checkpoint")
    assert sorted(masks) == sorted(ours)
    modules = {short_name(n): m for n, m in net.named_modules()}
    assert all(torch.equal(masks[n], nm_mask(modules[n].weight)) for n in ours)  # sparse_magnitude = magnitude

    # apex ASP: <layer>.__weight_mma_mask buffers (one layer pruned against magnitude, to tell them apart).
    state = {}
    for i, name in enumerate(ours[:3]):
        weight = modules[name].weight.detach()
        mask = nm_mask(-weight.abs() if i == 0 else weight)
        state[f"module.{name}.weight"] = weight * mask
        state[f"module.{name}.__weight_mma_mask"] = mask
    torch.save(state, tmp_path / "asp.pt")
    run = tmp_path / "asp"
    assert (
        train_main(
            [
                "--weights",
                str(dense),
                "--masks",
                str(tmp_path / "asp.pt"),
                "--sparsity",
                "fixed",
                "--out",
                str(run),
                *FAST,
            ]
        )
        == 0
    )
    masks = _masks_of(run / "checkpoint")
    assert sorted(masks) == sorted(ours[:3])
    assert torch.equal(masks[ours[0]], nm_mask(-modules[ours[0]].weight.detach().abs()))


def _printed_rules(dense: Path) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert train_main(["--weights", str(dense), "--print-modelopt-rules"]) == 0
    return buffer.getvalue()


def test_our_selection_as_model_optimizer_rules_is_what_it_sparsifies(mts, dense):
    rules = json.loads(_printed_rules(dense))
    net = _dense_net(dense)
    ours = select_layers(net, SparsityConfig(), get_preset("tiny-dit")).selected
    assert rules["nn.Linear"]["*"] is None and rules["nn.Conv2d"]["*"] is None
    mts.sparsify(net, [("sparse_magnitude", rules)], config={"verbose": False})
    sparse = sorted(n for n, m in net.named_modules() if isinstance(m, mts.module.SparseModule) and m.is_sparse)
    assert sparse == sorted(ours)


def test_a_sparse_checkpoint_starts_a_run_only_with_a_dense_teacher(dense, tmp_path, capsys):
    first = tmp_path / "first"
    assert train_main(["--weights", str(dense), "--sparsity", "fixed", "--out", str(first), *FAST]) == 0
    argv = ["--init", str(first / "checkpoint"), "--sparsity", "fixed", "--out", str(tmp_path / "second"), *FAST]
    capsys.readouterr()
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert "is a sparse checkpoint" in err and "--teacher DENSE" in err
    assert train_main([*argv, "--teacher", str(dense)]) == 0
    assert {k: v.tolist() for k, v in _masks_of(tmp_path / "second" / "checkpoint").items()} == {
        k: v.tolist() for k, v in _masks_of(first / "checkpoint").items()
    }
