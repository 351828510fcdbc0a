"""The measure package's contracts with the rest: one seeding rule, public runner facts, MACs without re-checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse_deploy.backends import load_runner
from sparse_deploy.checkpoint import save_checkpoint
from sparse_deploy.measure.engine_latency import engine_info
from sparse_deploy.measure.methods import draw_samples, fid_sampling_seed
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.sampling import image_seed, sample, sample_request, to_uint8


@pytest.fixture(scope="module")
def tiny_runner(tmp_path_factory):
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path_factory.mktemp("measure") / "dense",
        build_model(get_preset("tiny-dit"), announce_random=False),
        sparsity=None,
    )
    with load_runner(ckpt, device="cpu") as runner:
        yield runner


def test_a_request_is_seeded_image_by_image_with_one_rule(tiny_runner):
    preset = tiny_runner.preset
    drawn = list(sample_request(tiny_runner, preset, num=5, batch=2, seed=7, labels=(1, 3, 5), steps=1))
    assert [first for first, _, _ in drawn] == [0, 2, 4]
    assert [y.tolist() for _, _, y in drawn] == [[1, 3], [5, 1], [3]]  # labels cycled over the whole request
    x, _ = sample(tiny_runner, preset, batch=2, steps=1, seed=7, first=2, labels=[5, 1])
    assert torch.equal(drawn[1][1], x)
    # Image i is the same whatever the batch size: the whole request in one batch draws the same images.
    whole, _ = sample(tiny_runner, preset, batch=5, steps=1, seed=7, labels=[1, 3, 5, 1, 3])
    torch.testing.assert_close(torch.cat([x for _, x, _ in drawn]), whole, rtol=1e-5, atol=1e-5)
    assert len({image_seed(s, i) for s in range(64) for i in range(64)}) == 64 * 64


def test_seeds_a_batch_apart_draw_different_images(tiny_runner):
    """Under the old rule (batch seed = seed + start) seeds 0 and 2 with batch 2 shared images; now none do."""
    preset = tiny_runner.preset
    a = torch.cat([x for _, x, _ in sample_request(tiny_runner, preset, num=4, batch=2, seed=0, labels=(1,), steps=1)])
    b = torch.cat([x for _, x, _ in sample_request(tiny_runner, preset, num=4, batch=2, seed=2, labels=(1,), steps=1)])
    assert all(not torch.allclose(a[i], b[j]) for i in range(4) for j in range(4))


def test_fid_samples_keep_their_seeds(tiny_runner):
    """The method comparison's (and the shipped score's) samples are the ones its published numbers came from."""
    preset = tiny_runner.preset
    images, labels = draw_samples(tiny_runner, preset, num=5, seed=1, steps=1, scheduler="ddim", batch=3)
    want = []
    for start in (0, 3):
        n = min(3, 5 - start)
        x, _ = sample(
            tiny_runner,
            preset,
            batch=n,
            steps=1,
            scheduler="ddim",
            seed=1 * 1_000_003,
            first=start,
            labels=[(start + j) % preset.num_classes for j in range(n)],
        )
        want.append(to_uint8(x))
    assert fid_sampling_seed(1) == 1_000_003
    assert np.array_equal(images, np.concatenate(want)) and labels.tolist() == [0, 1, 2, 3, 4]


def test_runners_say_where_they_compute_and_what_they_run(tiny_runner):
    assert tiny_runner.device_type == "cpu" and tiny_runner.details == {}
    assert tiny_runner.sha256 == tiny_runner.manifest["weights_sha256"]
    info = engine_info(tiny_runner)
    assert info["device"] == "cpu" and info["backend"] == "torch" and info["sha256"] == tiny_runner.sha256


def test_mac_report_counts_an_unverified_export(monkeypatch):
    """Counting MACs reads the graph's structure: no ONNX Runtime parity or sparsity check runs for it."""
    from sparse_deploy import export
    from sparse_deploy.measure.macs_check import mac_report

    def refuse(*_a, **_k):
        raise AssertionError("mac_report must not re-verify the export")

    monkeypatch.setattr(export, "check_parity", refuse)
    monkeypatch.setattr(export, "check_sparsity", refuse)
    report = mac_report("tiny-dit")
    assert report["onnx_check"]["disagreeing_layers"] == [] and report["onnx_check"]["onnx_total"] > 0


def test_bench_is_the_measure_cli():
    from sparse_deploy import bench
    from sparse_deploy.measure import cli

    assert bench.main is cli.main
