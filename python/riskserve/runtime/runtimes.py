"""Runtimes take the float32 feature matrix and return P(fraud) per row. Both
release the GIL inside their native predict call."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]
Scores = npt.NDArray[np.float32]


class ModelRuntime(Protocol):
    platform: str

    def predict(self, features: FloatMatrix) -> Scores: ...


class LightGBMRuntime:
    """LightGBM booster (binary objective): predict returns probabilities."""

    platform = "lightgbm"

    def __init__(self, model_file: Path, n_features: int) -> None:
        import lightgbm

        self._booster = lightgbm.Booster(model_file=str(model_file))
        if self._booster.num_feature() != n_features:
            raise ValueError(
                f"{model_file}: model expects {self._booster.num_feature()} features, "
                f"the feature spec produces {n_features}"
            )

    def predict(self, features: FloatMatrix) -> Scores:
        out = self._booster.predict(features, num_threads=1)
        return np.asarray(out, dtype=np.float32)


class OnnxRuntime:
    """ONNX Runtime session over a LightGBM model converted by onnxmltools."""

    platform = "onnxruntime_onnx"

    def __init__(self, model_file: Path, n_features: int, intra_op_threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            str(model_file), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{model_file}: expected one input, found {len(inputs)}")
        self._input = inputs[0].name
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        if isinstance(width, int) and width != n_features:
            raise ValueError(
                f"{model_file}: model expects {width} features, the spec produces {n_features}"
            )
        names = [o.name for o in self._session.get_outputs()]
        self._output = "probabilities" if "probabilities" in names else names[-1]

    def predict(self, features: FloatMatrix) -> Scores:
        (probs,) = self._session.run([self._output], {self._input: features})
        probs = np.asarray(probs, dtype=np.float32)
        return np.ascontiguousarray(probs[:, 1] if probs.ndim == 2 else probs)
