"""Type stubs for the Rust extension riskserve._native (checked by mypy.stubtest)."""

from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DriftMonitor",
    "FeatureError",
    "FeaturePipeline",
    "InputError",
    "SpecError",
    "__version__",
    "fit_reference",
    "fit_spec",
    "murmur3_32",
    "packed_count",
    "parse_infer_request",
    "psi_between",
]

__version__: str

class FeatureError(ValueError): ...
class SpecError(FeatureError): ...
class InputError(FeatureError): ...

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
def parse_infer_request(
    data: bytes,
) -> tuple[
    str,
    str,
    str,
    list[tuple[str, bool | int | float | str]],
    list[tuple[str, str, list[int], bool]],
    list[str],
    list[tuple[int, int]],
]: ...
