"""Model runtimes (LightGBM, ONNX Runtime) and loaded, ready-to-score models."""

from riskserve.runtime.loaded import LoadedModel, load_version
from riskserve.runtime.runtimes import LightGBMRuntime, ModelRuntime, OnnxRuntime

__all__ = ["LightGBMRuntime", "LoadedModel", "ModelRuntime", "OnnxRuntime", "load_version"]
