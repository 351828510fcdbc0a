"""A diffusers model out: the fine-tuned (baked, exact 2:4) model, as plain diffusers loads and samples it.

Every training run writes ``<run>/diffusers/`` (atomically)::

    model_index.json         a DiTPipeline / DDPMPipeline layout (the input pipeline's own, when the run
                             started from one; a pixel-space DiT names no VAE: ``"vae": [null, null]``)
    <component>/             the model: plain diffusers modules, masks multiplied into the weights
                             (``transformer/`` for a DiT, ``unet/`` for a UNet2DModel), in the precision
                             the input weights were stored in (fp16 in, fp16 out); its config.json says
                             ``"_sparse_deploy": {"pattern": "2:4", ...}`` (diffusers ignores ``_`` keys)
    scheduler/               the DDIM scheduler the toolchain samples with (the model's betas;
                             ``clip_sample`` and ``set_alpha_to_one`` off for the default schedule), or
                             the input pipeline's own
    vae/, ...                the input pipeline's other components, copied
    README.md                the model card: YAML metadata (base model, pattern, coverage, recipe, FID
                             when known) and how to load and sample it with diffusers alone
    sparse_deploy.json       where it came from (checkpoint, masked layers, dense parent, weights sha256)

``DDIMScheduler.from_pretrained(out, subfolder="scheduler")`` and ``<Model>.from_pretrained(out,
subfolder=...)`` with the ten-line loop of the card draw the images ``run`` draws; a pipeline with a
VAE loads as ``DiTPipeline.from_pretrained(out)``, a UNet as ``DDPMPipeline.from_pretrained(out)``. The
toolchain reads the folder back as any diffusers pipeline (``--weights``, ``run --engine``).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, read_manifest
from ..errors import SparseDeployError
from ..lazy import lazy_import
from ..masks import PATTERN
from ..models import Denoiser, cast_
from ..provenance import atomic_dir, sha256_file, timestamp, write_json_atomic, write_text_atomic
from ..schedule import SCHEDULER_CONFIG, sampling_config
from ..sources import resolve_source, stored_precision
from ..sparsify import bake_, zero_masks

diffusers = lazy_import("diffusers", "writing a diffusers model", "make setup (the pinned diffusers of pyproject.toml)")

__all__ = [
    "DIFFUSERS_DIR",
    "RECORD",
    "CARD",
    "CONFIG_KEY",
    "PRECISIONS",
    "write_diffusers",
    "write_run_diffusers",
    "model_card",
    "sampling_snippet",
]

log = logging.getLogger(__name__)

DIFFUSERS_DIR = "diffusers"
RECORD = "sparse_deploy.json"
CARD = "README.md"
#: The key the component's config.json carries (private to diffusers: keys starting with ``_`` are ignored).
CONFIG_KEY = "_sparse_deploy"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_OURS = (RECORD, CARD)  # never copied from an input pipeline: rewritten for this model


def _component(model: Denoiser, source) -> str:
    if source is not None and source.component:
        return source.component
    return "transformer" if model.preset.family == "dit" else "unet"


def _model_index(model: Denoiser, component: str) -> dict[str, Any]:
    """The pipeline a folder without one gets: DiTPipeline (no VAE unless there is one) or DDPMPipeline."""
    index = {"_diffusers_version": diffusers.__version__, "scheduler": ["diffusers", "DDIMScheduler"]}
    if model.preset.family == "dit":
        # DiTPipeline lists a VAE; a pixel-space DiT has none: load it with DiTPipeline.from_pretrained(path, vae=None)
        return {
            "_class_name": "DiTPipeline",
            **index,
            component: ["diffusers", "DiTTransformer2DModel"],
            "vae": [None, None],
        }
    return {"_class_name": "DDPMPipeline", **index, component: ["diffusers", "UNet2DModel"]}


def _precision(precision: str | None, source) -> str:
    if precision is None:
        precision = (stored_precision(source) if source is not None else None) or "fp32"
    if precision not in PRECISIONS:
        raise SparseDeployError(f"unknown precision '{precision}' for the diffusers model; choose {list(PRECISIONS)}")
    return precision


def _mark_config(path: Path, mark: dict[str, Any]) -> None:
    config = json.loads(path.read_text())
    config[CONFIG_KEY] = mark
    write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_diffusers(
    model: Denoiser,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    info: dict | None = None,
    precision: str | None = None,
) -> Path:
    """Save ``model`` (masks already baked) as a diffusers pipeline folder, inside its source pipeline when it had one.

    Args:
        model: a baked :class:`~sparse_deploy.models.Denoiser` (plain Linear/Conv2d modules).
        out: the folder to write (replaced atomically).
        weights: the pipeline folder, model folder or file the run started from.
        info: extra provenance for ``sparse_deploy.json`` and the model card (``step``, ``sparsity``,
            ``coverage``, ``mask_start``, ``train_config``, ``fid``, ``dense_checkpoint``, ``dense_weights``).
        precision: ``fp32`` | ``fp16`` | ``bf16``; None: the precision the input weights were stored in
            (fp32 without input weights).
    """
    if any(hasattr(m, "weight_mask") for m in model.modules()):
        raise SparseDeployError(
            "write_diffusers needs a baked model (sparsify.bake_): diffusers cannot load mask buffers"
        )
    info = dict(info or {})
    source = resolve_source(weights) if weights is not None else None
    component = _component(model, source)
    precision = _precision(precision, source)
    sparse = sorted(zero_masks(model.net))
    out = Path(out)
    with atomic_dir(out) as tmp:
        if source is not None and source.pipeline_root is not None:
            for entry in source.pipeline_root.iterdir():
                if entry.name == component or entry.name.startswith(".") or entry.name in _OURS:
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, tmp / entry.name)
                else:
                    shutil.copy2(entry, tmp / entry.name)
        net = model.net if precision == "fp32" else cast_(copy.deepcopy(model.net), PRECISIONS[precision])
        net.save_pretrained(str(tmp / component), safe_serialization=True)
        _mark_config(
            tmp / component / "config.json",
            {"pattern": PATTERN if sparse else None, "sparse_layers": len(sparse), "card": CARD},
        )
        if not (tmp / "scheduler" / SCHEDULER_CONFIG).exists():
            (tmp / "scheduler").mkdir(exist_ok=True)
            write_json_atomic(tmp / "scheduler" / SCHEDULER_CONFIG, sampling_config(model.preset.schedule))
        if not (tmp / "model_index.json").exists():
            write_json_atomic(tmp / "model_index.json", _model_index(model, component))
        weights_file = tmp / component / "diffusion_pytorch_model.safetensors"
        record = {
            "component": component,
            "preset": model.preset.name,
            "precision": precision,
            "pattern": PATTERN if sparse else None,
            "sparse_layers": sparse,
            "source": str(Path(weights).resolve()) if weights is not None else None,
            "weights_sha256": sha256_file(weights_file) if weights_file.is_file() else None,
            "created": timestamp(),
            **info,
        }
        write_json_atomic(tmp / RECORD, record)
        write_text_atomic(
            tmp / CARD, model_card(model, record, index=json.loads((tmp / "model_index.json").read_text()))
        )
    return out


def _source_precision(manifest: dict[str, Any], weights: str | Path | None) -> str | None:
    """How the run's input weights were stored: ``--weights``' file, else the shipped folder ``--init`` came from."""
    candidates = [weights]
    init = (manifest.get("train_config") or {}).get("init")
    if init:
        try:
            candidates.append((read_manifest(init).get("source_weights") or {}).get("path"))
        except SparseDeployError:
            pass
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            try:
                found = stored_precision(resolve_source(candidate))
            except SparseDeployError:
                found = None
            if found:
                return found
    return None


def _base_fid(manifest: dict[str, Any], weights: str | Path | None) -> dict[str, Any] | None:
    """The FID its shipped dense weights record (``MANIFEST.json``), when the run started from such a folder."""
    config = manifest.get("train_config") or {}
    folders = [weights, config.get("teacher")]
    if config.get("init"):
        try:
            folders.append((read_manifest(config["init"]).get("source_weights") or {}).get("path"))
        except SparseDeployError:
            pass
    for folder in folders:
        path = Path(folder) / "MANIFEST.json" if folder else None
        if path is not None and path.is_file():
            try:
                fid = json.loads(path.read_text()).get("fid")
            except (OSError, ValueError, AttributeError):
                fid = None
            if isinstance(fid, dict) and fid.get("value") is not None:
                return {**fid, "model": str(folder)}
    return None


def write_run_diffusers(
    run_dir: str | Path, checkpoint: str | Path, weights: str | Path | None = None, precision: str | None = None
) -> Path:
    """``<run>/diffusers/`` from a run's checkpoint: its inference (EMA) model, masks baked."""
    model, manifest = load_checkpoint(checkpoint)
    layers = sorted(bake_(model))
    coverage = manifest.get("coverage") or None
    return write_diffusers(
        model,
        Path(run_dir) / DIFFUSERS_DIR,
        weights=weights,
        precision=precision or _source_precision(manifest, weights),
        info={
            "checkpoint": str(Path(checkpoint).resolve()),
            "step": manifest.get("step"),
            "masked_layers": layers,
            "sparsity": manifest.get("sparsity"),
            "coverage": coverage,
            "mask_start": manifest.get("mask_start"),
            "train_config": manifest.get("train_config"),
            "dense_checkpoint": manifest.get("dense_checkpoint"),
            "dense_weights": manifest.get("dense_weights"),
            "base_fid": _base_fid(manifest, weights),
        },
    )


