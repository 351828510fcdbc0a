"""Training and fp16 export on a real CUDA GPU: the mixed-precision choice, loss scaling, the device
of a rank, and the fp16 parity reference computed on the GPU. Skipped, with the reason, without one."""

from __future__ import annotations

import pytest
import torch

from sparse_deploy import train as train_mod
from sparse_deploy.checkpoint import read_manifest
from sparse_deploy.distributed import DistEnv, resolve_device
from sparse_deploy.sparsify import SparsityConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of PyTorch and a GPU"),
]


def test_training_on_the_gpu_records_its_precision(tmp_path, fmnist_data):
    ckpt = train_mod.train(
        train_mod.TrainConfig(
            preset="tiny-dit",
            out=str(tmp_path / "run"),
            steps=2,
            preview=0,
            data=fmnist_data,
            device="cuda",
            sparsity=SparsityConfig(mode="srste"),
        )
    )
    mp = read_manifest(ckpt)["mixed_precision"]
    want = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert mp == {"autocast": want, "grad_scaler": want == "fp16", "device": "cuda"}


def test_fp16_autocast_with_a_grad_scaler_on_cuda(tmp_path, fmnist_data):
    config = train_mod.TrainConfig(
        preset="tiny-dit",
        out=str(tmp_path),
        steps=3,
        batch_size=8,
        preview=0,
        data=fmnist_data,
        sparsity=SparsityConfig(mode="srste"),
    ).validate()
    torch.manual_seed(0)
    run = train_mod.prepare_run(config, torch.device("cuda", 0), amp=train_mod.MixedPrecision("fp16"))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    rows = [train_mod.train_step(run, step) for step in range(3)]
    assert all(r["amp"] == "fp16" and r["grad_scale"] > 1 for r in rows)
    assert any(not torch.equal(v, before[k]) for k, v in run.model.state_dict().items() if v.dtype.is_floating_point)


def test_a_single_process_takes_cuda_0_and_torchrun_ranks_their_local_gpu():
    assert resolve_device("cuda", DistEnv()) == torch.device("cuda", 0)
    last = torch.cuda.device_count() - 1
    assert resolve_device("auto", DistEnv(rank=last, local_rank=last, world_size=last + 1)) == torch.device(
        "cuda", last
    )


def test_fp16_export_is_checked_against_fp16_arithmetic_on_the_gpu(tmp_path):
    from sparse_deploy.export import ExportConfig, export_all

    graph = export_all(
        ExportConfig(model="tiny-dit", out=tmp_path, precisions=("fp16",), kinds=("sparse",), max_batch=4)
    )[0]
    parity = graph.manifest["parity"]
    assert parity["fp16_reference"].startswith("torch fp16 (cuda)") and parity["passed"]
