"""Triton model repositories from an engine and its manifest.

``generate_repository(RepositoryConfig(engine=..., out=...))`` writes two models::

    <out>/<name>/config.pbtxt            the denoiser, one of three flavours:
    <out>/<name>/1/model.plan              tensorrt     platform "tensorrt_plan" (+ cc_model_filenames)
    <out>/<name>/1/model.onnx              onnxruntime  platform "onnxruntime_onnx" (+ optional TensorRT
                                                        accelerator with trt_sparsity_enable)
    <out>/<name>/1/model.py + <engine>     python       ONNX Runtime inside the Python backend (CPU;
                                                        runs on any Triton, e.g. the one in nvidia-pytriton)
    <out>/<pipeline>/config.pbtxt        the sampling pipeline (Python backend, BLS calls to the denoiser)
    <out>/<pipeline>/1/model.py

Everything in the configs comes from the engine manifest's I/O contract: tensor names, Triton data
types, dims without the batch axis, ``max_batch_size`` from the profile's max. Describing (the
``*_config`` functions, pure) is separate from doing (:func:`generate_repository`, file I/O).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import manifest_path as engine_manifest_path
from ..artifacts import read_engine_manifest
from ..artifacts import (
    source_graph as _source_onnx,  # the graph an engine was built from, if still there and unchanged
)
from ..contract import IOContract, precision_of
from ..errors import SparseDeployError
from ..onnx_files import data_path
from ..outputs import claim_output
from ..presets import PRESETS, Preset, preset_from_manifest
from ..provenance import atomic_dir, timestamp, write_manifest
from ..sampling import training_scheduler
from ..sources import resolve_vae
from .pbtxt import Enum, to_pbtxt
from .pipeline import PIPELINE_INPUTS, PipelineSettings, pipeline_outputs

__all__ = [
    "FLAVOURS",
    "TRITON_DTYPES",
    "RepositoryConfig",
    "RepositoryReport",
    "resolve_flavour",
    "denoiser_config",
    "pipeline_config",
    "generate_repository",
]

log = logging.getLogger(__name__)

FLAVOURS = ("auto", "tensorrt", "onnxruntime", "python")
ORT_ACCELERATORS = ("none", "tensorrt")
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "uint8": "TYPE_UINT8",
    "string": "TYPE_STRING",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HERE = Path(__file__).parent


@dataclass
class RepositoryConfig:
    """One repository generation.

    Attributes:
        engine: engine file (``*.trt.plan`` / ``*.ort.onnx``) or its manifest.
        out: the model repository folder (other models in it are left alone).
        flavour: ``auto`` (TensorRT plan -> ``tensorrt``; ONNX engine -> ``python``, which runs on
            every Triton) | ``tensorrt`` | ``onnxruntime`` | ``python``.
        max_batch: denoiser ``max_batch_size``; default and upper bound: the engine profile's max.
        instances: denoiser instances (``instance_group.count``).
        pipeline_instances: pipeline instances (requests sampled in parallel).
        name / pipeline_name: model names in the repository.
        ort_accelerator: ``tensorrt`` adds ONNX Runtime's TensorRT accelerator (onnxruntime
            flavour; 2:4 sparse kernels enabled for sparse engines).
        max_queue_delay_us: how long the dynamic batcher waits to fill a batch.
        vae: a local diffusers AutoencoderKL folder the pipeline decodes latents with (latent
            models only; must exist on the server at that path).
        default_steps: the pipeline's steps when a request does not say.
    """

    engine: Path
    out: Path
    flavour: str = "auto"
    max_batch: int | None = None
    instances: int = 1
    pipeline_instances: int = 1
    name: str = "denoiser"
    pipeline_name: str = "pipeline"
    ort_accelerator: str = "none"
    max_queue_delay_us: int = 1000
    vae: Path | None = None
    default_steps: int = 50

    def validate(self) -> RepositoryConfig:
        if self.flavour not in FLAVOURS:
            raise SparseDeployError(f"unknown --flavour '{self.flavour}'; choose one of: {', '.join(FLAVOURS)}")
        if self.ort_accelerator not in ORT_ACCELERATORS:
            raise SparseDeployError(
                f"unknown --ort-accelerator '{self.ort_accelerator}'; choose one of: {', '.join(ORT_ACCELERATORS)}"
            )
        for flag, value in (
            ("--instances", self.instances),
            ("--pipeline-instances", self.pipeline_instances),
            ("--default-steps", self.default_steps),
        ):
            if value < 1:
                raise SparseDeployError(f"{flag} must be at least 1, got {value}")
        if self.max_batch is not None and self.max_batch < 1:
            raise SparseDeployError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.max_queue_delay_us < 0:
            raise SparseDeployError(f"--max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")
        for flag, value in (("--name", self.name), ("--pipeline-name", self.pipeline_name)):
            if not _NAME.match(value):
                raise SparseDeployError(
                    f"{flag} '{value}' is not a valid Triton model name (letters, digits, '_', '.', '-')"
                )
        if self.name == self.pipeline_name:
            raise SparseDeployError(f"--name and --pipeline-name must differ, both are '{self.name}'")
        return self


@dataclass
class RepositoryReport:
    """What was written."""

    root: Path
    flavour: str
    denoiser: Path
    pipeline: Path
    max_batch: int
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Describe (pure)
# --------------------------------------------------------------------------------------------


def resolve_flavour(requested: str, manifest: dict[str, Any]) -> tuple[str, str | None]:
    """The flavour to write for an engine, and a note when ``auto`` chose it."""
    backend = manifest.get("backend", "onnxruntime")
    if requested == "auto":
        if backend == "tensorrt":
            return "tensorrt", None
        return "python", (
            "ONNX engine -> 'python' flavour (ONNX Runtime inside the Python backend; runs on "
            "any Triton, "
            "including the CPU-only one in nvidia-pytriton); use --flavour onnxruntime for a "
            "Triton with the onnxruntime backend"
        )
    if requested == "tensorrt" and backend != "tensorrt":
        raise SparseDeployError(
            f"--flavour tensorrt needs a TensorRT engine (*.trt.plan), but this is a {backend} engine; "
            "build one on the serving GPU with: python -m sparse_deploy.build --backend tensorrt"
        )
    return requested, None


def _tensor(name: str, dtype: str, dims: tuple[int, ...], optional: bool = False) -> dict[str, Any]:
    if dtype not in TRITON_DTYPES:
        raise SparseDeployError(f"tensor '{name}' has dtype {dtype}, which has no Triton type here")
    entry: dict[str, Any] = {"name": name, "data_type": Enum(TRITON_DTYPES[dtype])}
    if dims:
        entry["dims"] = list(dims)
    else:
        # A per-row scalar (model shape [batch]): Triton wants dims [1] and a reshape to [].
        # Clients (and the pipeline's BLS calls) send [batch, 1].
        entry.update(dims=[1], reshape={"shape": []})
    if optional:
        entry["optional"] = True
    return entry


def _params(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": v}} for k, v in values.items()]


def _shapes(contract: IOContract, batch: int) -> str:
    return ",".join(f"{t.name}:{'x'.join(str(d) for d in t.concrete(batch))}" for t in contract.inputs)


def denoiser_config(
    contract: IOContract,
    flavour: str,
    *,
    name: str = "denoiser",
    max_batch: int | None = None,
    instances: int = 1,
    kind: str = "dense",
    compute_capability: str | None = None,
    ort_accelerator: str = "none",
    engine_file: str | None = None,
    instance_kind: str | None = None,
    max_queue_delay_us: int = 1000,
) -> dict[str, Any]:
    """The denoiser's model configuration (a dict for :func:`to_pbtxt`).

    Args:
        contract: the engine's I/O contract; names, dtypes and dims come from it.
        flavour: ``tensorrt`` | ``onnxruntime`` | ``python``.
        max_batch: ``max_batch_size``; default the profile's max, which it may not exceed.
        kind: ``dense`` | ``sparse`` (turns on TensorRT's sparsity in the ORT accelerator).
        compute_capability: e.g. ``"8.9"``; keys ``cc_model_filenames`` (tensorrt flavour).
        engine_file: the ONNX file beside ``model.py`` (python flavour).
        instance_kind: ``KIND_GPU`` | ``KIND_CPU`` | ``KIND_AUTO``; default per flavour.
    """
    profile = contract.profile
    max_batch = profile.max if max_batch is None else max_batch
    if max_batch > profile.max:
        raise SparseDeployError(
            f"--max-batch {max_batch} is above the engine's profile max {profile.max}; the engine "
            "cannot run larger "
            f"batches: rebuild it with --max-batch {max_batch}"
        )
    if max_batch < profile.min:
        raise SparseDeployError(f"--max-batch {max_batch} is below the engine's profile min {profile.min}")
    config: dict[str, Any] = {"name": name}
    if flavour == "tensorrt":
        config.update(platform="tensorrt_plan", default_model_filename="model.plan")
        if compute_capability:
            config["cc_model_filenames"] = [{"key": compute_capability, "value": "model.plan"}]
    elif flavour == "onnxruntime":
        config.update(platform="onnxruntime_onnx", default_model_filename="model.onnx")
    elif flavour == "python":
        config.update(backend="python")
    else:
        raise SparseDeployError(f"unknown flavour '{flavour}'; choose one of: {', '.join(FLAVOURS[1:])}")
    config["max_batch_size"] = max_batch
    config["input"] = [_tensor(t.name, t.dtype, t.shape[1:]) for t in contract.inputs]
    config["output"] = [_tensor(t.name, t.dtype, t.shape[1:]) for t in contract.outputs]
    batching: dict[str, Any] = {"max_queue_delay_microseconds": max_queue_delay_us}
    preferred = sorted({b for b in (profile.opt, max_batch) if profile.min <= b <= max_batch})
    if preferred:
        batching["preferred_batch_size"] = preferred
    config["dynamic_batching"] = batching
    default_kind = {"tensorrt": "KIND_GPU", "onnxruntime": "KIND_AUTO", "python": "KIND_CPU"}[flavour]
    config["instance_group"] = [{"count": instances, "kind": Enum(instance_kind or default_kind)}]
    if flavour == "onnxruntime" and ort_accelerator == "tensorrt":
        trt_params = {
            "precision_mode": "FP16" if contract.precision == "fp16" else "FP32",
            "trt_sparsity_enable": "1" if kind == "sparse" else "0",
            "trt_profile_min_shapes": _shapes(contract, profile.min),
            "trt_profile_opt_shapes": _shapes(contract, min(profile.opt, max_batch)),
            "trt_profile_max_shapes": _shapes(contract, max_batch),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": f"/tmp/sparse-deploy-ort-trt-cache/{name}",
        }
        config["optimization"] = {
            "execution_accelerators": {
                "gpu_execution_accelerator": [
                    {"name": "tensorrt", "parameters": [{"key": k, "value": v} for k, v in trt_params.items()]}
                ]
            }
        }
    if flavour == "python":
        config["parameters"] = _params({"engine": engine_file or "", "device": "cpu"})
    return config


def pipeline_config(settings: PipelineSettings, *, name: str = "pipeline", instances: int = 1) -> dict[str, Any]:
    """The pipeline's model configuration: Python backend, one request = one batch of images."""
    preset = settings.model_preset()
    inputs = [_tensor(t.name, t.dtype, t.dims, optional=True) for t in PIPELINE_INPUTS]
    if not preset.num_classes:
        inputs = [t for t in inputs if t["name"] != "class_labels"]
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": 0,
        "input": inputs,
        "output": [_tensor(t.name, t.dtype, t.dims) for t in pipeline_outputs(preset, vae=bool(settings.vae))],
        "instance_group": [{"count": instances, "kind": Enum("KIND_CPU")}],
        "parameters": _params(settings.to_parameters()),
    }


