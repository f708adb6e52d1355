"""Model runtimes (LightGBM, ONNX Runtime) and loaded, ready-to-score models."""

from riskserve.runtime.loaded import LoadedModel
from riskserve.runtime.probe import ModelCheck, load_version, refusal
from riskserve.runtime.runtimes import LightGBMRuntime, ModelRuntime, OnnxRuntime

__all__ = [
    "LightGBMRuntime",
    "LoadedModel",
    "ModelCheck",
    "ModelRuntime",
    "OnnxRuntime",
    "load_version",
    "refusal",
]
