"""Triton Python-backend model: the denoiser on ONNX Runtime, for servers without the
onnxruntime or TensorRT backends (copied to ``<repo>/denoiser/1/model.py``, the ONNX file and
its manifest beside it).

The ONNX file runs through the same runner as ``python -m sparse_deploy.run``
(:func:`sparse_deploy.backends.load_runner`: manifest and sha256 checked, inputs checked against
the I/O contract), so served outputs equal the command line's. Requests that Triton's dynamic
batcher hands over together are concatenated into one call (Triton keeps the total within
``max_batch_size``); if that call fails, each request is retried alone so that only the bad one
gets an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sparse_deploy.backends import load_runner
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.lazy import lazy_import
from sparse_deploy.triton.dlpack_io import from_triton as _array
from sparse_deploy.triton.dlpack_io import to_triton

# Only importable inside Triton's Python backend (the stub provides it); nothing here needs it before then.
pb_utils = lazy_import(
    "triton_python_backend_utils", "a Triton Python-backend model", "run it inside Triton's Python backend"
)


def _tensor(name: str, array: np.ndarray):
    return to_triton(pb_utils, name, array)


def _error(message: str, code: str = "INTERNAL"):
    codes = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message) if codes is None else pb_utils.TritonError(message, codes)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.runner = load_runner(Path(__file__).parent / params["engine"], device=params.get("device", "cpu"))
        self.runner.activate()
        self.inputs = self.runner.contract.inputs
        self.input_names = self.runner.contract.input_names
        self.output = self.runner.contract.outputs[0]
        # print, not pb_utils.Logger: a server here once hung for good loading a model that
        # logged through the stub's IPC during initialize. The stub's stdout is the server log.
        print(f"sparse-deploy: denoiser {self.runner!r} ready", flush=True)

    def _run(self, arrays):
        out = self.runner(
            **{name: torch.from_numpy(np.array(a)) for name, a in zip(self.input_names, arrays, strict=True)}
        )
        return out.numpy().astype(self.output.dtype, copy=False)

    def execute(self, requests):
        feeds, errors = [], {}
        for i, request in enumerate(requests):
            arrays = []
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    errors[i] = f"missing input '{name}'"
                    break
                array = _array(tensor)
                # timestep / class_labels arrive as [batch, 1] (dims [1]); the model takes [batch].
                arrays.append(array.reshape((array.shape[0],) + tuple(self.inputs[len(arrays)].shape[1:])))
            feeds.append(arrays)
        good = [i for i in range(len(requests)) if i not in errors]
        outputs = {}
        if good:
            try:
                merged = self._run([np.concatenate([feeds[i][k] for i in good]) for k in range(len(self.input_names))])
                offsets = np.cumsum([0] + [len(feeds[i][0]) for i in good])
                outputs = {i: merged[offsets[j] : offsets[j + 1]] for j, i in enumerate(good)}
            except Exception:
                for i in good:  # retry alone: one bad request must not fail its batch neighbours
                    try:
                        outputs[i] = self._run(feeds[i])
                    except SparseDeployError as exc:
                        errors[i] = str(exc)
                    except Exception as exc:
                        errors[i] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        responses = []
        for i in range(len(requests)):
            if i in errors:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(errors[i], "INVALID_ARG")))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[_tensor(self.output.name, outputs[i])]))
        return responses

    def finalize(self):
        self.runner.close()
