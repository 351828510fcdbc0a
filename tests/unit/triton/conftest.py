"""A stand-in for ``triton_python_backend_utils``, the module Triton's Python backend gives its models."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.utils.dlpack import from_dlpack


class Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self.name, self.array = name, np.asarray(array)

    @classmethod
    def from_dlpack(cls, name: str, capsule) -> Tensor:
        return cls(name, from_dlpack(capsule).numpy().copy())

    def to_dlpack(self):
        raise RuntimeError("BYTES-free stand-in: read with as_numpy")  # the models fall back to as_numpy()

    def as_numpy(self) -> np.ndarray:
        return self.array


class TritonError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str | None = None):
        self._message, self.code = message, code

    def message(self) -> str:
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None):
        self.output_tensors, self._error = output_tensors, error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def outputs(self) -> dict[str, np.ndarray]:
        return {t.name: t.array for t in self.output_tensors}


class Request:
    """A request as Triton hands it to ``execute``: input tensors by name and JSON parameters."""

    def __init__(self, inputs: dict[str, np.ndarray], parameters: str = ""):
        self.inputs, self._parameters = {k: Tensor(k, v) for k, v in inputs.items()}, parameters

    def parameters(self) -> str:
        return self._parameters


@pytest.fixture()
def pb_utils(monkeypatch):
    """The stand-in module, installed for the test; ``pb_utils.models[name]`` answers BLS calls to model ``name``."""
    module = types.ModuleType("triton_python_backend_utils")
    models: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray | TritonError]] = {}

    class InferenceRequest:
        def __init__(self, model_name: str, requested_output_names: list[str], inputs: list[Tensor]):
            self.model_name, self.inputs = model_name, {t.name: t.array for t in inputs}

        def exec(self) -> InferenceResponse:
            result = models[self.model_name](self.inputs)
            if isinstance(result, TritonError):
                return InferenceResponse([], result)
            return InferenceResponse([Tensor("out", result)])

    module.Tensor, module.TritonError, module.InferenceResponse, module.InferenceRequest = (
        Tensor,
        TritonError,
        InferenceResponse,
        InferenceRequest,
    )
    module.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    module.get_output_tensor_by_name = lambda response, name: next(t for t in response.output_tensors if t.name == name)
    module.models = models
    module.Request = Request  # for the tests: a request as Triton hands it to execute
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    torch_threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(torch_threads)  # the pipeline model takes one thread for itself
