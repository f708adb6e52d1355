"""Runtimes take the float32 feature matrix and return P(fraud) per row. Both
release the GIL inside their native predict call."""

from __future__ import annotations

import ctypes
import sys
from typing import Protocol

import numpy as np
import numpy.typing as npt

from riskserve._native import Gbdt, ModelError

FloatMatrix = npt.NDArray[np.float32]

# LightGBM C API constants (c_api.h).
_C_API_DTYPE_FLOAT32 = 0
_C_API_ROW_MAJOR = 1
_C_API_PREDICT_NORMAL = 0
Scores = npt.NDArray[np.float32]

#: Largest |score difference| accepted between two runtimes (or processes) scoring
#: the same model on the parity rows.
PARITY_TOLERANCE = 1e-6


def parity_rows(n_features: int, n: int = 512) -> FloatMatrix:
    """Rows for the parity check: zeros, then wide random values (they take
    every kind of branch: both sides of thresholds, default directions)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, n_features)) * 3).astype(np.float32)
    x[0] = 0.0
    return x


#: Modules lightgbm imports only for features a server never uses (its sklearn
#: and pandas/dask interfaces): most of a process's start time.
LIGHTGBM_EXTRAS = ("sklearn", "pandas", "dask")


def skip_lightgbm_extras() -> None:
    """Makes importing LIGHTGBM_EXTRAS fail in this process, so lightgbm skips them.
    Call it first thing in a serving or checking process."""
    for name in LIGHTGBM_EXTRAS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # import → ImportError


class ModelRuntime(Protocol):
    platform: str

    def predict(self, features: FloatMatrix) -> Scores: ...


class LightGBMRuntime:
    """LightGBM booster (binary objective): predict returns probabilities."""

    platform = "lightgbm"

    def __init__(self, model_txt: bytes, n_features: int) -> None:
        """`model_txt`: the verified bytes of model.txt."""
        import lightgbm
        import lightgbm.basic as lgb_basic

        self._booster = lightgbm.Booster(model_str=model_txt.decode())
        if self._booster.num_feature() != n_features:
            raise ValueError(
                f"model.txt: model expects {self._booster.num_feature()} features, "
                f"the feature spec produces {n_features}"
            )
        self.n_features = n_features
        # LightGBM's C API directly: Booster.predict spends ~50 µs per call in
        # Python checks that a float32 C-contiguous matrix does not need. The
        # served scores are tested equal to Booster.predict (≤ 1e-6).
        self._lib = lgb_basic._LIB  # type: ignore[attr-defined]
        self._check = lgb_basic._safe_call
        self._params = ctypes.c_char_p(b"num_threads=1")
        #: The Rust tree evaluator (riskserve-core gbdt), 4x faster than the C API
        #: on one row, when it parses this model and equals LightGBM on the parity
        #: rows; the native hot path needs it. Else None and `gbdt_refusal` says why.
        self.gbdt: Gbdt | None = None
        self.gbdt_refusal = ""
        self._native_evaluator(model_txt)

    def _native_evaluator(self, model_txt: bytes) -> None:
        try:
            g = Gbdt(model_txt.decode())
        except (ModelError, UnicodeDecodeError) as e:
            self.gbdt_refusal = f"the native evaluator does not take this model: {e}"
            return
        if g.n_features != self.n_features:
            self.gbdt_refusal = (
                f"the native evaluator reads {g.n_features} features, LightGBM {self.n_features}"
            )
            return
        rows = parity_rows(self.n_features)
        rows[1::3, :] = np.nan  # the missing-value branches too
        diff = float(np.max(np.abs(g.predict(rows) - self._predict_c(rows).astype(np.float64))))
        if not diff <= PARITY_TOLERANCE:
            self.gbdt_refusal = (
                f"the native evaluator differs from LightGBM by {diff:.3g} on the parity rows"
            )
            return
        self.gbdt = g

    def model_text(self) -> bytes:
        """The model as LightGBM holds it (model.txt format)."""
        return str(self._booster.model_to_string()).encode()

    def predict(self, features: FloatMatrix) -> Scores:
        x = np.ascontiguousarray(features, dtype=np.float32)
        if self.gbdt is not None:
            if x.ndim != 2 or x.shape[1] != self.n_features:
                raise ValueError(f"expected {self.n_features} features, got shape {x.shape}")
            return self.gbdt.predict(x).astype(np.float32)
        return self._predict_c(x).astype(np.float32)

    def _predict_c(self, x: FloatMatrix) -> npt.NDArray[np.float64]:
        """LightGBM's own scores (float64) of a C-contiguous float32 matrix."""
        rows, cols = x.shape
        if cols != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {cols}")
        out = np.empty(rows, dtype=np.float64)
        n_out = ctypes.c_int64(0)
        self._check(
            self._lib.LGBM_BoosterPredictForMat(
                self._booster._handle,
                x.ctypes.data_as(ctypes.c_void_p),
                ctypes.c_int(_C_API_DTYPE_FLOAT32),
                ctypes.c_int32(rows),
                ctypes.c_int32(cols),
                ctypes.c_int(_C_API_ROW_MAJOR),
                ctypes.c_int(_C_API_PREDICT_NORMAL),
                ctypes.c_int(0),  # start iteration
                ctypes.c_int(-1),  # all iterations
                self._params,
                ctypes.byref(n_out),
                out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            )
        )
        if n_out.value != rows:
            raise RuntimeError(f"LightGBM returned {n_out.value} scores for {rows} rows")
        return out


class OnnxRuntime:
    """ONNX Runtime session over a LightGBM model converted by onnxmltools."""

    platform = "onnxruntime_onnx"

    def __init__(self, model_onnx: bytes, n_features: int, intra_op_threads: int = 1) -> None:
        """`model_onnx`: the verified bytes of model.onnx."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            model_onnx, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"model.onnx: expected one input, found {len(inputs)}")
        self._input = inputs[0].name
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        if isinstance(width, int) and width != n_features:
            raise ValueError(
                f"model.onnx: model expects {width} features, the spec produces {n_features}"
            )
        names = [o.name for o in self._session.get_outputs()]
        self._output = "probabilities" if "probabilities" in names else names[-1]

    def predict(self, features: FloatMatrix) -> Scores:
        (probs,) = self._session.run([self._output], {self._input: features})
        probs = np.asarray(probs, dtype=np.float32)
        return np.ascontiguousarray(probs[:, 1] if probs.ndim == 2 else probs)