# -- the model card ---------------------------------------------------------------------------------


def sampling_snippet(model: Denoiser, index: dict[str, Any], path: str = "path/to/this/folder") -> str:
    """Python that samples the folder with diffusers alone (no code of ours): the card's "How to load" block."""
    preset = model.preset
    c, size = preset.in_channels, preset.sample_size
    if preset.family == "unet" and not preset.num_classes:
        return (
            "from diffusers import DDPMPipeline\n\n"
            f'pipe = DDPMPipeline.from_pretrained("{path}")  # UNet2DModel + the DDIM scheduler above\n'
            "images = pipe(batch_size=4, num_inference_steps=25).images  # PIL images\n"
        )
    cls = "DiTTransformer2DModel" if preset.family == "dit" else "UNet2DModel"
    component = next((k for k, v in index.items() if isinstance(v, list) and v[-1] == cls), "transformer")
    labels = "class_labels=labels" if preset.num_classes else "class_labels=None"
    lines = [
        "import torch",
        f"from diffusers import DDIMScheduler, {cls}",
        "",
        f'path = "{path}"',
        f'model = {cls}.from_pretrained(path, subfolder="{component}", torch_dtype=torch.float32).eval()',
        'scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")',
        "scheduler.set_timesteps(25)",
        f"labels = torch.arange(8) % {max(preset.num_classes, 1)}  # class ids"
        if preset.num_classes
        else "labels = None",
        f"x = torch.randn(8, {c}, {size}, {size}, generator=torch.Generator().manual_seed(0))",
        "with torch.no_grad():",
        "    for t in scheduler.timesteps:",
        f"        eps = model(x, timestep=t.expand(len(x)), {labels}).sample[:, :{c}]",
        "        x = scheduler.step(eps, t, x).prev_sample",
    ]
    if preset.latent:
        lines.append("# latents: decode them with the VAE the model was trained with, e.g. vae.decode(x / 0.18215)")
    else:
        lines.append("images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [8, C, H, W]")
    return "\n".join(lines) + "\n"


