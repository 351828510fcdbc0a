"""The Python-backend pipeline model: the whole sampling loop per request over BLS, equal to sampling.sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.sampling import sample
from sparse_deploy.triton import model_pipeline
from sparse_deploy.triton.pipeline import PipelineSettings


@pytest.fixture(scope="module")
def denoiser():
    torch.manual_seed(0)
    return build_model(get_preset("tiny-dit"), announce_random=False).eval()


@pytest.fixture()
def pipeline(pb_utils, denoiser):
    calls = []

    def serve(inputs: dict[str, np.ndarray]) -> np.ndarray:
        calls.append(len(inputs["sample"]))
        with torch.no_grad():  # the denoiser model's view: [batch, 1] scalars become [batch]
            return denoiser(
                *(
                    torch.from_numpy(inputs[k].reshape(-1) if k != "sample" else inputs[k])
                    for k in ("sample", "timestep", "class_labels")
                )
            ).numpy()

    pb_utils.models["denoiser"] = serve
    settings = PipelineSettings(preset="tiny-dit", precision="fp32", max_batch=8, default_steps=2)
    model = model_pipeline.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(
                {"parameters": {k: {"string_value": v} for k, v in settings.to_parameters().items()}}
            )
        }
    )
    model.calls = calls
    yield model
    model.finalize()


def test_a_request_samples_what_sampling_sample_draws(pipeline, denoiser, pb_utils):
    request = pb_utils.Request(
        {"seed": np.array([5]), "num_images": np.array([2]), "class_labels": np.array([1, 2]), "steps": np.array([3])},
        json.dumps({"scheduler": "ddim"}),
    )
    (response,) = pipeline.execute([request])
    assert not response.has_error()
    out = response.outputs()
    with torch.no_grad():
        want, labels = sample(
            denoiser, get_preset("tiny-dit"), batch=2, steps=3, scheduler="ddim", seed=5, labels=[1, 2]
        )
    np.testing.assert_allclose(out["samples"], want.numpy(), rtol=1e-4, atol=1e-5)
    assert (
        out["labels"].tolist() == [1, 2] and out["images"].dtype == np.uint8 and out["images"].shape == (2, 16, 16, 1)
    )
    assert pipeline.calls == [2, 2, 2]  # one BLS call per step


def test_bad_requests_and_a_failing_denoiser_get_errors_and_the_model_keeps_serving(pipeline, pb_utils):
    bad = pb_utils.Request({"class_labels": np.array([99])})
    too_many = pb_utils.Request({"num_images": np.array([9])})
    (label_error, batch_error) = pipeline.execute([bad, too_many])
    assert label_error.error().code == "INVALID_ARG" and "unknown class label(s) [99]" in label_error.error().message()
    assert "above the engine's max batch 8" in batch_error.error().message()
    pb_utils.models["denoiser"] = lambda inputs: pb_utils.TritonError("out of memory")
    (failed,) = pipeline.execute([pb_utils.Request({"steps": np.array([1])})])
    assert failed.error().code == "INTERNAL" and failed.error().message() == "denoiser 'denoiser' failed: out of memory"