# --------------------------------------------------------------------------------------------
# Do (file I/O)
# --------------------------------------------------------------------------------------------


def _header(engine: Path, manifest: dict[str, Any], what: str) -> str:
    lines = [
        f"{what}: generated by python -m sparse_deploy.triton on {timestamp()}",
        f"engine: {engine.name} ({manifest.get('backend')}, {manifest.get('kind')}, "
        f"{precision_of(manifest)}, "
        f"preset {manifest.get('preset')}), sha256 "
        f"{manifest.get('engine_sha256') or manifest.get('onnx_sha256')}",
    ]
    if manifest.get("backend") == "tensorrt":
        lines.append(
            f"TensorRT {manifest.get('tensorrt_version')}, compute capability "
            f"{manifest.get('compute_capability')} "
            f"({manifest.get('gpu')}): the plan only loads on that GPU generation with that "
            "TensorRT version"
        )
    return "\n".join(lines)


def _spec_unless_builtin(preset: Preset) -> str:
    """The preset as JSON for the pipeline's parameters, or "" when it is exactly a built-in one."""
    spec = json.dumps(preset.to_dict(), sort_keys=True, default=list)
    builtin = PRESETS.get(preset.name)
    return "" if builtin is not None and json.dumps(builtin.to_dict(), sort_keys=True, default=list) == spec else spec


