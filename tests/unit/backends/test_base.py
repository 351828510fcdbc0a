"""The runner interface: inputs checked against the contract before any backend sees them, numpy feeds, lifecycle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse_deploy.backends.base import Runner
from sparse_deploy.contract import BatchProfile, contract_for
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.presets import get_preset


class DoublingRunner(Runner):
    """A stand-in backend: the output is the sample doubled; it counts activations and calls."""

    backend = "doubling"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.activations = 0
        self.calls = []

    def activate(self) -> None:
        if not self._active:
            self.activations += 1
        super().activate()

    def _infer(self, sample, timestep, class_labels):
        self.calls.append((sample.dtype, timestep.dtype, None if class_labels is None else class_labels.dtype))
        return (sample * 2).half()


def _runner(preset: str = "tiny-dit", precision: str = "fp32", manifest: dict | None = None) -> DoublingRunner:
    contract = contract_for(get_preset(preset), precision, BatchProfile(1, 2, 4))
    return DoublingRunner("engines/x.onnx", manifest if manifest is not None else {"kind": "sparse"}, contract)


def _inputs(batch: int = 2, preset: str = "tiny-dit"):
    p = get_preset(preset)
    sample = torch.randn(batch, p.in_channels, p.sample_size, p.sample_size)
    labels = torch.zeros(batch, dtype=torch.int32) if p.num_classes else None
    return sample, torch.full((batch,), 7, dtype=torch.int32), labels


def test_a_call_activates_once_and_returns_cpu_float32():
    runner = _runner()
    sample, timestep, labels = _inputs()
    out = runner(sample, timestep, labels)
    assert out.dtype == torch.float32 and torch.equal(out, (sample * 2).half().float())
    runner(sample, timestep, labels)
    assert runner.activations == 1
    assert runner.calls[0] == (torch.float32, torch.int64, torch.int64)  # ids reach the backend as int64


def test_a_scalar_timestep_is_one_per_sample():
    runner = _runner()
    sample, _, labels = _inputs(3)
    runner(sample, torch.tensor(5), labels)
    assert runner.check_inputs(sample, torch.tensor(5).expand(3), labels) == 3


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s, t, y: (s[:, :, :4], t, y), "does not fit tiny-dit"),
        (lambda s, t, y: (s, t[:1], y), "timestep must have shape"),
        (lambda s, t, y: (s, t, None), "class-conditional: pass class_labels"),
        (lambda s, t, y: (s, t, y[:1]), "class_labels must have shape"),
        (
            lambda s, t, y: (torch.cat([s] * 3), torch.cat([t] * 3), torch.cat([y] * 3)),
            "batch",
        ),  # 6 > the profile's max 4
    ],
)
def test_inputs_the_contract_does_not_accept_are_refused_before_the_backend(change, match):
    runner = _runner()
    with pytest.raises(SparseDeployError, match=match):
        runner(*change(*_inputs()))
    assert runner.calls == [] and runner.activations == 0


def test_an_unconditional_model_refuses_labels():
    runner = _runner("ddpm-cifar10")
    sample, timestep, _ = _inputs(2, "ddpm-cifar10")
    with pytest.raises(SparseDeployError, match="unconditional: class_labels must be None"):
        runner(sample, timestep, torch.zeros(2, dtype=torch.long))
    assert runner(sample, timestep).shape == sample.shape


def test_numpy_feeds_follow_the_contract_dtypes():
    sample, timestep, labels = _inputs()
    feeds = _runner(precision="fp16").numpy_feeds(sample, timestep, labels)
    assert list(feeds) == ["sample", "timestep", "class_labels"]
    assert (feeds["sample"].dtype, feeds["timestep"].dtype, feeds["class_labels"].dtype) == (
        np.float16,
        np.int64,
        np.int64,
    )
    assert all(a.flags["C_CONTIGUOUS"] for a in feeds.values())


def test_kind_sha_and_lifecycle():
    runner = _runner(manifest={"masked_layers": ["a"], "onnx_sha256": "o", "weights_sha256": "w"})
    assert runner.kind == "sparse" and runner.sha256 == "o" and runner.device_type == "cpu" and runner.details == {}
    assert (
        _runner(manifest={}).kind == "dense" and _runner(manifest={"kind": "dense", "engine_sha256": "e"}).sha256 == "e"
    )
    with runner as active:
        assert active._active and runner.preset.name == "tiny-dit"
    assert not runner._active
    assert "DoublingRunner('engines/x.onnx', preset=tiny-dit, precision=fp32)" == repr(runner)


def test_the_base_class_has_no_backend():
    runner = Runner("x", {}, contract_for(get_preset("tiny-dit")))
    with pytest.raises(NotImplementedError):
        runner(*_inputs())