def _yaml(value: Any) -> str:
    """A YAML value (JSON is YAML's flow style)."""
    return json.dumps(value, default=str)


def _flags(config: dict[str, Any]) -> str:
    """The main settings of a training config as ``train`` flags (the full config: sparse_deploy.json)."""
    sparsity = config.get("sparsity") or {}
    pairs = [
        ("--weights", config.get("weights")),
        ("--init", config.get("init")),
        ("--teacher", config.get("teacher")),
        ("--masks", config.get("masks")),
        ("--sparsity", sparsity.get("mode")),
        ("--mask-init", sparsity.get("mask_init") if sparsity.get("mask_init") != "magnitude" else None),
        ("--steps", config.get("steps")),
        ("--kd-weight", config.get("kd_weight")),
        ("--kd-features", config.get("kd_features")),
        ("--lr", config.get("lr")),
        ("--seed", config.get("seed")),
    ]
    return " ".join(f"{flag} {value}" for flag, value in pairs if value not in (None, ""))


def model_card(model: Denoiser, record: dict[str, Any], index: dict[str, Any] | None = None) -> str:
    """The README.md of a diffusers folder: YAML metadata, then what the model is and how to load it."""
    preset = model.preset
    coverage = record.get("coverage") or {}
    sparsity = record.get("sparsity") or {}
    config = record.get("train_config") or {}
    sparse = record.get("sparse_layers") or []
    base = record.get("source") or config.get("init") or f"random init ({preset.name})"
    fid = record.get("fid")
    base_fid = record.get("base_fid")
    meta = {
        "library_name": "diffusers",
        "base_model": base,
        "tags": ["sparse-deploy", "2:4-sparsity", "semi-structured-sparsity", preset.family]
        if sparse
        else ["sparse-deploy", preset.family],
        "sparsity": {
            "pattern": PATTERN if sparse else None,
            "sparse_layers": len(sparse),
            "sparse_share_of_macs": coverage.get("sparse_share"),
            "effective_macs_share": (coverage["effective_macs"] / coverage["model_macs"])
            if coverage.get("model_macs")
            else None,
            "mode": sparsity.get("mode"),
            "mask_start": sparsity.get("mask_init"),
            "steps": record.get("step"),
        },
        "fid": fid,
        "base_model_fid": base_fid,
        "precision": record.get("precision"),
    }
    head = "---\n" + "".join(f"{k}: {_yaml(v)}\n" for k, v in meta.items()) + "---\n\n"
    title = f"# {preset.name}: {'2:4-sparse' if sparse else 'dense'} {type(model.net).__name__}\n\n"
    if sparse:
        share = coverage.get("sparse_share")
        what = (
            f"{len(sparse)} Linear/Conv2d layers hold exactly two non-zeros in every group of four weights "
            "along their input axis (the 2:4 pattern TensorRT and cuSPARSELt run on sparse tensor cores)"
            + (f"; they carry {share:.1%} of the model's MACs" if share is not None else "")
            + (
                f", so the model does {meta['sparsity']['effective_macs_share']:.1%} of the dense MACs"
                if meta["sparsity"]["effective_macs_share"]
                else ""
            )
            + ". The zeros are in the weights: plain diffusers runs this model as a dense one (same outputs, no "
            "speed-up); the speed-up needs a 2:4 engine (see below).\n\n"
        )
    else:
        what = "No layer is 2:4-sparse: this is a dense model.\n\n"
    recipe = ""
    if sparsity:
        recipe = (
            f"## How it was made\n\nsparse-deploy `train` with `{_flags(config)}`: "
            f"sparsity mode `{sparsity.get('mode')}`, masks started from `{sparsity.get('mask_init')}`, "
            f"{record.get('step')} fine-tuning steps, output distillation weight {config.get('kd_weight')}, "
            f"block distillation {config.get('kd_features')}. Every setting: `{RECORD}` (`train_config`).\n\n"
        )
    quality = "## Quality\n\n"
    if fid:
        quality += (
            f"FID {fid.get('value'):.2f} ({fid.get('samples')} samples, {fid.get('sampler')} {fid.get('steps')}).\n"
        )
    else:
        quality += (
            "FID: not measured for this model. Measure it with `sparse-deploy run --engine <this folder> --out "
            "samples/x --num 1000` then `sparse-deploy fid samples/x fashion-mnist:test`"
            + (" (Fashion-MNIST models).\n" if preset.dataset == "fashion-mnist" else " and your reference images.\n")
        )
    if base_fid:
        quality += (
            f"The dense model it started from scores FID {base_fid['value']:.2f} "
            f"({base_fid.get('samples')} samples, {base_fid.get('sampler')} {base_fid.get('steps')} steps).\n"
        )
    load = (
        "## How to load it\n\nWith diffusers alone (no code of sparse-deploy); this draws the images "
        "`sparse-deploy run` draws from the same noise:\n\n```python\n"
        + sampling_snippet(model, index or {})
        + "```\n\n"
    )
    if preset.family == "dit" and not preset.latent:
        load += (
            "`DiTPipeline` needs a VAE, which a pixel-space model has none of (`model_index.json` names "
            '`"vae": [null, null]`): `DiTPipeline.from_pretrained(path, vae=None)` loads the parts, and the '
            "loop above samples them.\n\n"
        )
    fast = (
        "## Run it fast\n\n```\nsparse-deploy build --weights <this folder> --precision fp16   # TensorRT on a "
        "GPU (2:4 kernels), ONNX Runtime on a CPU\nsparse-deploy run --engine engines/<model>/sparse-fp16.trt.plan "
        "--out samples/x\n```\n"
    )
    return head + title + what + recipe + quality + "\n" + load + fast
