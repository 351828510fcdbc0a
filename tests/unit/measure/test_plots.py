"""The benchmark plots: each draws exactly what it is given into a PNG, written atomically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sparse_deploy.measure import plots


def _png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _stats(median: float) -> dict:
    return {"median": median, "p10": median * 0.9, "p90": median * 1.1}


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path):
    yield
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # written through temporary names


def test_latency_panels_follow_what_was_measured(tmp_path):
    batches = [{"batch": b, "per_call": {"dense": _stats(0.01 * b), "sparse": _stats(0.008 * b)}} for b in (1, 2, 4)]
    record = {
        "reference": "dense",
        "candidate": "sparse",
        "batches": batches + [{"batch": 8, "skipped": "too big"}],
        "engines": {"dense": {"backend": "onnxruntime", "precision": "fp32"}},
        "model": "tiny-dit",
        "machine": {},
    }
    one_panel = _png(plots.plot_latency(record, tmp_path / "lat.png"))
    for b in batches:
        b["end_to_end"] = {"dense": _stats(1.0), "sparse": _stats(0.8)}
    two_panels = _png(plots.plot_latency(record, tmp_path / "lat2.png"))
    assert two_panels[0] > one_panel[0]  # the end-to-end panel widens the figure


def test_method_plots_draw_the_given_methods_in_the_given_order(tmp_path, monkeypatch):
    summary = {
        m: {"fid": {"n": 2, "mean": f, "std": 1.0, "values": [f - 1, f + 1]}, "macs": 1e6 * f}
        for m, f in (("dense", 10.0), ("srste", 12.0), ("oneshot", 30.0))
    }
    summary["ste"] = {"fid": {}, "macs": 1e6}  # not scored: drawn as nothing
    record = {
        "summary": summary,
        "reference": {"source": "fashion-mnist:test", "num": 100},
        "budget": "5 steps",
        "model": "tiny-dit",
        "settings": {},
    }
    drawn = []
    real = plots.pyplot()
    real_subplots = real.subplots

    def spy_subplots(*a, **k):
        fig, ax = real_subplots(*a, **k)
        original = ax.set_xticks
        ax.set_xticks = lambda ticks, labels=None, **kw: (
            drawn.append(list(labels or [])),
            original(ticks, labels, **kw),
        )[1]
        return fig, ax

    monkeypatch.setattr(real, "subplots", spy_subplots)
    plots.plot_fid_methods(record, ["oneshot", "dense", "srste"], tmp_path / "fid.png")
    assert drawn == [["oneshot", "dense", "srste"]]
    _png(plots.plot_fid_vs_macs(record, ["dense", "srste", "ste"], tmp_path / "macs.png"))
    cost = {"methods": {"srste": _stats(0.5), "fixed": _stats(0.4)}, "model": "tiny-dit", "settings": {"batch_size": 8}}
    _png(plots.plot_train_cost(cost, ["fixed", "srste"], tmp_path / "cost.png"))


def test_sample_grids_side_by_side(tmp_path):
    grids = []
    for name, value in (("dense", 0), ("sparse", 255)):
        path = tmp_path / f"{name}.png"
        Image.fromarray(np.full((16, 16), value, dtype=np.uint8)).save(path)
        grids.append((name, path))
    width, height = _png(plots.plot_samples(grids, tmp_path / "pair.png"))
    assert width > height  # one column per grid
