"""riskserve: real-time payment risk scoring over the Open Inference Protocol."""

from riskserve._native import FeatureError, FeaturePipeline, InputError, SpecError, fit_spec

__all__ = ["FeatureError", "FeaturePipeline", "InputError", "SpecError", "__version__", "fit_spec"]

__version__ = "0.1.0"
