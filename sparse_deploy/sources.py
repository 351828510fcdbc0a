"""Where a model comes from: a diffusers pipeline folder, a model folder, or a .safetensors file.

Every stage that takes a model, weights or a VAE resolves it here, so ``--weights``, ``--model``
and ``--vae`` accept the same three things:

* a **pipeline folder** (``model_index.json``): the denoiser is the component whose class is
  ``DiTTransformer2DModel`` or ``UNet2DModel`` (``transformer/`` or ``unet/``), the VAE the
  ``AutoencoderKL`` component, the schedule ``scheduler/scheduler_config.json``, all found by
  the pipeline's own ``model_index.json``;
* a **model folder** (``config.json`` + weights); inside a pipeline its siblings are used too;
* a **.safetensors file** (diffusers names), which carries no config: ``--model PRESET`` says
  which layout it fits.

The model's preset comes from its ``config.json`` (:func:`presets.preset_from_config`), so any
DiT or UNet2DModel config works; a config equal to a built-in preset's layout keeps that
preset's name and defaults.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SparseDeployError
from .lazy import lazy_import
from .presets import PRESETS, Preset, family_of, get_preset, preset_from_config
from .schedule import SCHEDULER_CONFIG, canonical_schedule, check_schedule

diffusers = lazy_import(
    "diffusers", "building and loading diffusers models", "make setup (the pinned diffusers of pyproject.toml)"
)

__all__ = [
    "ModelSource",
    "diffusers_class",
    "resolve_source",
    "resolve_vae",
    "load_vae",
    "source_preset",
    "is_path",
    "stored_precision",
]

log = logging.getLogger(__name__)

DENOISER_CLASSES = ("DiTTransformer2DModel", "UNet2DModel")
VAE_CLASSES = ("AutoencoderKL",)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model input.

    Attributes:
        path: what was given.
        kind: ``pipeline`` | ``model`` | ``file``.
        model_dir: the denoiser's folder (config.json + weights); None for a bare file.
        weights_file: the ``.safetensors`` file given, if any.
        config: the denoiser's ``config.json`` (None for a bare file without one beside it).
        pipeline_root: the pipeline folder holding the model, if any.
        model_index: that pipeline's ``model_index.json``.
        component: the denoiser's component name in the pipeline (``transformer`` / ``unet``).
        vae_dir: the pipeline's AutoencoderKL folder, if any.
        scheduler_config: the pipeline's scheduler config, if any.
    """

    path: Path
    kind: str
    model_dir: Path | None = None
    weights_file: Path | None = None
    config: dict[str, Any] | None = None
    pipeline_root: Path | None = None
    model_index: dict[str, Any] | None = None
    component: str | None = None
    vae_dir: Path | None = None
    scheduler_config: dict[str, Any] | None = None

    @property
    def weights(self) -> Path:
        """What ``models.build_model`` loads: the model folder, else the file."""
        return self.model_dir if self.model_dir is not None else self.weights_file  # type: ignore[return-value]

    @property
    def class_name(self) -> str | None:
        return (self.config or {}).get("_class_name")

    @property
    def name(self) -> str:
        """A preset name for this model: the pipeline's (or model folder's) folder name."""
        base = self.pipeline_root or self.model_dir or self.path.with_suffix("")
        name = re.sub(r"[^a-z0-9._-]+", "-", base.resolve().name.lower()).strip("-.") or "model"
        return f"{name}-custom" if name in PRESETS else name


