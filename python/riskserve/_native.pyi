"""Type stubs for the Rust extension riskserve._native (checked by mypy.stubtest)."""

from typing import Any, ClassVar, TypedDict, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DriftMonitor",
    "FeatureError",
    "FeaturePipeline",
    "Gbdt",
    "InputError",
    "ModelError",
    "RequestStats",
    "Scorer",
    "SpecError",
    "StatsFileError",
    "__version__",
    "fit_reference",
    "fit_spec",
    "murmur3_32",
    "packed_count",
    "parse_infer_request",
    "peek_request",
    "psi_between",
    "request_rows_json",
    "rows_json",
]

__version__: str

class _WireRequest(TypedDict):
    """What parse_infer_request returns (a dict). Lists hold at most their cap;
    the n_* entries count what the request carried."""

    model_name: str
    model_version: str
    id: str
    parameters: list[tuple[str, bool | int | float | str | None]]
    #: (name, datatype, shape, has typed contents)
    inputs: list[tuple[str, str, list[int], bool]]
    outputs: list[str]
    #: (start, end) of each raw_input_contents entry in the request bytes
    raw: list[tuple[int, int]]
    n_parameters: int
    n_inputs: int
    n_outputs: int
    n_raw: int
    #: the most parameters one input or requested output carries
    tensor_parameters: int
    #: the most dimensions one input's shape has
    max_dims: int
    #: the UTF-8 size of the longest name: model name and version, parameter
    #: keys, input names and datatypes, output names
    longest_name: int
    #: the first input whose raw FP16/FP32/FP64 content holds +inf or -inf
    infinite: int | None

class FeatureError(ValueError): ...
class SpecError(FeatureError): ...
class InputError(FeatureError): ...
class ModelError(ValueError): ...
class StatsFileError(ValueError): ...

@final
class FeaturePipeline:
    def __new__(cls, spec_json: str) -> FeaturePipeline: ...
    @property
    def feature_names(self) -> list[str]: ...
    @property
    def n_features(self) -> int: ...
    @property
    def inputs(self) -> list[tuple[str, str]]: ...
    def spec_json(self) -> str: ...
    def transform(
        self,
        columns: dict[str, Any],
        drift: DriftMonitor | None = None,
        now: int | None = None,
    ) -> npt.NDArray[np.float32]: ...

@final
class Gbdt:
    """A LightGBM model (model.txt) scored by the Rust tree evaluator: LightGBM's
    own predictions, bit for bit. ModelError names the line and field of what is
    malformed or not supported; predict raises InputError for a wrong matrix."""

    def __new__(cls, model_text: str) -> Gbdt: ...
    @property
    def n_features(self) -> int: ...
    @property
    def num_trees(self) -> int: ...
    @property
    def feature_names(self) -> list[str]: ...
    def predict(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]: ...
    def predict_raw(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]: ...

@final
class DriftMonitor:
    def __new__(cls, spec_json: str, slots: int = 60, slot_seconds: int = 60) -> DriftMonitor: ...
    @property
    def fields(self) -> list[tuple[str, list[str], list[float]]]: ...
    def min_count(self, i: int) -> int: ...
    def observe(
        self,
        columns: dict[str, Any],
        scores: npt.NDArray[np.float64] | None = None,
        now: int | None = None,
    ) -> None: ...
    def observe_scores(
        self, scores: npt.NDArray[np.float32] | npt.NDArray[np.float64], now: int | None = None
    ) -> None: ...
    def counts(
        self, window: str = "cumulative", now: int | None = None
    ) -> npt.NDArray[np.uint64]: ...
    def psi(
        self, window: str = "cumulative", now: int | None = None
    ) -> list[tuple[str, int, float | None]]: ...
    def psi_of(self, counts: npt.NDArray[np.uint64]) -> list[tuple[str, int, float | None]]: ...

#: One slot of a RequestStats table: (model, version, variant, code, cells).
_StatsSlot = tuple[str, str, str, str, list[int]]

@final
class RequestStats:
    """Request counts and, for code "OK", latency and rows-per-request histograms,
    per (model, version, variant, code), in atomics. With `path`, a new file that
    other processes read with `read`. Once full, new keys count in the overflow
    slot ("__overflow__", "", "", code). Cells: count, latency sum (ns), rows sum,
    latency bucket counts (LATENCY_BOUNDS_NS, then +Inf), rows bucket counts
    (ROWS_BOUNDS, then +Inf); not cumulative, `le` inclusive."""

    LATENCY_BOUNDS_NS: ClassVar[list[int]]
    ROWS_BOUNDS: ClassVar[list[int]]
    OVERFLOW_MODEL: ClassVar[str]
    def __new__(cls, path: str | None = None, capacity: int = ...) -> RequestStats: ...
    def slot(self, model: str, version: str, variant: str, code: str) -> int: ...
    def observe_ok(self, slot: int, seconds_ns: int, rows: int) -> None: ...
    def count(self, slot: int) -> None: ...
    def snapshot(self) -> list[_StatsSlot]: ...
    @staticmethod
    def read(path: str) -> list[_StatsSlot]: ...
    @property
    def path(self) -> str | None: ...
    @property
    def capacity(self) -> int: ...
    def __len__(self) -> int: ...

def fit_reference(
    spec_json: str,
    columns: dict[str, Any],
    scores: npt.NDArray[np.float64],
    quantiles: int = 10,
    max_categories: int = 50,
) -> str: ...
def psi_between(actual: npt.NDArray[np.uint64], expected: npt.NDArray[np.uint64]) -> float: ...
def fit_spec(template_json: str, columns: dict[str, Any]) -> str: ...
def murmur3_32(data: str | bytes, seed: int = 0) -> int: ...
def packed_count(data: bytes) -> int: ...
def rows_json(columns: dict[str, Any], rows: int) -> list[str]: ...
def parse_infer_request(
    data: bytes,
    max_parameters: int = ...,
    max_tensors: int = ...,
    max_dims: int = ...,
) -> _WireRequest: ...

# -- the one-call native path (rust/core/src/fastpath.rs) ---------------------------

#: Scorer.infer's result: (reply bytes, float32 scores, input_ns, infer_ns).
_Inferred = tuple[bytes, npt.NDArray[np.float32], int, int]

@final
class Scorer:
    """One model version's pipeline, Gbdt and drift monitor (the same objects,
    shared), scoring plain ModelInferRequest bytes in one call with the GIL
    released. None means "not a plain request": the Python path takes it (and
    produces any error message); nothing was counted in drift."""

    def __new__(
        cls,
        pipeline: FeaturePipeline,
        model: Gbdt,
        drift: DriftMonitor | None,
        limits: tuple[int, int, int, int, int],
        max_rows: int,
    ) -> Scorer: ...
    def infer(
        self,
        data: bytes,
        model_name: str,
        model_version: str,
        request_id: str,
        variant: str,
        revision: str,
        threshold: float,
        inline_max_rows: int,
        stream: bool = False,
    ) -> _Inferred | None: ...
    def score_request(self, data: bytes) -> npt.NDArray[np.float32] | None: ...

def peek_request(
    data: bytes, max_name_bytes: int, max_key_bytes: int, max_parameters: int
) -> tuple[str, str, str, str | None] | None: ...
def request_rows_json(data: bytes, rows: int) -> list[str]: ...
