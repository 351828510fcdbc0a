"""Serve engines with Triton Inference Server.

* :mod:`.repository` - a model repository from an engine manifest: the denoiser (TensorRT plan,
  ONNX Runtime model, or ONNX Runtime inside the Python backend for CPU-only servers) and a
  Python-backend sampling pipeline that calls it through BLS.
* :mod:`.pipeline` - the pipeline's I/O, request validation and loop (plain Python).
* :mod:`.server` - start the ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel on
  loopback ports, wait until ready, always stop it.
* ``model_pipeline.py`` / ``model_denoiser.py`` - the Python-backend model sources copied into
  repositories as ``1/model.py``.

``python -m sparse_deploy.triton --engine engines/fmnist-dit/sparse-fp32.ort.onnx --out triton-repo``
writes a repository; ``python -m sparse_deploy.triton.server --model-repository triton-repo`` serves it.
Nothing here imports Triton, tritonclient or a GPU library at import time.
"""

from .pipeline import (
    PIPELINE_INPUTS,
    PipelineRequest,
    PipelineSettings,
    parse_request,
    pipeline_outputs,
)
from .repository import (
    FLAVOURS,
    RepositoryConfig,
    RepositoryReport,
    denoiser_config,
    generate_repository,
    pipeline_config,
)

__all__ = [
    "FLAVOURS",
    "PIPELINE_INPUTS",
    "PipelineRequest",
    "PipelineSettings",
    "RepositoryConfig",
    "RepositoryReport",
    "denoiser_config",
    "generate_repository",
    "parse_request",
    "pipeline_config",
    "pipeline_outputs",
]