def is_path(value: str | Path | None) -> bool:
    """Whether a ``--model`` value names something on disk rather than a preset (preset names win)."""
    if value is None or str(value) in PRESETS:
        return False
    return Path(value).exists() or "/" in str(value) or str(value).endswith(".safetensors")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SparseDeployError(f"'{path}' is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SparseDeployError(f"'{path}' is not a JSON object")
    return data


def _listing(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "nothing"


def _components(root: Path, index: dict[str, Any]) -> dict[str, str]:
    """``{component: class name}`` of a model_index.json (entries are ``[library, class]``)."""
    out = {}
    for key, value in index.items():
        if not key.startswith("_") and isinstance(value, list) and len(value) == 2 and value[1]:
            out[key] = str(value[1])
    return out


def _scheduler(path: Path) -> dict[str, Any] | None:
    """A scheduler config, checked; None when it is the default schedule's (:func:`schedule.canonical_schedule`)."""
    return canonical_schedule(check_schedule(_json(path), str(path)))


def _pipeline_parts(root: Path) -> tuple[dict[str, Any], str | None, Path | None, dict[str, Any] | None]:
    """``(model_index, denoiser component, vae folder, scheduler config)`` of a pipeline folder."""
    index = _json(root / "model_index.json")
    parts = _components(root, index)
    denoisers = [k for k, cls in parts.items() if cls in DENOISER_CLASSES]
    vaes = [k for k, cls in parts.items() if cls in VAE_CLASSES]
    for key in denoisers + vaes:
        if not (root / key / "config.json").is_file():
            raise SparseDeployError(
                f"pipeline '{root}' names component '{key}' ({parts[key]}) in model_index.json, but "
                f"'{root / key}' "
                f"has no config.json (found in {root}: {_listing(root)})"
            )
    scheduler = None
    if "scheduler" in parts:
        if not (root / "scheduler" / "scheduler_config.json").is_file():
            raise SparseDeployError(
                f"pipeline '{root}' names a scheduler in model_index.json, but '{root / 'scheduler'}' "
                "has no scheduler_config.json"
            )
        scheduler = _scheduler(root / "scheduler" / SCHEDULER_CONFIG)
    return index, (denoisers[0] if denoisers else None), (root / vaes[0] if vaes else None), scheduler


def resolve_source(path: str | Path) -> ModelSource:
    """Resolve a pipeline folder, model folder or ``.safetensors`` file (see the module docstring).

    Raises:
        SparseDeployError: naming what was found and what is missing.
    """
    path = Path(path)
    if not path.exists():
        raise SparseDeployError(
            f"'{path}' does not exist; pass a diffusers pipeline folder, a model folder or a .safetensors file"
        )
    if path.is_file():
        if path.suffix != ".safetensors":
            raise SparseDeployError(
                f"'{path}' is a {path.suffix or 'suffix-less'} file; weights files must be "
                ".safetensors (or pass a diffusers folder)"
            )
        beside = path.parent / "config.json"
        config = _json(beside) if beside.is_file() else None
        if config is not None and config.get("_class_name") not in DENOISER_CLASSES:
            config = None  # a config of something else (a VAE folder, ...): not this file's
        return ModelSource(path, "file", weights_file=path, config=config)
    if (path / "model_index.json").is_file():
        index, component, vae, scheduler = _pipeline_parts(path)
        if component is None:
            parts = _components(path, index)
            raise SparseDeployError(
                f"pipeline '{path}' ({index.get('_class_name', '?')}) has no DiTTransformer2DModel or "
                "UNet2DModel component "
                "(model_index.json lists "
                f"{', '.join(f'{k}: {v}' for k, v in parts.items()) or 'no components'})"
            )
        model_dir = path / component
        return ModelSource(
            path,
            "pipeline",
            model_dir=model_dir,
            config=_json(model_dir / "config.json"),
            pipeline_root=path,
            model_index=index,
            component=component,
            vae_dir=vae,
            scheduler_config=scheduler,
        )
    if (path / "config.json").is_file():
        config = _json(path / "config.json")
        cls = config.get("_class_name")
        if cls not in DENOISER_CLASSES:
            raise SparseDeployError(
                f"'{path}' holds a {cls or 'class-less'} config; the model must be a "
                f"{' or '.join(DENOISER_CLASSES)} "
                "(pass the pipeline folder or its transformer/ or unet/ folder)"
            )
        parent = path.parent
        if (parent / "model_index.json").is_file():  # a component of a pipeline: its siblings count
            index, component, vae, scheduler = _pipeline_parts(parent)
            if component == path.name:
                return ModelSource(
                    path,
                    "model",
                    model_dir=path,
                    config=config,
                    pipeline_root=parent,
                    model_index=index,
                    component=component,
                    vae_dir=vae,
                    scheduler_config=scheduler,
                )
        beside = path / SCHEDULER_CONFIG  # a model folder may carry its sampling schedule (weights/<model>/ do)
        schedule = _scheduler(beside) if beside.is_file() else None
        return ModelSource(path, "model", model_dir=path, config=config, scheduler_config=schedule)
    if (path / SCHEDULER_CONFIG).is_file():
        raise SparseDeployError(f"'{path}' is a scheduler folder, not a model; pass the pipeline folder")
    raise SparseDeployError(
        f"'{path}' holds neither model_index.json (a diffusers pipeline) nor config.json (a "
        "diffusers model folder); "
        f"found: {_listing(path)}"
    )


#: safetensors dtype names of the float precisions weights are stored in.
_STORED = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}
_MAX_HEADER = 100 * 2**20


def stored_precision(source: ModelSource) -> str | None:
    """``fp32`` | ``fp16`` | ``bf16``: how the model's floating-point weights are stored; None when unknown.

    Read from the ``.safetensors`` header (no tensor is loaded); the precision of most float tensors.
    """
    weights = source.weights
    if weights is not None and weights.is_dir():
        weights = next(iter(sorted(weights.glob("*.safetensors"))), None)
    if weights is None or not weights.is_file():
        return None
    try:
        with open(weights, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size)) if 0 < size <= _MAX_HEADER else {}
    except (OSError, ValueError):
        return None
    counts: dict[str, int] = {}
    for key, entry in header.items() if isinstance(header, dict) else ():
        if key != "__metadata__" and isinstance(entry, dict) and entry.get("dtype") in _STORED:
            counts[_STORED[entry["dtype"]]] = counts.get(_STORED[entry["dtype"]], 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def resolve_vae(path: str | Path) -> Path:
    """The AutoencoderKL folder of ``path``: a pipeline's VAE component, or a VAE folder itself."""
    path = Path(path)
    if not path.exists():
        raise SparseDeployError(
            f"--vae '{path}' does not exist; pass a diffusers pipeline folder or an AutoencoderKL folder"
        )
    if path.is_dir() and (path / "model_index.json").is_file():
        index, _, vae, _ = _pipeline_parts(path)
        if vae is None:
            parts = _components(path, index)
            raise SparseDeployError(
                f"pipeline '{path}' has no AutoencoderKL component (model_index.json lists "
                f"{', '.join(parts) or 'none'})"
            )
        return vae
    if path.is_dir() and (path / "config.json").is_file():
        cls = _json(path / "config.json").get("_class_name")
        if cls not in VAE_CLASSES:
            raise SparseDeployError(
                f"--vae '{path}' holds a {cls} config, not an AutoencoderKL; pass the pipeline folder "
                "or its vae/ folder"
            )
        return path
    found = _listing(path) if path.is_dir() else "a file"
    raise SparseDeployError(
        f"--vae '{path}' is neither a diffusers pipeline (model_index.json) nor an "
        f"AutoencoderKL folder (config.json); found: {found}"
    )


def load_vae(path: str | Path):
    """A diffusers AutoencoderKL from a local pipeline or VAE folder (never downloads)."""
    path = resolve_vae(path)
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False
        )
    except Exception as exc:
        raise SparseDeployError(
            f"could not load the VAE in '{path}' ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    return vae.eval()


def diffusers_class(family: str):
    """The diffusers class of a model family: ``dit`` or ``unet``."""
    return diffusers.DiTTransformer2DModel if family == "dit" else diffusers.UNet2DModel


def _layout(family: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A model config with the class defaults filled in, comparable across JSON round trips."""
    params = inspect.signature(diffusers_class(family).__init__).parameters
    full = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    full.update({k: v for k, v in kwargs.items() if k in params})
    if full.get("out_channels") is None:
        full["out_channels"] = full.get("in_channels")
    return json.loads(json.dumps(full, default=list))


def _matching_builtin(family: str, config: dict[str, Any]) -> Preset | None:
    layout = _layout(family, config)
    for preset in PRESETS.values():
        if preset.family == family and _layout(family, preset.model_kwargs) == layout:
            return preset
    return None


def source_preset(source: ModelSource, model: str | None = None) -> Preset:
    """The preset of a resolved model: from its config (any layout), else the named preset.

    ``model`` (a preset name) is needed only for a bare ``.safetensors`` file; with a config it
    must match the config's layout.
    """
    if source.config is None:
        if model is None:
            raise SparseDeployError(
                f"'{source.path}' is a bare .safetensors file with no config.json beside it; pass "
                "--model PRESET to say its layout"
            )
        return get_preset(model)
    family = family_of(source.class_name)
    builtin = _matching_builtin(family, source.config)
    # A pipeline says by its VAE; one naming none (`"vae": [null, null]`, as a pixel DiT's written here) or
    # a lone model says by its layout.
    vae_named = source.model_index is not None and source.model_index.get("vae") not in (None, [None, None])
    latent = (
        source.vae_dir is not None
        if source.pipeline_root is not None and (vae_named or family != "dit")
        else (
            builtin.latent
            if builtin is not None
            else (family == "dit" and int(source.config.get("in_channels", 4)) == 4)
        )
    )
    if builtin is not None and builtin.latent == latent:
        preset = dataclasses.replace(builtin, schedule=source.scheduler_config)
    else:
        preset = preset_from_config(
            family, source.config, name=source.name, latent=latent, schedule=source.scheduler_config
        )
    if model is not None and model != preset.name:
        raise SparseDeployError(
            f"--model {model} does not match the {source.class_name} config in "
            f"'{source.model_dir or source.path}' "
            f"(that is {'preset ' if builtin else 'a custom layout, '}'{preset.name}'); drop "
            "--model, the config says the layout"
        )
    return preset
