"""Engine builds: export (reusing up-to-date graphs) -> TensorRT or ONNX Runtime engines.

Engines land in ``engines/<model>/``, named by what makes them differ::

    <kind>-<precision>.trt.plan   + <kind>-<precision>.trt.json    TensorRT (GPU)
    <kind>-<precision>.ort.onnx   + <kind>-<precision>.ort.json    ONNX Runtime (CPU-optimized)

* TensorRT: Polygraphy's ``NetworkFromOnnxPath(strongly_typed=True)`` -> ``CreateConfig`` (the
  contract's batch profile, ``sparse_weights`` for sparse graphs only, TF32 chosen explicitly - on
  by default, since Polygraphy turns it off unless asked and fp32 GEMMs then use no tensor cores -,
  a timing cache, detailed profiling verbosity) -> ``EngineFromNetwork`` -> ``SaveEngine``. The
  requested settings and every builder flag TensorRT actually holds are written into the engine's
  manifest. TensorRT 11 networks are strongly typed: an fp16 engine comes from the fp16 graph, not
  from a builder flag. Which layers were eligible for and picked sparse kernels is read from the
  builder log and the engine inspector. Before the plan is kept it is run at the profile's min and
  opt batch and compared with ONNX Runtime on its source graph (:func:`check_trt_engine`).
* ONNX Runtime: the graph optimized offline (level ``extended``, CPU provider) and saved through
  ``SessionOptions.optimized_model_filepath``; checked against the source graph before it is kept.

With ``--backend auto`` and no GPU or TensorRT, ONNX Runtime engines are built instead and the
reason is printed. The batch profile (``--max-batch``, ``--opt-batch``) is the build's: the graph's
batch axis is dynamic, so a new profile rebuilds the engines and reuses the graphs. Re-running
reuses engines that are still current (:func:`sparse_deploy.artifacts.stale_reason` over the
source graph and its fingerprint, the contract with its precision and profile, library versions,
GPU and builder settings) and rebuilds stale ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import (
    ENGINE_FORMAT,
    Artifact,
    engine_path,
    manifest_path,
    read_engine_manifest,
    stale_reason,
    write_artifact_manifest,
)
from .backends import BACKEND_ALIASES, backend_name
from .backends.device import cuda_device, import_tensorrt, tensorrt_unavailable_reason
from .backends.ort import ort_session
from .cliargs import MODULE_PROG, add_alias, finish_parser
from .contract import BatchProfile, IOContract, contract_for
from .errors import SparseDeployError, cli_entry
from .export import (
    PARITY_TOLERANCE,
    ExportConfig,
    ExportedGraph,
    add_profile_arguments,
    add_source_arguments,
    config_from_args,
    export_all,
)
from .export.verify import max_abs_err, tolerance_bound
from .lazy import lazy_import
from .masks import PATTERN
from .onnx_files import data_path, describe_data, share_mode
from .outputs import check_output, claim_output
from .presets import PRESET_SPEC, Preset, preset_from_manifest
from .provenance import atomic_path, library_versions, sha256_file, timestamp
from .schedule import schedule_record
from .trt_log import (  # noqa: F401 (re-exported: the names were here first)
    _ELIGIBLE,
    _FOREIGN,
    _PICKED,
    _SPARSE_TACTIC,
    _capture_polygraphy_log,
    _ListHandler,
    parse_inspector,
    parse_sparsity_log,
    picked_modules,
    trt_layer_nodes,
)

ort = lazy_import(
    "onnxruntime", "building an ONNX Runtime engine", "pip install onnxruntime (or onnxruntime-gpu on a CUDA machine)"
)
poly_trt = lazy_import("polygraphy.backend.trt", "building a TensorRT engine")
poly_logger = lazy_import("polygraphy.logger", "building a TensorRT engine")


__all__ = [
    "BACKENDS",
    "ORT_OPTIMIZATION_LEVEL",
    "BuildConfig",
    "BuiltEngine",
    "TRT_CHECK_TOLERANCE",
    "check_trt_engine",
    "BuildReport",
    "engine_path",
    "build_engines",
    "build_ort_engine",
    "build_trt_engine",
    "parse_sparsity_log",
    "parse_inspector",
    "picked_modules",
    "trt_layer_nodes",
    "from_args",
    "main",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")
ORT_OPTIMIZATION_LEVEL = "extended"


@dataclass
class BuildConfig:
    """One build: the export it starts from, the backend, the batch profile and where engines go.

    Attributes:
        export: the export settings (source weights, kinds, precisions).
        backend: ``auto`` (TensorRT when usable, else ONNX Runtime) | ``tensorrt`` | ``onnxruntime``.
        engine_dir: default ``engines/<preset>``.
        force: rebuild graphs and engines even when up to date.
        tf32: let TensorRT run fp32 GEMMs on TF32 tensor cores (recorded in the manifest; off makes
            fp32 engines far slower on the GPU, dense and sparse alike).
        max_batch / opt_batch: the engines' batch profile (``--max-batch``, ``--opt-batch``). None:
            the one set on ``export`` (where callers before the build owned the profile put it).
            Newly exported graphs record the same profile in their contract.
    """

    export: ExportConfig
    backend: str = "auto"
    engine_dir: Path | None = None
    force: bool = False
    tf32: bool = True
    max_batch: int | None = None
    opt_batch: int | None = None

    def validate(self) -> BuildConfig:
        self.backend = backend_name(self.backend, BACKENDS)  # trt, ort: the names run takes too
        self.profile.validate()
        self.export.validate()
        return self

    @property
    def profile(self) -> BatchProfile:
        """The batch profile the engines are built for."""
        if self.max_batch is None and self.opt_batch is None:
            return self.export.profile
        return BatchProfile.from_flags(
            self.max_batch if self.max_batch is not None else self.export.max_batch, self.opt_batch
        )


@dataclass
class BuiltEngine(Artifact):
    """One engine on disk with its manifest, and the backend that runs it."""

    backend: str = "onnxruntime"


@dataclass
class BuildReport:
    engines: list[BuiltEngine] = field(default_factory=list)
    backend: str = "onnxruntime"
    fallback_reason: str | None = None  # why no TensorRT engine was built under --backend auto
    exports: list[ExportedGraph] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# What an engine records
# --------------------------------------------------------------------------------------------


def _fingerprint_inputs(
    graph: ExportedGraph, contract: IOContract, backend: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """Everything that decides an engine (as it reads back from JSON): what its ``fingerprint`` hashes.

    The source graph's own fingerprint stands for the preset, its schedule and the weights.
    """
    inputs = {
        "format": ENGINE_FORMAT,
        "backend": backend,
        "kind": graph.kind,
        "contract": contract.to_dict(),  # names, dtypes, precision, batch profile
        "source_onnx_sha256": graph.manifest["onnx_sha256"],
        "source_fingerprint": graph.manifest.get("fingerprint"),
        "versions": library_versions(),
        **settings,
    }
    return json.loads(json.dumps(inputs, default=str))


def _described(graph: ExportedGraph, preset: Preset, inputs: dict[str, Any]) -> dict[str, Any]:
    """The manifest entries every engine carries besides its build details (read by runners, Triton, cpp/)."""
    return {
        **{k: v for k, v in inputs.items() if k != "source_fingerprint"},
        "pattern": PATTERN if graph.kind == "sparse" else None,
        "preset": preset.name,
        PRESET_SPEC: preset.to_dict(),  # the model's config: runners rebuild the preset from it
        "num_classes": preset.num_classes,  # 0: unconditional; read by cpp/ and Triton
        "schedule": schedule_record(preset.schedule),  # read by the runner, Triton and cpp/
        "source_onnx": str(graph.path),
        "source_manifest": str(graph.manifest_path),
        "source": graph.manifest.get("source"),
        "sparse_layers": graph.manifest.get("sparse_layers", []),
    }


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------


def _ort_level(ort, level: str):
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }
    return levels[level]


def build_ort_engine(
    onnx_path: Path, out: Path, contract: IOContract, level: str = ORT_OPTIMIZATION_LEVEL
) -> dict[str, Any]:
    """Optimize ``onnx_path`` offline for the CPU provider and save it to ``out`` (atomically).

    The optimized graph is run against the source graph at the profile's opt batch before it is
    kept (same tolerance as the export's parity check for this precision).

    Returns:
        Backend-specific manifest entries.
    """
    external = data_path(onnx_path).is_file()
    data_path(out).unlink(missing_ok=True)  # never let an old engine's weights sit beside a new graph
    with atomic_path(out) as tmp:

        def optimize_to_tmp(options) -> None:
            options.graph_optimization_level = _ort_level(ort, level)
            options.optimized_model_filepath = str(tmp)
            options.add_session_config_entry("session.save_model_format", "ONNX")
            if external:  # over 2 GiB the optimized graph cannot be one protobuf either
                options.add_session_config_entry(
                    "session.optimized_model_external_initializers_file_name", data_path(out).name
                )
                options.add_session_config_entry(
                    "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
                )

        source = ort_session(onnx_path, configure=optimize_to_tmp, fix="; the graph could not be optimized")
        optimized = ort_session(tmp, fix="; the optimized graph does not load")
        feeds = contract.sample_inputs(contract.profile.opt, seed=7)
        want = source.run(None, feeds)[0].astype(np.float32)
        got = optimized.run(None, feeds)[0].astype(np.float32)
        tol = PARITY_TOLERANCE[contract.precision]
        err, bound = max_abs_err(got, want), tolerance_bound(tol, want)
        if not err <= bound:
            raise SparseDeployError(
                f"the optimized ONNX Runtime engine differs from '{onnx_path}' by {err:.3g} (> {bound:.3g}); not kept"
            )
    share_mode(out)
    return {
        "ort_optimization_level": level,
        "execution_providers": ["CPUExecutionProvider"],
        "engine_check": {"batch": contract.profile.opt, "max_abs_err_vs_source": err, "bound": bound, "passed": True},
    }


# --------------------------------------------------------------------------------------------
# TensorRT
# --------------------------------------------------------------------------------------------


def _trt_settings(sparse: bool, tf32: bool) -> dict[str, Any]:
    """The machine and the requested builder settings of one TensorRT build (all of them decide staleness)."""
    gpu = cuda_device() or {}
    trt = import_tensorrt()
    return {
        "gpu": gpu.get("name"),
        "compute_capability": gpu.get("compute_capability"),
        "tensorrt_version": str(trt.__version__),
        "strongly_typed": True,
        # Everything CreateConfig is told; what it leaves out is TensorRT's default.
        "builder_config": {
            "sparse_weights": sparse,
            # None: this TensorRT has no TF32 flag (then it decides fp32 GEMM precision itself)
            "tf32": tf32 if hasattr(trt.BuilderFlag, "TF32") else None,
            "profiling_verbosity": "DETAILED",
            "precision_constraints": None,
            "builder_optimization_level": None,
        },
    }


#: TensorRT against ONNX Runtime (CPU, on the source graph) when a plan is checked after its build:
#: fp16 engines and TF32 fp32 engines round GEMM inputs to 10 mantissa bits; plain fp32 is close.
TRT_CHECK_TOLERANCE = {
    "reduced": {"atol": 2 * PARITY_TOLERANCE["fp16"]["atol"], "rtol": 2 * PARITY_TOLERANCE["fp16"]["rtol"]},
    "fp32": {"atol": 10 * PARITY_TOLERANCE["fp32"]["atol"], "rtol": 10 * PARITY_TOLERANCE["fp32"]["rtol"]},
}


def check_trt_engine(engine, onnx_path: Path, contract: IOContract, *, tf32: bool) -> dict[str, Any]:
    """Run a freshly built TensorRT engine and compare it with ONNX Runtime (CPU) on its source graph.

    Inputs are the contract's sample inputs at the profile's min and opt batch (the null label is
    last in every batch of 2+). Raises :class:`SparseDeployError` when the engine is off.
    """
    tol = TRT_CHECK_TOLERANCE["reduced" if contract.precision == "fp16" or tf32 else "fp32"]
    session = ort_session(onnx_path)
    name = contract.output_names[0]
    results: dict[str, Any] = {
        "reference": "onnxruntime CPUExecutionProvider on the source graph",
        "criterion": "max|trt - ort| <= atol + rtol * max|ort|",
        "tolerance": tol,
        "batches": {},
    }
    failures = []
    with poly_trt.TrtRunner(engine) as runner:
        for batch in sorted({contract.profile.min, contract.profile.opt}):
            feeds = contract.sample_inputs(batch, seed=31 + batch)
            want = session.run([name], feeds)[0].astype(np.float32)
            got = np.array(runner.infer(feeds)[name], dtype=np.float32)
            err, bound = max_abs_err(got, want), tolerance_bound(tol, want)
            results["batches"][str(batch)] = {"max_abs_err": err, "bound": bound, "passed": err <= bound}
            if not err <= bound:
                failures.append(f"batch {batch}: max abs err {err:.3g} > {bound:.3g}")
    results["passed"] = not failures
    if failures:
        raise SparseDeployError(
            f"the TensorRT engine built from '{onnx_path}' does not match ONNX Runtime "
            f"({'; '.join(failures)}); not kept"
        )
    return results


def build_trt_engine(
    onnx_path: Path, out: Path, contract: IOContract, *, sparse: bool, timing_cache: Path, tf32: bool = True
) -> dict[str, Any]:
    """Build a TensorRT plan from ``onnx_path`` with Polygraphy, run it, and save it to ``out`` (atomically).

    Returns:
        Backend-specific manifest entries: every builder flag TensorRT held, the run check against
        ONNX Runtime, and which layers were eligible for and picked sparse kernels (builder log, and
        the engine inspector's per-layer view).
    """
    trt = import_tensorrt()

    p = contract.profile
    profile = poly_trt.Profile()
    for spec in contract.inputs:
        profile.add(spec.name, min=spec.concrete(p.min), opt=spec.concrete(p.opt), max=spec.concrete(p.max))
    flags: list[str] = []

    def record_flags(_builder, _network, config) -> None:
        flags[:] = sorted(name for name, flag in trt.BuilderFlag.__members__.items() if config.get_flag(flag))

    config = poly_trt.PostprocessConfig(
        poly_trt.CreateConfig(
            sparse_weights=sparse,
            tf32=tf32,
            profiles=[profile],
            load_timing_cache=str(timing_cache),
            profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
        ),
        record_flags,
    )
    network = poly_trt.NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _capture_polygraphy_log() as lines, atomic_path(out) as tmp:
        try:
            engine = poly_trt.EngineFromNetwork(network, config=config, save_timing_cache=str(timing_cache))()
            inspector = engine.create_engine_inspector()
            info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
            del inspector
        except Exception as exc:  # Polygraphy turns TensorRT errors into PolygraphyException
            errors = [line for line in lines if "[E]" in line or "ERROR" in line.upper()][-3:]
            raise SparseDeployError(
                f"TensorRT could not build '{out.name}' from '{onnx_path}' "
                f"({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}"
                + (f"; {' | '.join(errors)}" if errors else "")
                + ")"
            ) from exc
        missing = [f for f, wanted in (("SPARSE_WEIGHTS", sparse), ("TF32", tf32)) if wanted and f not in flags]
        if missing:
            raise SparseDeployError(
                f"TensorRT {trt.__version__} did not take the builder flag(s) {missing} for '{out.name}'; not kept"
            )
        check = check_trt_engine(engine, onnx_path, contract, tf32=tf32)
        poly_trt.SaveEngine(engine, str(tmp))()
        del engine
    eligible, picked = parse_sparsity_log(lines)
    inspected = parse_inspector(info)
    if picked is None and sparse:
        picked_from, picked = "engine inspector (sparse tactic names)", inspected["sparse_tactics"]
    else:
        picked_from = "builder log"
    return {
        "builder_flags": flags,  # every BuilderFlag set on the config TensorRT built with
        "engine_check": check,
        "builder_log_sparsity": {"eligible_line_found": eligible is not None, "picked_line_found": picked is not None},
        "sparse_eligible_layers": eligible or [],
        "sparse_picked_layers": picked or [],
        "sparse_picked_source": picked_from,
        "inspector": inspected,
        "timing_cache": str(timing_cache),
        "build_seconds": round(time.perf_counter() - start, 1),
    }


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def _choose_backend(requested: str) -> tuple[str, str | None]:
    if requested == "onnxruntime":
        return "onnxruntime", None
    reason = tensorrt_unavailable_reason()
    if requested == "tensorrt" and reason:
        raise SparseDeployError(
            f"--backend tensorrt, but {reason}; use --backend onnxruntime (or auto) on this machine"
        )
    if reason:
        log.warning("No TensorRT engine will be built: %s; building ONNX Runtime engines instead", reason)
        return "onnxruntime", reason
    return "tensorrt", None


def _settings(backend: str, sparse: bool, tf32: bool) -> dict[str, Any]:
    """The requested builder settings of one engine (and for TensorRT the machine): part of its fingerprint."""
    return _trt_settings(sparse, tf32) if backend == "tensorrt" else {"ort_optimization_level": ORT_OPTIMIZATION_LEVEL}


def _build_one(
    graph: ExportedGraph, path: Path, contract: IOContract, backend: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """Build the engine at ``path`` from ``graph``; the backend's manifest entries."""
    if backend == "onnxruntime":
        return build_ort_engine(graph.path, path, contract)
    cc = (settings["compute_capability"] or "unknown").replace(".", "")
    timing_cache = path.parent / f"timing-sm{cc}-trt{settings['tensorrt_version']}.cache"
    sparse, tf32 = graph.kind == "sparse", settings["builder_config"]["tf32"] is True
    details = build_trt_engine(graph.path, path, contract, sparse=sparse, timing_cache=timing_cache, tf32=tf32)
    layer_nodes = graph.manifest.get("sparsity_check", {}).get("layer_nodes", {})
    details["sparse_picked_modules"] = picked_modules(details["sparse_picked_layers"], layer_nodes)
    details["sparse_eligible_modules"] = picked_modules(details["sparse_eligible_layers"], layer_nodes)
    if sparse:
        log.info(
            "%s: %d layers eligible for sparse math, %d picked sparse kernels (%d of %d masked layers)",
            path.name,
            len(details["sparse_eligible_layers"]),
            len(details["sparse_picked_layers"]),
            len(details["sparse_picked_modules"]),
            len(graph.manifest["sparse_layers"]),
        )
    return details


def build_engines(config: BuildConfig) -> BuildReport:
    """Export (reusing up-to-date graphs) and build one engine per graph, reusing current engines."""
    config.validate()
    backend, fallback = _choose_backend(config.backend)
    profile = config.profile
    if config.engine_dir is not None:  # refused before the export's work, not after it
        check_output(config.engine_dir, "engines", "--out")
    # Graphs exported now record the build's profile; reused ones keep theirs (the batch axis is dynamic).
    exports = export_all(
        dataclasses.replace(config.export, max_batch=profile.max, opt_batch=profile.opt), reuse=not config.force
    )
    preset = preset_from_manifest(exports[0].manifest)
    engine_dir = Path(config.engine_dir) if config.engine_dir is not None else Path("engines") / preset.name
    report = BuildReport(backend=backend, fallback_reason=fallback, exports=exports)
    with claim_output(engine_dir, "engines", "--out"):  # one build at a time per engine folder
        for graph in exports:
            contract = contract_for(preset, graph.precision, profile)
            path = engine_path(engine_dir, graph.kind, graph.precision, backend)
            settings = _settings(backend, graph.kind == "sparse", config.tf32)
            inputs = _fingerprint_inputs(graph, contract, backend, settings)
            reason = "--force" if config.force else stale_reason(path, inputs)
            if reason is None:
                log.info("%s is up to date; reusing it", path)
                report.engines.append(
                    BuiltEngine(
                        graph.kind,
                        graph.precision,
                        path,
                        read_engine_manifest(path, verify=False)[1],
                        reused=True,
                        backend=backend,
                    )
                )
                continue
            log.info("building %s (%s)", path, reason)
            start = time.perf_counter()
            # Never leave a manifest that describes a file about to be replaced.
            manifest_path(path).unlink(missing_ok=True)
            details = _build_one(graph, path, contract, backend, settings)
            manifest = {
                **_described(graph, preset, inputs),
                **details,
                "engine": path.name,
                "engine_sha256": sha256_file(path),
                "external_data": describe_data(path) if backend == "onnxruntime" else None,
                "seconds": round(time.perf_counter() - start, 1),
                "created": timestamp(),
            }
            manifest = write_artifact_manifest(path, manifest, inputs)
            report.engines.append(BuiltEngine(graph.kind, graph.precision, path, manifest, backend=backend))
    return report


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=MODULE_PROG + "build",
        description="Export (reusing up-to-date ONNX graphs) and build dense/sparse engines: TensorRT on "
        "a GPU, "
        "ONNX Runtime otherwise.",
    )
    add_source_arguments(parser)
    add_profile_arguments(parser, "the engines")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS + tuple(a for a, b in BACKEND_ALIASES.items() if b in BACKENDS),
        help="auto: TensorRT when usable, else ONNX Runtime (trt, ort: the same names as run's)",
    )
    parser.add_argument("--out", type=Path, help="where the engines go (default engines/<preset>)")
    parser.add_argument("--export-dir", type=Path, help="where the ONNX graphs go (default export/<preset>)")
    add_alias(parser, "--engine-dir", "--out")
    parser.add_argument("--force", action="store_true", help="re-export and rebuild even when up to date")
    parser.add_argument(
        "--no-tf32",
        dest="tf32",
        action="store_false",
        help="TensorRT: keep fp32 GEMMs off TF32 tensor cores (default: TF32 on, recorded in the manifest)",
    )
    return finish_parser(parser)


def from_args(args: argparse.Namespace) -> BuildReport:
    """What ``build`` does with parsed flags (the command line and :mod:`sparse_deploy.api` alike)."""
    config = BuildConfig(
        export=config_from_args(args, args.export_dir),
        backend=args.backend,
        engine_dir=args.out,
        force=args.force,
        tf32=args.tf32,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
    )
    if args.out is not None:
        check_output(args.out, "engines", "--out")
    return build_engines(config)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    report = from_args(build_parser().parse_args(argv))
    if report.fallback_reason:
        print(f"No TensorRT engine was built: {report.fallback_reason}; built ONNX Runtime engines instead")
    for e in report.engines:
        extra = ""
        if e.backend == "tensorrt" and e.kind == "sparse":
            extra = (
                ", sparse kernels picked for "
                f"{len(e.manifest.get('sparse_picked_modules', []))}/{len(e.manifest['sparse_layers'])} masked layers"
            )
        print(f"{e.path}  ({'up to date' if e.reused else 'built'}{extra})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
