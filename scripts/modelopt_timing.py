"""How long NVIDIA Model Optimizer takes to compute its 2:4 masks on the shipped model (sparse_deploy.modelopt_masks).

    OMP_NUM_THREADS=1 python scripts/modelopt_timing.py [--weights weights/fmnist-dit] [--batches 8] [--batch 64] [--repeat 2]

Calibration as the reconstruction one-shot uses it: noised training images at timesteps spread over
0..999 (stratified), their own labels with about 10% replaced by the null label. Each of
``sparse_magnitude`` / ``sparsegpt`` runs with Model Optimizer's default rules and with our layer
selection; the best of ``--repeat`` wall-clock times is printed with the layer counts, as JSON on the
last line. torch runs on one thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def calibration(preset, batches: int, batch: int, seed: int = 0) -> list[tuple]:
    from sparse_deploy.data import make_dataset
    from sparse_deploy.sampling import training_scheduler

    images, labels = make_dataset(preset, None, None).tensors
    gen = torch.Generator().manual_seed(seed)
    total = batches * batch
    pick = torch.randperm(len(images), generator=gen)[:total]
    x0, y = images[pick].float(), labels[pick].clone()
    # Timesteps stratified over 0..999 (one per stratum), in random order.
    strata = torch.linspace(0, 1000, total + 1)
    t = (strata[:-1] + torch.rand(total, generator=gen) * (strata[1:] - strata[:-1])).long().clamp_(0, 999)
    t = t[torch.randperm(total, generator=gen)]
    y[torch.rand(total, generator=gen) < 0.1] = preset.null_class
    alphas = training_scheduler(preset.schedule).alphas_cumprod[t].float().view(-1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=gen)
    xt = alphas.sqrt() * x0 + (1 - alphas).sqrt() * noise
    return [(xt[i : i + batch], t[i : i + batch], y[i : i + batch]) for i in range(0, total, batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fmnist-dit")
    parser.add_argument("--weights", default="weights/fmnist-dit")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import importlib.metadata

    from sparse_deploy.models import build_model
    from sparse_deploy.modelopt_masks import MODELOPT_MODES, modelopt_default_layers, modelopt_masks
    from sparse_deploy.presets import get_preset
    from sparse_deploy.sparsify import SparsityConfig, select_layers

    preset = get_preset(args.preset)
    model = build_model(preset, args.weights).eval()
    ours = select_layers(model, SparsityConfig()).selected
    batches = calibration(preset, args.batches, args.batch)
    null_share = float(torch.cat([b[2] for b in batches]).eq(preset.null_class).float().mean())
    modelopt_masks(model, "sparse_magnitude", None, layers=ours)  # warm-up: the first call imports Model Optimizer

    rows = []
    for mode in MODELOPT_MODES:
        for label, layers in (("default rules", None), ("our layers", ours)):
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                masks = modelopt_masks(model, mode, batches, layers)
                times.append(time.perf_counter() - start)
            rows.append(
                {
                    "mode": mode,
                    "rules": label,
                    "layers": len(masks),
                    "seconds": round(min(times), 3),
                    "all_seconds": [round(s, 3) for s in times],
                }
            )
            print(
                f"{mode:16s} {label:14s} {len(masks):3d} layers  {min(times):7.3f} s  (runs: {', '.join(f'{s:.3f}' for s in times)})"
            )
    default = modelopt_default_layers(model, "sparse_magnitude")
    result = {
        "model": args.weights,
        "dtype": str(next(model.parameters()).dtype),
        "calibration": {"batches": args.batches, "batch": args.batch, "null_label_share": round(null_share, 3)},
        "rows": rows,
        "default_rules_extra_layers": [n for n in default if n not in ours],
        "modelopt": importlib.metadata.version("nvidia-modelopt"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "loadavg_at_end": open("/proc/loadavg").read().split()[:3] if platform.system() == "Linux" else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
