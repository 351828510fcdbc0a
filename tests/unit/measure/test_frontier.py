"""The budget curve's headline: "within 5% of the starting model" is judged on the same seeds."""

from __future__ import annotations

import json
import statistics

from sparse_deploy.measure.frontier import frontier


def _record(steps: int, fids: dict[str, dict[int, float]]) -> dict:
    """A methods.json with the fields the join reads: one scored run per (method, seed)."""
    summary, runs = {}, []
    for method, by_seed in fids.items():
        values = list(by_seed.values())
        summary[method] = {
            "label": method,
            "macs": 100 if method in ("start", "dense") else 54,
            "fid": {"n": len(values), "mean": statistics.fmean(values), "std": 0.0, "values": values},
        }
        runs += [{"method": method, "seed": seed, "fid": fid} for seed, fid in by_seed.items()]
    settings = {
        "model": "fmnist-dit",
        "num_samples": 500,
        "reference": "fashion-mnist:test",
        "ref_num": 1000,
        "sample_steps": 25,
        "scheduler": "ddim",
        "steps": steps,
        "macs_budget": None,
    }
    return {
        "settings": settings,
        "dense_checkpoint": {"weights_sha256": "abc"},
        "summary": summary,
        "macs": {"dense_macs": 100},
        "runs": runs,
    }


def test_within_5pct_pairs_each_point_with_the_starting_model_on_its_own_seeds(tmp_path):
    # The starting model is 50 on seed 0 and 60 on seed 1 (all-seed mean 55, bound 57.75). At 600 steps the
    # recipe ran seed 0 only and scores 54: under the all-seed bound, but 8% worse than the starting model on
    # that seed. At 2400 it ran both seeds and is within 5% on each.
    short = _record(600, {"start": {0: 50.0, 1: 60.0}, "fixed": {0: 54.0}})
    long = _record(2400, {"start": {0: 50.0, 1: 60.0}, "fixed": {0: 52.0, 1: 62.0}})
    files = []
    for name, rec in (("s600.json", short), ("s2400.json", long)):
        (tmp_path / name).write_text(json.dumps(rec))
        files.append(tmp_path / name)
    result = frontier(files, axis="steps")
    assert result["start_fid_by_seed"] == {"0": 50.0, "1": 60.0}
    head = result["within_5pct"]["fixed"]
    assert head["first_steps"] == 2400
    assert head["vs_start"]["seeds"] == ["0", "1"] and abs(head["vs_start"]["excess"] - 4 / 110) < 1e-12
    at_600 = next(p for p in result["points"] if p["method"] == "fixed" and p["steps"] == 600)
    assert at_600["vs_start"]["seeds"] == ["0"] and abs(at_600["vs_start"]["excess"] - 0.08) < 1e-12
    # Paired SE over two seeds: both excesses 2/55, so zero spread.
    assert head["vs_start_at_largest"]["excess_se"] == 0.0


def test_a_point_without_a_shared_seed_falls_back_to_the_all_seed_mean(tmp_path):
    rec = _record(600, {"start": {0: 50.0, 1: 60.0}, "fixed": {0: 70.0}})
    rec["runs"] = [r for r in rec["runs"] if r["method"] == "start"] + [{"method": "fixed", "seed": 7, "fid": 70.0}]
    (tmp_path / "m.json").write_text(json.dumps(rec))
    head = frontier([tmp_path / "m.json"], axis="steps")["within_5pct"]["fixed"]
    assert head["first_steps"] is None
    assert head["vs_start_at_largest"]["seeds"] is None and head["vs_start_at_largest"]["start_fid"] == 55.0
