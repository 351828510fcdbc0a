"""Multi-process training and mixed precision: device per rank, DDP wiring, loss scaling, and a real
``torchrun --nproc_per_node 2`` run on CPU (gloo) checked against one process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.testing import assert_close

from sparse_deploy.checkpoint import WEIGHTS, read_manifest
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.learn import train as train_mod
from sparse_deploy.learn.distributed import DistEnv, Distributed, resolve_device, state_digest
from sparse_deploy.settings import DEFAULT_KD_FEATURES
from sparse_deploy.sparsify import SparsityConfig

REPO = Path(__file__).resolve().parents[2]


# --- which device each rank takes --------------------------------------------------------------


def test_each_rank_takes_the_gpu_of_its_local_rank():
    env = DistEnv.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (env.rank, env.local_rank, env.world_size, env.main) == (3, 1, 4, False)
    assert resolve_device("auto", env, cuda_devices=2) == torch.device("cuda", 1)
    assert resolve_device("cuda", env, cuda_devices=2) == torch.device("cuda", 1)
    assert resolve_device("cpu", env, cuda_devices=2) == torch.device("cpu")
    assert resolve_device("auto", env, cuda_devices=0) == torch.device("cpu")
    with pytest.raises(SparseDeployError, match="each rank takes cuda:LOCAL_RANK"):
        resolve_device("cuda:0", env, cuda_devices=2)
    with pytest.raises(SparseDeployError, match="only 1 CUDA device"):
        resolve_device("cuda", env, cuda_devices=1)
    with pytest.raises(SparseDeployError, match="no CUDA GPU is visible"):
        resolve_device("cuda", env, cuda_devices=0)
    alone = DistEnv.from_env({})
    assert (alone.rank, alone.world_size) == (0, 1)
    assert resolve_device("cuda:1", alone, cuda_devices=2) == torch.device("cuda", 1)  # one process may pick its GPU
    with pytest.raises(SparseDeployError, match="inconsistent torchrun environment"):
        DistEnv.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_ddp_gets_the_rank_device_index(monkeypatch):
    seen = []

    def ddp(model, device_ids=None, broadcast_buffers=True):
        seen.append((device_ids, broadcast_buffers))
        return model

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", ddp)
    env = DistEnv(rank=1, local_rank=1, world_size=2)
    Distributed(env, resolve_device("cuda", env, cuda_devices=2)).wrap(nn.Linear(2, 2))
    Distributed(env, torch.device("cpu")).wrap(nn.Linear(2, 2))
    # [1], never [None]; no buffer broadcast (every rank computes its masks itself); CPU: no device ids
    assert seen == [([1], False), (None, False)]
    assert Distributed(DistEnv(), torch.device("cpu")).wrap(model := nn.Linear(2, 2)) is model


def test_the_global_batch_is_split_evenly():
    batch = torch.arange(8)
    assert Distributed(DistEnv(1, 1, 2), torch.device("cpu")).shard(batch).tolist() == [4, 5, 6, 7]
    assert Distributed(DistEnv(), torch.device("cpu")).shard(batch) is batch
    with pytest.raises(SparseDeployError, match="multiple of the 2 ranks"):
        Distributed(DistEnv(0, 0, 2), torch.device("cpu")).check_batch(7)
    a = {"w": torch.ones(2), "m": torch.tensor([True, False])}
    assert state_digest(a) == state_digest({k: v.clone() for k, v in a.items()})
    assert state_digest(a) != state_digest({**a, "w": torch.tensor([1.0, 1.0 + 2**-20])})


# --- mixed precision ----------------------------------------------------------------------------


def test_precision_follows_what_the_gpu_supports():
    bf16 = train_mod.choose_precision("cuda", bf16_supported=True)
    fp16 = train_mod.choose_precision("cuda", bf16_supported=False)
    cpu = train_mod.choose_precision("cpu", bf16_supported=True)
    assert (bf16.dtype, bf16.scaled, bf16.torch_dtype) == ("bf16", False, torch.bfloat16)
    assert (fp16.dtype, fp16.scaled, fp16.torch_dtype) == ("fp16", True, torch.float16)
    assert (cpu.dtype, cpu.scaled, cpu.torch_dtype) == ("fp32", False, None)


def test_fp16_training_step_uses_a_grad_scaler(fmnist_data, tmp_path):
    """The fp16 path as a GPU without bf16 takes it, run on the CPU (autocast and GradScaler work there)."""
    config = train_mod.TrainConfig(
        preset="tiny-dit",
        out=str(tmp_path),
        steps=2,
        batch_size=4,
        preview=0,
        data=fmnist_data,
        sparsity=SparsityConfig(mode="srste"),
    ).validate()
    torch.manual_seed(0)
    run = train_mod.prepare_run(
        config, torch.device("cpu"), amp=train_mod.choose_precision("cuda", bf16_supported=False)
    )
    assert run.amp.dtype == "fp16" and isinstance(run.scaler, torch.amp.GradScaler)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    rows = [train_mod.train_step(run, step) for step in range(2)]
    assert [r["amp"] for r in rows] == ["fp16", "fp16"] and rows[0]["grad_scale"] == 65536.0
    moved = [
        k for k, v in run.model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])
    ]
    assert moved  # the scaled gradients reached the weights (a skipped step would leave them as they were)
    plain = train_mod.prepare_run(config, torch.device("cpu"))
    assert plain.amp.dtype == "fp32" and plain.scaler is None


# --- torchrun, two CPU processes ----------------------------------------------------------------


def _torchrun(args: list[str], tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "sparse_deploy.train",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("checkpoint: ") == 1  # rank 0 alone prints the final line


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / WEIGHTS))


def _same_checkpoint(ddp: Path, one: Path) -> None:
    a, b = _weights(ddp), _weights(one)
    assert a.keys() == b.keys()
    for name in a:
        if a[name].dtype == torch.bool:
            assert torch.equal(a[name], b[name]), name  # the same masks
        else:
            assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


STEPS, BATCH = 3, 8
# A 3-step fine-tune would run at the full rate from its first step with an EMA of decay 0 (a tenth of 3 steps):
# Adam then turns the rounding noise of zero-gradient parameters (the key bias of softmax attention) into
# full-size steps, which no two reduction orders share. The test pins the warm-up and the EMA warm-up instead.
FINE_TUNE_PINNED = {"warmup_steps": 5, "ema_warmup": True}


def _solo(out: Path, data: str, init: Path | None = None) -> Path:
    return train_mod.train(
        train_mod.TrainConfig(
            preset="tiny-dit",
            out=str(out),
            steps=STEPS,
            batch_size=BATCH,
            checkpoint_every=2,
            preview=0,
            data=data,
            device="cpu",
            init=str(init) if init else None,
            sparsity=SparsityConfig(mode="srste", mask_init="sparsegpt") if init else None,
            kd_weight=0.1 if init else 0.0,
            kd_features=DEFAULT_KD_FEATURES if init else 0.0,
            **(FINE_TUNE_PINNED if init else {}),
        )
    )


@pytest.fixture(scope="module")
def solo_dense(tmp_path_factory, fmnist_data) -> Path:
    """One process, dense: the reference of the dense torchrun run and the start of the sparse ones."""
    return _solo(tmp_path_factory.mktemp("solo-dense"), fmnist_data)


@pytest.mark.parametrize("mode", ["dense", "srste"])
def test_torchrun_two_ranks_equal_one_process_at_the_same_global_batch(mode, solo_dense, fmnist_data, tmp_path):
    common = [
        "--model",
        "tiny-dit",
        "--steps",
        str(STEPS),
        "--batch-size",
        str(BATCH),
        "--checkpoint-every",
        "2",
        "--data",
        fmnist_data,
        "--preview",
        "0",
        "--device",
        "cpu",
    ]
    if mode == "srste":  # from the dense checkpoint, masks started by SparseGPT, distilled (the defaults)
        # Block distillation's normaliser is averaged over the ranks, so it too equals one process.
        common += ["--sparsity", "srste", "--init", str(solo_dense), "--warmup-steps", "5", "--ema-warmup"]
        one = _solo(tmp_path / "one", fmnist_data, init=solo_dense)
    else:
        one = solo_dense
    _torchrun([*common, "--out", str(tmp_path / "ddp")], tmp_path)
    ddp = tmp_path / "ddp" / "checkpoint"
    manifest = read_manifest(ddp)
    dist = manifest["distributed"]
    # Both ranks held bit-identical weights, masks and EMA at the checkpoint (else rank 0 could not have written it).
    assert dist["world_size"] == 2 and dist["per_rank_batch"] == BATCH // 2 and len(set(dist["rank_state_sha256"])) == 1
    assert len(dist["rank_state_sha256"]) == 2
    assert manifest["mixed_precision"] == {"autocast": "fp32", "grad_scaler": False, "device": "cpu"}
    assert read_manifest(one)["distributed"]["world_size"] == 1
    if mode == "srste":
        assert manifest["pattern"] == "2:4" and len(manifest["masked_layers"]) == 12
    _same_checkpoint(ddp, one)
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    solo = [json.loads(line) for line in (one.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # one log, written by rank 0
    for r, s in zip(rows, solo, strict=True):  # the logged loss is the global batch's, as one process logs it
        assert r["loss"] == pytest.approx(s["loss"], rel=1e-4)