def generate_repository(config: RepositoryConfig) -> RepositoryReport:
    """Write the denoiser and pipeline models for ``config.engine`` into ``config.out``.

    Each model folder is written to a temporary name and renamed into place, replacing an older
    one of the same name; other models in the repository are left alone.
    """
    config.validate()
    engine, manifest = read_engine_manifest(config.engine)
    contract = IOContract.from_dict(manifest["contract"])
    preset = preset_from_manifest(manifest)
    flavour, note = resolve_flavour(config.flavour, manifest)
    notes = [note] if note else []
    kind = str(manifest.get("kind", "dense"))
    if config.vae is not None and not preset.latent:
        raise SparseDeployError(f"--vae decodes latents, but preset '{preset.name}' samples pixels; drop --vae")
    if preset.latent and config.vae is None:
        notes.append(
            f"preset '{preset.name}' samples latents and no --vae was given: the pipeline returns "
            "min-max normalised "
            "latent channels as 'images' (not decoded images) and the model-space latents as 'samples'"
        )

    copies, instance_kind = _denoiser_files(engine, manifest, flavour, notes)

    denoiser = denoiser_config(
        contract,
        flavour,
        name=config.name,
        max_batch=config.max_batch,
        instances=config.instances,
        kind=kind,
        compute_capability=manifest.get("compute_capability"),
        ort_accelerator=config.ort_accelerator,
        engine_file=copies[0][1] if flavour == "python" else None,
        instance_kind=instance_kind,
        max_queue_delay_us=config.max_queue_delay_us,
    )
    if config.ort_accelerator != "none" and flavour != "onnxruntime":
        notes.append(f"--ort-accelerator applies to the onnxruntime flavour only; ignored for '{flavour}'")
    max_steps = training_scheduler(preset.schedule).config.num_train_timesteps
    if config.default_steps > max_steps:  # every request without 'steps' would fail
        raise SparseDeployError(
            f"--default-steps {config.default_steps} is above the model's {max_steps}-step schedule, the pipeline's "
            "maximum; "
            f"pass --default-steps {max_steps} or fewer"
        )
    settings = PipelineSettings(
        preset=preset.name,
        precision=contract.precision,
        max_batch=denoiser["max_batch_size"],
        denoiser=config.name,
        default_steps=config.default_steps,
        vae=str(resolve_vae(config.vae).resolve()) if config.vae else "",
        max_steps=max_steps,
        preset_spec=_spec_unless_builtin(preset),
    )
    pipeline = pipeline_config(settings, name=config.pipeline_name, instances=config.pipeline_instances)
    with claim_output(config.out, "triton", "--out") as root:
        for name in (config.name, config.pipeline_name):  # replaced whole: only an earlier model of that name
            _check_model_folder(root / name, config.out)
        _write_models(root, config, engine, manifest, flavour, copies, denoiser, pipeline, notes)
    for n in notes:
        log.warning("%s", n)
    return RepositoryReport(
        Path(config.out),
        flavour,
        Path(config.out) / config.name,
        Path(config.out) / config.pipeline_name,
        denoiser["max_batch_size"],
        notes,
    )


