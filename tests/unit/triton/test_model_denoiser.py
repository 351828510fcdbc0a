"""The Python-backend denoiser model: one runner call per batch of requests, and a bad request fails alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparse_deploy.backends import load_runner
from sparse_deploy.checkpoint import save_checkpoint
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.triton import model_denoiser


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "checkpoint",
        build_model(get_preset("tiny-dit"), announce_random=False),
        sparsity=None,
    )


@pytest.fixture()
def model(pb_utils, checkpoint):
    denoiser = model_denoiser.TritonPythonModel()
    denoiser.initialize(
        {
            "model_config": json.dumps(
                {"parameters": {"engine": {"string_value": str(checkpoint)}, "device": {"string_value": "cpu"}}}
            )
        }
    )
    yield denoiser
    denoiser.finalize()


def _request(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((batch, 1, 16, 16)).astype(np.float32),
        "timestep": rng.integers(0, 1000, (batch, 1)),
        "class_labels": rng.integers(0, 10, (batch, 1)),
    }


def _direct(checkpoint, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with load_runner(checkpoint, device="cpu") as runner:
        return runner(
            torch.from_numpy(feeds["sample"]),
            torch.from_numpy(feeds["timestep"].reshape(-1)),
            torch.from_numpy(feeds["class_labels"].reshape(-1)),
        ).numpy()


def test_requests_batched_together_get_what_the_runner_gives_each(model, checkpoint, pb_utils):
    feeds = [_request(1, 0), _request(2, 1)]
    responses = model.execute([pb_utils.Request(f) for f in feeds])
    assert [r.has_error() for r in responses] == [False, False]
    for response, f in zip(responses, feeds, strict=True):
        out = response.outputs()["out"]
        assert out.dtype == np.float32 and out.shape == (len(f["sample"]), 1, 16, 16)
        np.testing.assert_allclose(out, _direct(checkpoint, f), rtol=1e-5, atol=1e-5)


def test_a_bad_request_gets_its_own_error_and_its_neighbours_their_outputs(model, checkpoint, pb_utils):
    missing = _request(1, 2)
    missing.pop("class_labels")
    unknown_label = _request(1, 3)
    unknown_label["class_labels"][:] = 1000  # passes Triton's shape check, fails in the model
    good = _request(1, 4)
    responses = model.execute([pb_utils.Request(missing), pb_utils.Request(unknown_label), pb_utils.Request(good)])
    assert (
        responses[0].error().message() == "missing input 'class_labels'" and responses[0].error().code == "INVALID_ARG"
    )
    assert (
        responses[1].has_error() and "IndexError" in responses[1].error().message()
    )  # the merged call failed; alone, it fails alone
    np.testing.assert_allclose(responses[2].outputs()["out"], _direct(checkpoint, good), rtol=1e-5, atol=1e-5)
