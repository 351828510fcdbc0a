"""Triton Python-backend model: the sampling pipeline (copied to ``<repo>/pipeline/1/model.py``).

Each request runs the whole scheduler loop (:func:`sparse_deploy.sampling.sample`) and calls the
denoiser model once per step through BLS (``pb_utils.InferenceRequest(...).exec()``), so the
denoiser can be a TensorRT plan, an ONNX Runtime model or the CPU Python flavour, and Triton's
dynamic batcher can merge the steps of concurrent requests. Settings come from the
``parameters`` of this model's config.pbtxt (see ``sparse_deploy.triton.pipeline``).

A bad request gets an ``INVALID_ARG`` error that says what to change; any other failure becomes
an error response for that request only, and the model keeps serving.
"""

from __future__ import annotations

import json
import traceback

import numpy as np

try:  # only importable inside Triton's Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported outside Triton (docs, import checks)
    pb_utils = None

from sparse_deploy.triton.dlpack_io import from_triton as _array, to_triton  # noqa: E402


def _tensor(name: str, array: np.ndarray):
    return to_triton(pb_utils, name, array)


class DenoiserFailed(RuntimeError):
    """The BLS call to the denoiser returned an error."""


def _log(level: str, message: str) -> None:
    # print, not pb_utils.Logger: a server here once hung for good loading a model that logged
    # through the stub's IPC during initialize. The stub's stdout is the server log.
    print(f"sparse-deploy pipeline [{level}]: {message}", flush=True)


def _error(message: str, code: str):
    codes = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message) if codes is None else pb_utils.TritonError(message, codes)


class TritonPythonModel:
    def initialize(self, args):
        import torch

        from sparse_deploy.contract import float_dtype
        from sparse_deploy.triton.pipeline import PIPELINE_INPUTS, PipelineSettings

        # The loop's own tensor work is tiny; leave the cores to the denoiser.
        torch.set_num_threads(1)
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.settings = PipelineSettings.from_parameters(params)
        self.preset = self.settings.model_preset()
        self.input_names = [t.name for t in PIPELINE_INPUTS]
        self.float_dtype = np.dtype(float_dtype(self.settings.precision))
        # Import the schedulers and the decoder now, not on the first request.
        from sparse_deploy.run import decode  # noqa: F401
        from sparse_deploy.sampling import SCHEDULERS, make_scheduler

        for name in SCHEDULERS:
            make_scheduler(name)
        self.vae = None
        if self.settings.vae:
            from sparse_deploy.sources import load_vae

            self.vae = load_vae(self.settings.vae)
        elif self.preset.latent:
            _log(
                "warn",
                f"preset '{self.preset.name}' samples latents and no VAE was configured: 'images' holds "
                "min-max normalised latent channels, not decoded images",
            )
        _log(
            "info",
            f"pipeline for '{self.preset.name}' ({self.settings.precision}) calls '{self.settings.denoiser}', "
            f"denoiser max batch {self.settings.max_batch}",
        )

    def _denoise(self, sample, timestep, class_labels):
        import torch

        inputs = [
            _tensor("sample", sample.numpy().astype(self.float_dtype)),
            # Per-row scalars are declared dims [1] (reshaped to [batch] for the model): send [batch, 1].
            _tensor("timestep", timestep.numpy().astype(np.int64).reshape(-1, 1)),
        ]
        if class_labels is not None:
            inputs.append(_tensor("class_labels", class_labels.numpy().astype(np.int64).reshape(-1, 1)))
        response = pb_utils.InferenceRequest(
            model_name=self.settings.denoiser, requested_output_names=["out"], inputs=inputs
        ).exec()
        if response.has_error():
            raise DenoiserFailed(f"denoiser '{self.settings.denoiser}' failed: {response.error().message()}")
        out = _array(pb_utils.get_output_tensor_by_name(response, "out"))
        return torch.from_numpy(np.array(out, dtype=np.float32))

    def execute(self, requests):
        from sparse_deploy.errors import SparseDeployError
        from sparse_deploy.triton.pipeline import parse_request, run_request

        responses = []
        for request in requests:
            try:
                values = {}
                for name in self.input_names:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    values[name] = None if tensor is None else _array(tensor)
                parsed = parse_request(values, self.settings, json.loads(request.parameters() or "{}"))
                outputs = run_request(parsed, self._denoise, self.preset, self.vae)
                responses.append(pb_utils.InferenceResponse(output_tensors=[_tensor(k, v) for k, v in outputs.items()]))
            except SparseDeployError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(str(exc), "INVALID_ARG")))
            except DenoiserFailed as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(str(exc), "INTERNAL")))
            except Exception as exc:  # one failed request must not take the model down
                _log("error", traceback.format_exc())
                message = f"pipeline failed: {exc.__class__.__name__}: {exc}"
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(message, "INTERNAL")))
        return responses

    def finalize(self):
        self.vae = None