def _check_model_folder(folder: Path, out: Path) -> None:
    if folder.exists() and not (folder / "config.pbtxt").is_file() and any(folder.iterdir()):
        raise SparseDeployError(
            f"'{folder}' in --out '{out}' is not a Triton model (no config.pbtxt) and would be replaced; move it "
            "away or pass another --name"
        )


def _write_models(
    root: Path,
    config: RepositoryConfig,
    engine: Path,
    manifest: dict[str, Any],
    flavour: str,
    copies: list[tuple[Path, str]],
    denoiser: dict[str, Any],
    pipeline: dict[str, Any],
    notes: list[str],
) -> None:
    with atomic_dir(root / config.name) as tmp:
        (tmp / "1").mkdir()
        for src, dst in copies:
            shutil.copyfile(src, tmp / "1" / dst)
        (tmp / "config.pbtxt").write_text(
            to_pbtxt(denoiser, _header(engine, manifest, f"denoiser ({flavour} flavour)"))
        )
    record = {
        "engine": str(engine),
        "flavour": flavour,
        "denoiser": config.name,
        "pipeline": config.pipeline_name,
        "max_batch": denoiser["max_batch_size"],
        "notes": notes,
        "created": timestamp(),
    }
    with atomic_dir(root / config.pipeline_name) as tmp:
        (tmp / "1").mkdir()
        shutil.copyfile(_HERE / "model_pipeline.py", tmp / "1" / "model.py")
        (tmp / "config.pbtxt").write_text(
            to_pbtxt(pipeline, _header(engine, manifest, f"sampling pipeline over '{config.name}'"))
        )
        write_manifest(tmp / "sparse-deploy.json", record)  # sealed: an edit is caught by its own hash


