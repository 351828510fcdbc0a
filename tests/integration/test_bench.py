"""Measurements (sparse_deploy.measure) on tiny presets: interleaving, statistics, ratios, ONNX MACs, report, methods.

Nothing here asserts a timing: only structure, order and exact arithmetic.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_deploy.build import BuildConfig, build_engines
from sparse_deploy.checkpoint import save_checkpoint
from sparse_deploy.contract import contract_for
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.export import ExportConfig, export_graph
from sparse_deploy.macs import _einsum_macs, onnx_macs
from sparse_deploy.measure import machine
from sparse_deploy.measure.cli import build_parser, default_engines, main
from sparse_deploy.measure.engine_latency import LatencyConfig, latency_filename, run_latency
from sparse_deploy.measure.grids import sample_grids
from sparse_deploy.measure.machine import engine_memory
from sparse_deploy.measure.macs_check import mac_report, macs_crosscheck
from sparse_deploy.measure.methods import MethodsConfig, draw_methods, methods_unsupported, run_methods
from sparse_deploy.measure.recipes import (
    DEFAULT_METHODS,
    METHOD_LABELS,
    METHOD_RECIPES,
    METHODS,
    MODELOPT_METHODS,
    TRAIN_COST_METHODS,
    method_train_config,
    trains,
)
from sparse_deploy.measure.report import write_report
from sparse_deploy.measure.spread import methods_spread_lines, methods_time_line
from sparse_deploy.measure.train_cost import run_train_cost
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.sampling import save_grid
from sparse_deploy.timing import clock_name, interleaved_order, ratio, run_interleaved, spread, summarize, time_call

# ----------------------------------------------------------------------------- pure parts


def test_interleaved_order_alternates():
    assert interleaved_order(["A", "B"], 3) == ["A", "B", "A", "B", "A", "B"]
    assert interleaved_order(["A", "B", "C"], 2) == ["A", "B", "C", "A", "B", "C"]
    assert interleaved_order(["A"], 0) == []


def test_run_interleaved_calls_a_b_a_b_and_drops_warmup():
    calls: list[str] = []
    tasks = {"A": lambda: calls.append("A"), "B": lambda: calls.append("B")}
    times = run_interleaved(tasks, repeats=3, warmup=2)
    assert calls == ["A", "B"] * 5
    assert sorted(times) == ["A", "B"]
    assert len(times["A"]) == len(times["B"]) == 3
    assert all(t >= 0 for t in times["A"] + times["B"])
    with pytest.raises(SparseDeployError):
        run_interleaved(tasks, repeats=0)


def test_time_call_returns_the_result():
    result, seconds = time_call(lambda: 41 + 1)
    assert result == 42 and seconds >= 0
    assert clock_name("cpu") == "time.perf_counter"


def test_summarize_is_exact():
    s = summarize([float(v) for v in range(1, 12)])  # 1..11
    assert s["n"] == 11 and s["median"] == 6 and s["mean"] == 6
    assert s["min"] == 1 and s["max"] == 11
    assert s["p25"] == 3.5 and s["p75"] == 8.5 and s["iqr"] == 5
    assert s["p10"] == 2 and s["p90"] == 10
    assert s["std"] == pytest.approx(np.std(np.arange(1, 12), ddof=1))
    assert summarize([2.0])["std"] == 0.0
    with pytest.raises(SparseDeployError):
        summarize([])


def test_ratio_of_medians_and_paired_rounds():
    r = ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert r["median"] == 2.0  # median 4 / median 2
    assert r["paired_median"] == 2.0  # per round: 2, 2, 3
    assert r["paired_p10"] == pytest.approx(2.0) and r["paired_p90"] == pytest.approx(2.8)
    assert "paired_median" not in ratio([1.0, 2.0], [1.0])  # unequal lengths: no pairing
    assert ratio([1.0], [2.0])["median"] == 0.5  # < 1: the candidate is slower


def test_einsum_macs():
    assert _einsum_macs("bij,bjk->bik", [[2, 3, 4], [2, 4, 5]]) == 2 * 3 * 4 * 5
    assert _einsum_macs("nhwpqc->nchpwq", [[1, 4, 4, 4, 4, 1]]) == 0  # a permutation


def test_method_list_is_complete_and_maps_to_train_configs(tmp_path):
    for method in (
        "start",
        "dense",
        "oneshot",
        "oneshot-wanda",
        "oneshot-sparsegpt",
        "fixed",
        "fixed-sparsegpt",
        "fixed+kd+feat",
        "fixed+kd+feat-sparsegpt",
        "ste",
        "srste",
        "srste+kd",
        "srste+kd-sparsegpt",
        "srste+kd+feat",
        "srste+kd+feat-sparsegpt",
        "srste+kd+dd",
        "maskllm+kd",
        "modelopt-magnitude",
        "modelopt-sparsegpt",
        "modelopt-sat-sparsegpt",
    ):
        assert method in METHODS, method
    assert set(METHOD_LABELS) == set(METHODS)
    assert set(DEFAULT_METHODS) <= set(METHODS) and not set(DEFAULT_METHODS) & set(MODELOPT_METHODS)
    assert set(TRAIN_COST_METHODS) == {m for m in METHODS if trains(m) and METHOD_RECIPES[m].mask_init == "magnitude"}
    assert (
        not trains("start") and not trains("oneshot-sparsegpt") and not trains("modelopt-sparsegpt") and trains("fixed")
    )
    want = {
        "dense": (None, 0.0, 0.0, 0.0),
        "oneshot": ("oneshot", 0.0, 0.0, 0.0),
        "fixed": ("fixed", 0.0, 0.0, 0.0),
        "fixed+kd+feat": ("fixed", 0.1, 0.5, 0.0),
        "ste": ("ste", 0.0, 0.0, 0.0),
        "srste": ("srste", 0.0, 0.0, 0.0),
        "srste+kd": ("srste", 0.1, 0.0, 0.0),
        "srste+kd+feat": ("srste", 0.1, 0.5, 0.0),
        "srste+kd+dd": ("srste", 0.1, 0.0, 5.0),
        "maskllm+kd": ("maskllm", 0.1, 0.0, 0.0),
        "fixed+kd+feat-sparsegpt": ("fixed", 0.1, 0.5, 0.0),
        "fixed+teacher+feat-sparsegpt": ("fixed", 1.0, 0.5, 0.0),
    }
    for method, (mode, kd, feat, dd) in want.items():
        config = method_train_config(method, "tiny-dit", tmp_path / method, steps=7, init=tmp_path / "dense")
        assert (config.sparsity.mode if config.sparsity else None) == mode, method
        assert config.kd_weight == kd and config.steps == 7 and config.init == str(tmp_path / "dense")
        assert config.kd_features == feat and (config.sparsity.pruned_decay if config.sparsity else 0.0) == dd
    starts = {
        m: method_train_config(m, "tiny-dit", tmp_path / m, steps=7, init=tmp_path / "dense").sparsity
        for m in ("fixed-sparsegpt", "modelopt-sat-sparsegpt", "srste+kd+feat+ramp-sparsegpt")
    }
    assert starts["fixed-sparsegpt"].mask_init == "sparsegpt" and not starts["fixed-sparsegpt"].modelopt_default_rules
    assert (
        starts["modelopt-sat-sparsegpt"].mask_init == "modelopt:sparsegpt"
        and starts["modelopt-sat-sparsegpt"].modelopt_default_rules
    )
    assert starts["srste+kd+feat+ramp-sparsegpt"].decay_ramp == 0.25
    teacher_only = method_train_config(
        "fixed+teacher+feat-sparsegpt", "tiny-dit", tmp_path / "t", steps=7, init=tmp_path / "dense"
    )
    assert teacher_only.data_weight == 0.0
    with pytest.raises(SparseDeployError, match="unknown method"):
        method_train_config("magic", "tiny-dit", tmp_path, steps=1, init=None)


# ----------------------------------------------------------------------------- MACs


@pytest.mark.parametrize("name", ["tiny-dit", "tiny-unet"])
def test_onnx_macs_match_the_model(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(get_preset(name), announce_random=False).eval()
    graph = tmp_path / "dense-fp32.onnx"
    export_graph(model, [], contract_for(model.preset, "fp32"), graph, kind="dense")
    check = macs_crosscheck(model, graph)
    # Exactly the model's MACs once repeated layer calls are counted once (the exporter computes
    # diffusers DiT's second call of block 0's timestep embedder only once) ...
    assert check["onnx_total"] == check["model_single_call"]
    # ... and within 2% of the PyTorch FLOP counter's total.
    assert abs(check["relative_difference"]) < 0.02
    if name == "tiny-unet":
        assert check["onnx_total"] == check["model_total"] and not check["repeated_layers"]
    else:
        assert check["repeated_layers"] == [
            "transformer_blocks.0.norm1.emb.timestep_embedder.linear_1",
            "transformer_blocks.0.norm1.emb.timestep_embedder.linear_2",
        ]
    assert not check["disagreeing_layers"] and not check["unmatched_layers"]
    assert onnx_macs(graph, batch=3).total == 3 * check["onnx_total"]


# ----------------------------------------------------------------------------- latency, train cost, methods


@pytest.fixture(scope="module")
def tiny_engines(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench-engines")
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp / "ckpt", build_model(get_preset("tiny-dit"), announce_random=False), sparsity=None)
    config = BuildConfig(
        export=ExportConfig(checkpoint=ckpt, out=tmp / "export", precisions=("fp32",), max_batch=2),
        backend="onnxruntime",
        engine_dir=tmp / "engines",
    )
    return {e.kind: e.path for e in build_engines(config).engines}


def test_latency_interleaves_dense_and_sparse(tiny_engines):
    config = LatencyConfig(
        engines=(str(tiny_engines["dense"]), str(tiny_engines["sparse"])),
        batches=(1, 2, 4),
        repeats=2,
        warmup=1,
        e2e_repeats=1,
        e2e_warmup=0,
        steps=2,
        memory=False,
    )
    record = run_latency(config, command="test")
    assert record["kind"] == "latency" and record["command"] == "test" and record["model"] == "tiny-dit"
    assert (record["reference"], record["candidate"]) == ("dense", "sparse")
    assert record["machine"]["cpus_usable"] >= 1 and "torch" in record["versions"]
    b1, b2, b4 = record["batches"]
    assert "outside" in b4["skipped"]  # the engines' profile ends at 2
    for entry in (b1, b2):
        assert set(entry["per_call"]) == {"dense", "sparse"}
        assert entry["per_call"]["dense"]["n"] == 2 and len(entry["per_call"]["sparse"]["samples"]) == 2
        assert entry["per_call_ratio"]["median"] == pytest.approx(
            entry["per_call"]["dense"]["median"] / entry["per_call"]["sparse"]["median"]
        )
        assert entry["end_to_end"]["dense"]["n"] == 1 and "end_to_end_ratio" in entry
    engines = record["engines"]
    assert engines["sparse"]["sparse_layers"] == 12 and engines["dense"]["sparse_layers"] == 0
    assert engines["dense"]["size_bytes"] == tiny_engines["dense"].stat().st_size
    assert latency_filename(record) == "latency-onnxruntime-fp32.json"


def test_engine_memory_reports_rss(tiny_engines):
    mem = engine_memory(tiny_engines["sparse"], batch=2, calls=1)
    assert mem["rss_before_load"] > 0 and mem["peak_rss"] >= mem["rss_after_load"] > 0
    assert mem["peak_delta"] >= 0 and mem["batch"] == 2


def test_grids_use_the_same_seed(tiny_engines, tmp_path):
    record = sample_grids([tiny_engines["dense"], tiny_engines["sparse"]], tmp_path, per_class=1, steps=1)
    assert set(record["grids"]) == {"dense", "sparse"}
    assert all((tmp_path / g["path"]).is_file() for g in record["grids"].values())


def test_train_cost_times_every_method(fmnist_data):
    record = run_train_cost("tiny-dit", steps=1, warmup=0, batch_size=4, data=fmnist_data, device="cpu")
    assert list(record["methods"]) == list(TRAIN_COST_METHODS)
    for stats in record["methods"].values():
        assert stats["n"] == 1 and stats["images_per_second"] > 0
    assert record["methods"]["dense"]["relative_to_dense"] == 1.0
    assert record["methods"]["srste+kd"]["kd_weight"] == 0.1 and record["methods"]["dense"]["sparsity"] is None


class _Reference:
    def __init__(self, features: np.ndarray):
        self.features = features
        self.mu = features.mean(0)
        self.sigma = np.cov(features, rowvar=False)


def _fake_features(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    projection = np.random.default_rng(0).standard_normal((flat.shape[1], 6))
    return flat @ projection


def test_methods_run_every_method_and_resume(tmp_path, fmnist_data, monkeypatch):
    torch.manual_seed(0)
    dense = save_checkpoint(
        tmp_path / "dense", build_model(get_preset("tiny-dit"), announce_random=False), sparsity=None
    )
    config = MethodsConfig(
        model="tiny-dit",
        dense_checkpoint=str(dense),
        steps=1,
        num_samples=8,
        seeds=(0,),
        sample_steps=1,
        sample_batch=8,
        work=str(tmp_path / "work"),
        batch_size=4,
        data=fmnist_data,
        device="cpu",
        label="test",
    )
    reference = _Reference(np.random.default_rng(1).standard_normal((40, 6)))
    record = run_methods(config, features=_fake_features, reference=reference)
    assert [r["method"] for r in record["runs"]] == [m for m in METHODS if m in DEFAULT_METHODS]
    runs = {r["method"]: r for r in record["runs"]}
    assert "vs_dense" not in runs["dense"]
    for method in DEFAULT_METHODS:
        if method not in ("start", "dense"):
            assert runs[method]["masked_layers"] == 12 and np.isfinite(runs[method]["vs_dense"]["fid"])
    assert runs["start"]["masked_layers"] == 0 and runs["start"]["train_steps"] == 0
    assert runs["oneshot"]["train_steps"] == 0 and runs["srste+kd"]["train_steps"] == 1
    assert record["summary"]["dense"]["macs"] > record["summary"]["srste+kd"]["macs"]
    # Same seed, same noise and labels: the dense and one-shot runs' labels agree.
    with np.load(runs["dense"]["samples"]) as d, np.load(runs["oneshot"]["samples"]) as o:
        assert np.array_equal(d["labels"], o["labels"]) and d["images"].shape == (8, 16, 16, 1)

    from sparse_deploy.measure import methods as methods_mod

    def no_training(*_a, **_k):
        raise AssertionError("a stored result should have been reused")

    monkeypatch.setattr(methods_mod, "train", no_training)
    again = run_methods(config, features=_fake_features, reference=reference)
    assert [r["fid"] for r in again["runs"]] == [r["fid"] for r in record["runs"]]
    config.num_samples = 6
    with pytest.raises(SparseDeployError, match="num_samples"):
        run_methods(config, features=_fake_features, reference=reference)

    # The same comparison at a MACs budget: the sparse methods keep the most sensitive layers dense,
    # and the frontier joins the two comparisons into FID-against-MACs curves.
    config.num_samples, methods = 8, ("dense", "fixed", "srste+kd")
    budget = MethodsConfig(**{**config.__dict__, "work": None, "macs_budget": 0.8, "methods": methods}).validate()
    assert budget.work.endswith("-macs0.8")
    budget.work = str(tmp_path / "work-0.8")
    monkeypatch.undo()
    low = run_methods(budget, features=_fake_features, reference=reference)
    low_runs = {r["method"]: r for r in low["runs"]}
    assert low_runs["fixed"]["masked_layers"] < 12 and low_runs["fixed"]["key"]["macs_budget"] == 0.8
    assert "macs_budget" not in low_runs["dense"]["key"]
    full_macs = record["summary"]["srste+kd"]["macs"]
    assert (
        record["summary"]["srste+kd"]["macs"]
        < low["summary"]["srste+kd"]["macs"]
        <= 0.8 * record["summary"]["dense"]["macs"] * 1.0001
    )
    from sparse_deploy.measure.frontier import frontier, write_frontier

    files = [tmp_path / "full.json", tmp_path / "low.json"]
    files[0].write_text(json.dumps(record, default=str))
    files[1].write_text(json.dumps(low, default=str))
    written = write_frontier(files, tmp_path / "frontier")
    points = json.loads(written["json"].read_text())["points"]
    srste = [p for p in points if p["method"] == "srste+kd"]
    assert [p["macs_budget"] for p in srste] == [None, 0.8] and srste[0]["macs"] == full_macs
    assert (
        written["plot"].stat().st_size > 0
        and "| SR-STE + distillation (SparseDM) | 0.8 |" in written["markdown"].read_text()
    )
    assert {p["method"] for p in frontier(files, methods=["fixed"])["points"]} == {"fixed"}
    assert [p["macs_budget"] for p in points if p["method"] == "dense"] == [None]  # one dense point, not one per budget
    other = {**low, "settings": {**low["settings"], "steps": 2}}
    files[1].write_text(json.dumps(other, default=str))
    with pytest.raises(SparseDeployError, match="steps differ"):
        frontier(files)
    # Along the other axis: the same MACs budget at two fine-tuning budgets gives FID against steps,
    # and a different MACs budget is refused there.
    longer = {**record, "settings": {**record["settings"], "steps": 4 * record["settings"]["steps"]}}
    files[1].write_text(json.dumps(longer, default=str))
    written = write_frontier(files, tmp_path / "budgets", axis="steps")
    assert written["json"].name == "budgets.json" and written["plot"].stat().st_size > 0
    steps = [p["steps"] for p in json.loads(written["json"].read_text())["points"] if p["method"] == "fixed"]
    assert steps == [record["settings"]["steps"], 4 * record["settings"]["steps"]]
    assert "| fixed masks, fine-tuned | " in written["markdown"].read_text()
    oneshot = [p for p in json.loads(written["json"].read_text())["points"] if p["method"] == "oneshot"]
    assert [p["steps"] for p in oneshot] == [0] and "| 0 (trains nothing; not plotted) |" in written[
        "markdown"
    ].read_text()
    assert (
        main(["budgets", *map(str, files), "--methods", "fixed", "--out", str(tmp_path / "cli-budgets")]) == 0
    )  # the command line
    assert {p["method"] for p in json.loads((tmp_path / "cli-budgets" / "budgets.json").read_text())["points"]} == {
        "fixed"
    }
    files[1].write_text(json.dumps(low, default=str))
    with pytest.raises(SparseDeployError, match="macs_budget differ"):
        frontier(files, axis="steps")


def test_methods_drawn_without_the_fid_network_are_scored_elsewhere_without_training(
    tmp_path, fmnist_data, monkeypatch, capsys
):
    """--no-score on a machine without Inception (a GPU machine), then scoring where it is: nothing trains twice."""
    import dataclasses
    import shutil

    from sparse_deploy import fid
    from sparse_deploy.measure import methods as methods_mod

    torch.manual_seed(0)
    dense = save_checkpoint(
        tmp_path / "dense", build_model(get_preset("tiny-dit"), announce_random=False), sparsity=None
    )
    config = MethodsConfig(
        model="tiny-dit",
        dense_checkpoint=str(dense),
        steps=1,
        num_samples=8,
        seeds=(0, 1),
        sample_steps=1,
        sample_batch=8,
        work=str(tmp_path / "gpu"),
        batch_size=4,
        data=fmnist_data,
        device="cpu",
        methods=("dense", "fixed"),
    )

    def no_network(*_a, **_k):
        raise AssertionError("--no-score must not touch the FID network")

    monkeypatch.setattr(fid, "features_from_images", no_network)
    monkeypatch.setattr(fid, "reference_stats", no_network)
    assert (
        main(
            [
                "--device",
                "cpu",
                "methods",
                "--model",
                "tiny-dit",
                "--dense-checkpoint",
                str(dense),
                "--steps",
                "1",
                "--num-samples",
                "8",
                "--seeds",
                "0",
                "--sample-steps",
                "1",
                "--sample-batch",
                "8",
                "--batch-size",
                "4",
                "--data",
                fmnist_data,
                "--methods",
                "dense,fixed",
                "--work",
                config.work,
                "--no-score",
            ]
        )
        == 0
    )
    assert "fine-tuned and sampled 2 run(s)" in capsys.readouterr().out
    drawn = draw_methods(config)  # seed 0 is drawn already (reused), seed 1 is new
    assert [(p.parent.parent.name, p.parent.name) for p in drawn] == [
        ("dense", "seed0"),
        ("fixed", "seed0"),
        ("dense", "seed1"),
        ("fixed", "seed1"),
    ]
    assert not list(Path(config.work).rglob("result.json"))
    record = json.loads(drawn[1].read_text())
    assert (
        record["device"] == "cpu"
        and len(record["manifest"]["masked_layers"]) == 12
        and record["key"]["method"] == "fixed"
    )

    # Only samples.npz and drawn.json travel; the other machine scores them and trains nothing.
    other = tmp_path / "cpu"
    for path in drawn:
        dest = other / path.parent.relative_to(config.work)
        dest.mkdir(parents=True)
        shutil.copy(path, dest)
        shutil.copy(path.parent / "samples.npz", dest)

    def no_training(*_a, **_k):
        raise AssertionError("samples drawn with these settings should have been reused")

    monkeypatch.setattr(methods_mod, "train", no_training)
    reference = _Reference(np.random.default_rng(1).standard_normal((40, 6)))
    scored = run_methods(dataclasses.replace(config, work=str(other)), features=_fake_features, reference=reference)
    here = run_methods(config, features=_fake_features, reference=reference)  # scoring where they were drawn: the same
    assert [r["fid"] for r in scored["runs"]] == [r["fid"] for r in here["runs"]]
    runs = {(r["method"], r["seed"]): r for r in scored["runs"]}
    assert runs["fixed", 1]["masked_layers"] == 12 and runs["fixed", 1]["train_device"] == "cpu"
    assert runs["fixed", 1]["train_torch_threads"] == torch.get_num_threads()
    assert np.isfinite(runs["fixed", 1]["vs_dense"]["fid"])
    assert draw_methods(config) == []  # every run is scored now: nothing left to draw
    # Samples drawn under other settings are not reused: that run trains again.
    (other / "fixed" / "seed1" / "result.json").unlink()
    stale = json.loads((other / "fixed" / "seed1" / "drawn.json").read_text())
    (other / "fixed" / "seed1" / "drawn.json").write_text(json.dumps({**stale, "key": {**stale["key"], "steps": 2}}))
    with pytest.raises(AssertionError, match="should have been reused"):
        run_methods(dataclasses.replace(config, work=str(other)), features=_fake_features, reference=reference)


# ----------------------------------------------------------------------------- report


def _synthetic_results(folder: Path) -> None:
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    batches = []
    for b in (1, 2, 4):
        dense, sparse = list(rng.uniform(1, 2, 5) * b), list(rng.uniform(0.9, 1.8, 5) * b)
        batches.append(
            {
                "batch": b,
                "per_call": {"dense": summarize(dense), "sparse": summarize(sparse)},
                "per_call_ratio": ratio(dense, sparse),
                "end_to_end": {
                    "dense": summarize([x * 25 for x in dense]),
                    "sparse": summarize([x * 25 for x in sparse]),
                },
                "end_to_end_ratio": ratio([x * 25 for x in dense], [x * 25 for x in sparse]),
            }
        )
    batches.append({"batch": 8, "skipped": "outside the profile"})
    engine = {
        "path": "engines/m/dense-fp32.ort.onnx",
        "kind": "dense",
        "backend": "onnxruntime",
        "precision": "fp32",
        "size_bytes": 2**20,
        "sparse_layers": 0,
        "memory": {"batch": 4, "load_delta": 2**20, "peak_delta": 2**21},
    }
    latency = machine.record(
        "latency",
        "cmd latency",
        {"repeats": 5, "warmup": 1, "e2e_repeats": 5, "e2e_warmup": 1, "steps": 25, "scheduler": "ddim"},
        {
            "model": "m",
            "reference": "dense",
            "candidate": "sparse",
            "ratio_definition": "dense / sparse",
            "clock": {"dense": "time.perf_counter", "sparse": "time.perf_counter"},
            "engines": {"dense": engine, "sparse": {**engine, "kind": "sparse", "sparse_layers": 36}},
            "batches": batches,
        },
        started,
    )
    (folder / "latency-onnxruntime-fp32.json").write_text(json.dumps(latency))
    cost = {
        m: {**summarize(list(rng.uniform(1, 2, 4))), "images_per_second": 64.0, "relative_to_dense": 1.1}
        for m in TRAIN_COST_METHODS
    }
    (folder / "train_cost.json").write_text(
        json.dumps(
            machine.record(
                "train-cost",
                "cmd cost",
                {"steps": 4, "warmup": 1, "batch_size": 128, "device": "cpu", "methods": list(TRAIN_COST_METHODS)},
                {"model": "m", "clock": "time.perf_counter", "note": "one step", "methods": cost},
                started,
            )
        )
    )
    layers = [{"layer": "a", "model_macs": 10, "calls": 1, "onnx_macs": 10, "agrees": True}]
    (folder / "macs.json").write_text(
        json.dumps(
            machine.record(
                "macs",
                "cmd macs",
                {},
                {
                    "model": "m",
                    "source": "random init",
                    "dense_macs": 1000,
                    "sparse_layer_macs": 800,
                    "effective_sparse_macs": 600,
                    "sparse_share": 0.8,
                    "effective_over_dense": 0.6,
                    "sparse_layers": ["a"],
                    "onnx_dense_macs": 1000,
                    "onnx_effective_sparse_macs": 600,
                    "onnx_check": {
                        "onnx_total": 1000,
                        "model_total": 1000,
                        "model_single_call": 1000,
                        "relative_difference": 0.0,
                        "relative_difference_single_call": 0.0,
                        "layers": layers,
                        "unmatched_layers": [],
                        "disagreeing_layers": [],
                        "repeated_layers": [],
                    },
                },
                started,
            )
        )
    )
    grids = {}
    for method in ("dense", "srste+kd"):
        save_grid(rng.integers(0, 255, (4, 8, 8, 1), dtype=np.uint8), folder / f"grid-{method}.png")
        grids[method] = folder / f"grid-{method}.png"
    runs, summary = [], {}
    for method in METHODS:
        fids = [30.0 + len(method), 31.0 + len(method)]
        for seed, value in enumerate(fids):
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "label": METHOD_LABELS[method],
                    "fid": value,
                    "kid": {"mean": 0.01},
                    "grid": str(grids.get(method, grids["dense"])),
                }
            )
        summary[method] = {
            "label": METHOD_LABELS[method],
            "fid": spread(fids),
            "kid": spread([0.01, 0.02]),
            "fid_vs_dense": spread([] if method == "dense" else [5.0, 6.0]),
            "kid_vs_dense": spread([]),
            "paired_pixel_rmse_vs_dense": spread([0.1, 0.2]),
            "macs": 1000 if method == "dense" else 600,
        }
    (folder / "methods.json").write_text(
        json.dumps(
            machine.record(
                "methods",
                "cmd methods",
                {
                    "seeds": [0, 1],
                    "methods": list(METHODS),
                    "kd_weight": 0.1,
                    "warmup_steps": 20,
                    "scheduler": "ddim",
                    "sample_steps": 25,
                },
                {
                    "model": "m",
                    "label": "small-budget run",
                    "budget": "100 steps",
                    "dense_checkpoint": {"path": "d", "step": 10},
                    "reference": {"source": "fashion-mnist:test", "num": 2000},
                    "preprocessing": "pp",
                    "fid_note": "note",
                    "runs": runs,
                    "summary": summary,
                },
                started,
            )
        )
    )


def test_report_writes_json_markdown_and_plots(tmp_path):
    _synthetic_results(tmp_path)
    written = write_report(tmp_path, command="python -m sparse_deploy.bench report --out x")
    expected = {
        "latency-onnxruntime-fp32.png",
        "train_cost.png",
        "fid_methods.png",
        "fid_vs_macs.png",
        "samples_dense_vs_sparse.png",
        "report.md",
        "report.json",
    }
    assert expected <= {p.name for p in tmp_path.iterdir()}
    assert {p.name for p in written.values()} == expected
    for png in (p for p in written.values() if p.suffix == ".png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["command"].endswith("report --out x") and len(report["results"]["latency"]) == 1
    assert report["results"]["methods"]["summary"]["srste+kd"]["fid"]["mean"] == 38.5
    md = (tmp_path / "report.md").read_text()
    assert "small-budget run" in md and "| SR-STE + distillation (SparseDM) | 38.50 ± 0.71 |" in md
    assert "| 8 | skipped |" in md and "cmd latency" in md
    cost_section = md.split("## Fine-tuning cost")[1].split("\n## ")[0]
    rows = [line.split(" | ")[0].strip("| ") for line in cost_section.splitlines() if line.startswith("| ")]
    assert rows[2:] == list(TRAIN_COST_METHODS)  # the run's order, not the JSON's sorted keys


def test_report_refuses_an_empty_folder(tmp_path):
    with pytest.raises(SparseDeployError, match="no benchmark results"):
        write_report(tmp_path)


def test_method_spread_says_which_gaps_the_seeds_resolve():
    def entry(label, fids):
        return {"label": label, "fid": spread(fids)}

    record = {
        "settings": {"methods": ["dense", "oneshot", "ste", "srste+kd"]},
        "summary": {
            "dense": entry("dense", [10.0, 11.0]),
            "oneshot": entry("one-shot", [40.0, 41.0]),  # 20 worse, spread ~0.7: resolved
            "ste": entry("STE", [19.0, 23.0]),  # 0.5 worse, spread ~2.8: not resolved
            "srste+kd": entry("SparseDM", [20.0, 21.0]),
        },
        "runs": [{"train_seconds": 60.0, "sample_seconds": 30.0, "feature_seconds": 120.0}] * 2,
        "seconds": 600.0,
    }
    lines = methods_spread_lines(record)
    assert lines[0].startswith("Run-to-run spread: the FID standard deviation over seeds is 0.71-2.83")
    assert (
        lines[1].startswith("- SparseDM: FID +10.00 against dense training continued with the same settings")
        and "larger than 2 standard errors" in lines[1]
    )
    by_label = {line.split(":")[0][2:]: line for line in lines[2:]}
    assert set(by_label) == {"one-shot", "STE"}  # each against the best sparse method, SparseDM
    assert "+20.00" in by_label["one-shot"] and "larger than 2 standard errors" in by_label["one-shot"]
    assert "+0.50" in by_label["STE"] and "not resolved" in by_label["STE"]
    one_seed = {"settings": {}, "summary": {"dense": entry("dense", [10.0])}}
    assert "no run-to-run spread" in methods_spread_lines(one_seed)[0]
    assert "fine-tuning 2.0 min, sampling 1.0 min, Inception features 4.0 min" in methods_time_line(record)
    assert "ran on" not in methods_time_line(record)
    drawn_on_gpu = {**record, "runs": [{**r, "train_device": "cuda:0"} for r in record["runs"]]}
    assert "fine-tuning and sampling ran on cuda:0" in methods_time_line(drawn_on_gpu)
    assert "torch threads" not in methods_time_line(record)
    mixed = {**record, "runs": [{**r, "train_torch_threads": 1 + i % 2} for i, r in enumerate(record["runs"])]}
    assert "drawn with 1 or 2 torch threads" in methods_time_line(mixed)


def test_mac_report_of_a_sparse_checkpoint_checks_its_masks_in_the_graph(tmp_path, caplog):
    from sparse_deploy.sparsify import SparsityConfig, sparsify_

    torch.manual_seed(0)
    model = build_model(get_preset("tiny-dit"), announce_random=False)
    cfg = SparsityConfig(mode="srste")
    masked = sparsify_(model, cfg)
    ckpt = save_checkpoint(tmp_path / "sparse", model, sparsity=cfg)
    with caplog.at_level("WARNING"):
        record = mac_report(checkpoint=ckpt)
    r = record
    assert r["sparse_layers"] == sorted(masked) and r["effective_sparse_macs"] < r["dense_macs"]
    assert r["onnx_check"]["disagreeing_layers"] == []
    assert not [m for m in caplog.messages if "already 2:4-sparse" in m]  # the baked masks are expected, not a surprise


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[2] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publish_report_copies_the_report_and_its_plots_into_the_results_page(tmp_path):
    publish = _load_script("publish_report")
    (tmp_path / "report").mkdir()
    _synthetic_results(tmp_path / "report")
    write_report(tmp_path / "report")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "RESULTS.md").write_text("# Results\n\n## Earlier\n\ntext\n")
    args = [
        str(tmp_path / "report"),
        "--results",
        str(docs / "RESULTS.md"),
        "--images",
        str(docs / "images" / "r"),
        "--intro",
        "Context.",
        "--json-dir",
        str(docs / "results" / "r"),
    ]
    assert publish.main(args) == 0
    assert publish.main(args) == 0  # a second run replaces the section, it does not add one
    page = (docs / "RESULTS.md").read_text()
    assert page.startswith("# Results\n\n## Earlier\n\ntext\n") and page.count("<!-- report:report begin") == 1
    section = page.split("<!-- report:report begin")[1]
    assert "## Benchmark report: " in section and "\nContext.\n" in section and "\n### Method comparison" in section
    assert "| SR-STE + distillation (SparseDM) | 38.50 ± 0.71 |" in section  # the report's own table, verbatim
    linked = re.findall(r"\]\((images/r/[^)]+)\)", section)
    assert linked and all((docs / link).is_file() for link in linked)
    published = sorted(p.name for p in (docs / "results" / "r").glob("*.json"))
    assert published == sorted(p.name for p in (tmp_path / "report").glob("*.json")) and "methods.json" in published
    assert all((docs / "results" / "r" / n).read_bytes() == (tmp_path / "report" / n).read_bytes() for n in published)
    assert (
        publish.main([str(tmp_path / "nothing"), "--images", str(docs / "images")]) == 2
    )  # one error line, no traceback
    # A fuller run written to another folder replaces the section it names, in place.
    (docs / "RESULTS.md").write_text(page + "\n## Later\n")
    shutil.copytree(tmp_path / "report", tmp_path / "report-all")
    assert (
        publish.main(
            [
                str(tmp_path / "report-all"),
                "--section",
                "report",
                "--results",
                str(docs / "RESULTS.md"),
                "--images",
                str(docs / "images" / "r"),
                "--intro",
                "Fuller.",
            ]
        )
        == 0
    )
    page = (docs / "RESULTS.md").read_text()
    assert page.count("<!-- report:report begin") == 1 and "report-all begin" not in page and "\nFuller.\n" in page
    assert page.index("<!-- report:report end") < page.index("## Later")
    # A bench frontier/budgets folder publishes its own Markdown the same way.
    front = tmp_path / "front"
    front.mkdir()
    (front / "frontier.md").write_text(
        "# FID against effective MACs\n\n| a |\n\n![FID against effective MACs](frontier.png)\n"
    )
    (front / "frontier.png").write_bytes(b"png")
    assert (
        publish.main(
            [
                str(front),
                "--markdown",
                "frontier.md",
                "--results",
                str(docs / "RESULTS.md"),
                "--images",
                str(docs / "images" / "f"),
            ]
        )
        == 0
    )
    assert (
        "](images/f/frontier.png)" in (docs / "RESULTS.md").read_text()
        and (docs / "images" / "f" / "frontier.png").is_file()
    )


def test_bench_all_on_a_latent_preset_without_data(tmp_path, monkeypatch, caplog):
    """``make bench MODEL=dit-s`` in miniature: a latent, 1000-class preset with no dataset."""
    from sparse_deploy import presets

    tiny = presets._dit(
        "tiny-latent",
        heads=2,
        head_dim=16,
        layers=2,
        in_channels=4,
        sample_size=16,
        patch_size=4,
        num_classes=1000,
        latent=True,
        train=get_preset("tiny-dit").train,
    )
    monkeypatch.setitem(presets.PRESETS, "tiny-latent", tiny)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING"):
        rc = main(
            [
                "--device",
                "cpu",
                "all",
                "--model",
                "tiny-latent",
                "--batches",
                "1",
                "--repeats",
                "2",
                "--warmup",
                "1",
                "--e2e-repeats",
                "0",
                "--no-memory",
                "--cost-steps",
                "1",
                "--sample-steps",
                "1",
                "--batch-size",
                "2",
                "--out",
                "report",
            ]
        )
    assert rc == 0
    assert any("skipping the method comparison" in m and "VAE latents" in m for m in caplog.messages)
    cost = json.loads((tmp_path / "report" / "train_cost.json").read_text())
    assert cost["settings"]["data"] == "synthetic"  # no dataset: timed on random tensors of the right shape
    grids = json.loads((tmp_path / "report" / "grids.json").read_text())
    for g in grids["grids"].values():
        assert g["rows"] == 10 and g["rendering"].startswith(
            "latent channels"
        )  # 10 of 1000 classes, latents shown as such
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Method comparison" not in md and "random tensors" in md and "Shown: latent channels" in md


def test_method_comparison_says_what_it_needs_for_other_presets():
    assert methods_unsupported(get_preset("fmnist-dit"), None, None) is None
    assert "VAE latents" in methods_unsupported(get_preset("dit-s"), "ref", "data")
    assert "--reference" in methods_unsupported(get_preset("ddpm-cifar10"), None, "images/")
    assert methods_unsupported(get_preset("ddpm-cifar10"), "ref/", "images/") is None
    config = MethodsConfig(model="tiny-dit", dense_checkpoint="d", steps=1).validate()
    assert config.reference == "fashion-mnist:test"
    with pytest.raises(SparseDeployError, match="--data .* and --reference"):
        MethodsConfig(model="ddpm-cifar10", dense_checkpoint="d", steps=1).validate()


def test_bench_all_times_fp16_tensorrt_on_a_gpu_and_fp32_onnx_runtime_on_a_cpu(monkeypatch):
    from sparse_deploy.measure import cli

    monkeypatch.setattr(cli, "tensorrt_unavailable_reason", lambda: None)  # a GPU with TensorRT
    assert default_engines("auto") == ("tensorrt", ("fp16",))
    assert default_engines("cpu") == ("onnxruntime", ("fp32",))
    monkeypatch.setattr(cli, "tensorrt_unavailable_reason", lambda: "no CUDA GPU is visible")
    assert default_engines("auto") == ("onnxruntime", ("fp32",))
    assert build_parser().parse_args(["all"]).precision is None  # decided where the engines are built


def test_dense_reference_fine_tunes_at_the_sparse_methods_rate(tmp_path):
    torch.manual_seed(0)
    dense = save_checkpoint(tmp_path / "d", build_model(get_preset("fmnist-dit"), announce_random=False), sparsity=None)
    d = get_preset("fmnist-dit").train
    made = {
        m: method_train_config(m, "fmnist-dit", tmp_path / m, steps=10, init=dense)
        for m in ("dense", "fixed", "srste+kd")
    }
    assert {m: c.lr for m, c in made.items()} == {m: d.sparse_lr for m in made} and d.sparse_lr != d.lr
    assert method_train_config("dense", "fmnist-dit", tmp_path / "x", steps=10, init=dense, lr=1e-3).lr == 1e-3
    config = MethodsConfig(model="fmnist-dit", dense_checkpoint=str(dense), steps=10).validate()
    assert config.run_key("dense", 0, "sha")["dense_lr"] == "fine-tuning" and "dense_lr" not in config.run_key(
        "fixed", 0, "sha"
    )


def test_paired_gap_resolves_what_the_seeds_share():
    from sparse_deploy.measure.spread import paired_gap

    # Seed-to-seed spread of 4 that both methods share; the recipe is 1.0 better on every seed.
    base = {0: 40.0, 1: 44.0, 2: 36.0, 3: 42.0}
    runs = [{"method": "fixed", "seed": s, "fid": f} for s, f in base.items()]
    runs += [{"method": "srste+kd", "seed": s, "fid": f - 1.0 + 0.1 * (s % 2)} for s, f in base.items()]
    runs += [{"method": "srste+kd", "seed": 9, "fid": 0.0}]  # no fixed run of seed 9: left out
    out = paired_gap(runs, "srste+kd", "fixed")
    assert (
        out["n"] == 4 and out["gap"] == pytest.approx(-0.95) and out["se"] == pytest.approx(0.05 * np.sqrt(4 / 3) / 2)
    )
    assert paired_gap(runs[:1] + runs[4:5], "srste+kd", "fixed") is None  # one shared seed: no spread

    summary = {
        m: {"label": m, "fid": spread([r["fid"] for r in runs if r["method"] == m and r["seed"] in base])}
        for m in ("fixed", "srste+kd")
    }
    lines = methods_spread_lines({"settings": {"methods": ["fixed", "srste+kd"]}, "summary": summary, "runs": runs})
    fixed_line = next(line for line in lines if line.startswith("- fixed"))
    assert "not resolved by this run" in fixed_line  # unpaired: the shared spread hides a gap of 0.95
    assert (
        "paired by seed (same noise and labels, 4 seeds): +0.95" in fixed_line
        and "larger than 2 standard errors" in fixed_line
    )


def _comparison(
    methods: tuple[str, ...], fid_of, steps: int = 600, command: str = "cmd", grids: dict | None = None
) -> dict:
    """A ``bench methods`` record with these methods x seeds 0-3 and FIDs ``fid_of(method, seed)``."""
    from sparse_deploy.measure.methods import budget_text, summarise

    settings = {
        "model": "fmnist-dit",
        "steps": steps,
        "num_samples": 500,
        "seeds": [0, 1, 2, 3],
        "sample_steps": 25,
        "scheduler": "ddim",
        "reference": "fashion-mnist:test",
        "ref_num": None,
        "lr": None,
        "warmup_steps": 120,
        "batch_size": None,
        "kd_weight": 0.1,
        "kid_subsets": 100,
        "data": None,
        "macs_budget": None,
        "methods": list(methods),
    }
    runs = [
        {
            "method": m,
            "seed": s,
            "label": METHOD_LABELS[m],
            "fid": fid_of(m, s),
            "kid": {"mean": 0.01},
            "effective_macs": None,
            "grid": str((grids or {}).get(m, "gone/grid.png")),
            "train_torch_threads": 2,
        }
        for s in range(4)
        for m in methods
    ]
    macs = {"dense_macs": 1000, "effective_sparse_macs": 600, "sparse_share": 0.8}
    return machine.record(
        "methods",
        command,
        settings,
        {
            "model": "fmnist-dit",
            "label": "600-step budget",
            "budget": budget_text(settings),
            "dense_checkpoint": {"path": "d", "weights_sha256": "abc", "step": 18000},
            "reference": {"source": "fashion-mnist:test", "num": 10000, "identity": {"sha256": "ref"}},
            "preprocessing": "pp",
            "fid_note": "note.",
            "macs": macs,
            "runs": runs,
            "summary": summarise(runs, list(methods), macs),
        },
        time.perf_counter(),
    )


def test_merge_joins_comparisons_of_one_protocol_and_checks_the_reruns(tmp_path):
    from sparse_deploy.measure.merge import merge_methods

    base = {"dense": 50.0, "fixed": 68.0, "srste+kd": 66.0, "ste": 70.0, "srste": 69.0}
    save_grid(np.zeros((4, 8, 8, 1), np.uint8), tmp_path / "g.png")
    first = _comparison(("dense", "fixed", "srste+kd"), lambda m, s: base[m] + s, command="cmd first")
    later = _comparison(
        ("dense", "ste", "srste"),
        lambda m, s: base[m] + s + (0.01 if m == "dense" else 0.0),
        command="cmd later",
        grids={"dense": tmp_path / "g.png", "srste": tmp_path / "g.png"},
    )
    later["machine"] = {**later["machine"], "description": "another machine"}
    files = [tmp_path / "first.json", tmp_path / "later.json"]
    for path, rec in zip(files, (first, later), strict=True):
        path.write_text(json.dumps(rec))
    assert main(["merge", *map(str, files), "--out", str(tmp_path / "all")]) == 0
    merged = json.loads((tmp_path / "all" / "methods.json").read_text())
    assert merged["kind"] == "methods" and merged["settings"]["methods"] == [
        "dense",
        "fixed",
        "ste",
        "srste",
        "srste+kd",
    ]
    assert [(r["method"], r["seed"]) for r in merged["runs"][:5]] == [(m, 0) for m in merged["settings"]["methods"]]
    dense = [r for r in merged["runs"] if r["method"] == "dense"]
    assert [r["fid"] for r in dense] == [50.0, 51.0, 52.0, 53.0] and {r["merged_from"] for r in dense} == {
        str(files[0])
    }
    assert len(merged["reruns"]) == 4 and all(abs(r["difference"] - 0.01) < 1e-9 for r in merged["reruns"])
    assert merged["summary"]["ste"]["fid"]["mean"] == 71.5 and merged["summary"]["ste"]["fid"]["n"] == 4
    assert (
        merged["budget"].startswith("600 fine-tuning steps")
        and merged["seconds"] == first["seconds"] + later["seconds"]
    )
    # The report reads it like any comparison, says where its runs came from, and shows the grids still on disk.
    write_report(tmp_path / "all")
    md = (tmp_path / "all" / "report.md").read_text()
    assert (
        "| plain STE | 71.50 ± 1.29 |" in md
        and "Joined by `bench merge` from 2 comparisons" in md
        and "command `cmd later`" in md
    )
    assert "their FIDs differ from the kept runs by at most 0.0100" in md and "invocations ran" in md
    assert "another machine): their fine-tuning seconds per step are not comparable" in md
    assert (tmp_path / "all" / "samples_dense_vs_sparse.png").is_file()  # SR-STE's grid: SparseDM's folder is gone
    # Comparisons measured differently never share a table; other files are refused with the reason.
    files[1].write_text(json.dumps(_comparison(("dense", "ste"), lambda m, s: 1.0, steps=150)))
    with pytest.raises(SparseDeployError, match="steps differ"):
        merge_methods(files)
    files[1].write_text(json.dumps({"kind": "latency"}))
    with pytest.raises(SparseDeployError, match="not a method comparison"):
        merge_methods(files)
    assert main(["merge", str(files[0]), str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")]) == 2
