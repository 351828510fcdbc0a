"""FID of the shipped weights at several classifier-free guidance scales (the shipped-score protocol otherwise).

    .venv/bin/python scripts/fid_guidance_sweep.py 1.5 2.0 3.0

1,000 DDIM-25 samples per scale (``sampling.sample_request`` with seed 0: labels cycled over the classes,
batch i of 100 seeded with i*100),
against the cached 10,000-image test-set statistics; one JSON line per scale. The shipped
manifest's FID (``python -m sparse_deploy.shipped score``) is the unguided one (scale 1).
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sparse_deploy import fid
from sparse_deploy.backends import load_runner
from sparse_deploy.sampling import sample_request, to_uint8
from sparse_deploy.shipped import weights_to_checkpoint


def main(scales: list[float], weights: str = "weights/fmnist-dit", num: int = 1000, batch: int = 100) -> None:
    ref = fid.reference_stats("fashion-mnist:test", None, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = weights_to_checkpoint(weights, Path(tmp) / "dense")
        with load_runner(ckpt, device="cpu") as runner:
            preset = runner.preset
            for scale in scales:
                started, images = time.time(), []
                classes = tuple(range(preset.num_classes))
                for _, x, _ in sample_request(
                    runner,
                    preset,
                    num=num,
                    batch=batch,
                    seed=0,
                    labels=classes,
                    steps=25,
                    scheduler="ddim",
                    guidance=scale,
                ):
                    images.append(to_uint8(x))
                feats = fid.features_from_images(np.concatenate(images), progress=False)
                value = fid.frechet_distance(*fid.stats_from_features(feats), ref.mu, ref.sigma)
                print(
                    json.dumps({"guidance": scale, "fid": value, "samples": num, "seconds": time.time() - started}),
                    flush=True,
                )


if __name__ == "__main__":
    main([float(s) for s in sys.argv[1:]] or [1.5, 2.0])