def _denoiser_files(
    engine: Path, manifest: dict[str, Any], flavour: str, notes: list[str]
) -> tuple[list[tuple[Path, str]], str | None]:
    """Which files the denoiser model's version folder holds for ``flavour`` (source, name there), and the
    instance kind it is then limited to (None: the flavour's own); says what it chose in ``notes``."""
    instance_kind = None
    copies: list[tuple[Path, str]] = []
    if flavour == "tensorrt":
        copies.append((engine, "model.plan"))
    elif flavour == "onnxruntime":
        source = _source_onnx(engine, manifest) if manifest.get("format") != "sparse-deploy-onnx/1" else engine
        if manifest.get("backend") == "tensorrt" and source is None:
            raise SparseDeployError(
                f"the onnxruntime flavour needs the ONNX graph '{manifest.get('source_onnx')}' this "
                "plan was built from, "
                "and it is missing or changed; pass an ONNX Runtime engine instead"
            )
        if source is None:
            # The .ort.onnx engine was optimized offline for ONNX Runtime's CPU provider only.
            source, instance_kind = engine, "KIND_CPU"
            notes.append(
                f"the source graph of {engine.name} is missing or changed: serving the CPU-optimized "
                "engine on CPU "
                "instances only (its offline optimizations are not valid for GPU providers)"
            )
        copies.append((source, "model.onnx"))
    else:  # python: the ONNX file and its manifest, under their own names, beside model.py
        source, source_manifest = engine, engine_manifest_path(engine)
        if manifest.get("backend") == "tensorrt":
            found = _source_onnx(engine, manifest)
            if found is None:
                raise SparseDeployError(
                    "the python flavour runs ONNX on CPU and needs the graph "
                    f"'{manifest.get('source_onnx')}' this plan "
                    "was built from, which is missing or changed; pass an ONNX Runtime engine "
                    "(*.ort.onnx) instead"
                )
            source, source_manifest = found, found.with_suffix(".json")
            notes.append(
                f"python flavour of a TensorRT engine: serving its source graph {found.name} with ONNX Runtime on CPU"
            )
        copies += [
            (source, source.name),
            (source_manifest, source_manifest.name),
            (_HERE / "model_denoiser.py", "model.py"),
        ]
    # An external-data graph refers to its weights file by name: it goes along under that name.
    copies += [(data, data.name) for src, _ in list(copies) if (data := data_path(src)).is_file()]
    return copies, instance_kind
