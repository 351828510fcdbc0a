"""The FID Inception pass on a CUDA GPU gives the CPU's features (so GPU runs compare with CPU-cached
reference statistics). Skipped, with the reason, without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse_deploy import fid

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of PyTorch and a GPU"),
]


def test_inception_features_on_the_gpu_match_the_cpu():
    images = np.random.default_rng(3).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    cpu = fid.features_from_images(images, batch_size=8, progress=False)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    gpu = fid.features_from_images(images, batch_size=8, progress=False, device="cuda")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before  # restored afterwards
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
    mu_c, sigma_c = fid.stats_from_features(cpu)
    mu_g, sigma_g = fid.stats_from_features(gpu)
    assert fid.frechet_distance(mu_c, sigma_c, mu_g, sigma_g) < 1e-2
