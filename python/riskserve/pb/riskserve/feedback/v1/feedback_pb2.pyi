from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_FRAUD: _ClassVar[Outcome]
    OUTCOME_LEGITIMATE: _ClassVar[Outcome]

class LabelResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_RESULT_UNSPECIFIED: _ClassVar[LabelResult]
    ACCEPTED: _ClassVar[LabelResult]
    DUPLICATE: _ClassVar[LabelResult]
    REVISED: _ClassVar[LabelResult]
    PENDING: _ClassVar[LabelResult]
    REJECTED: _ClassVar[LabelResult]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_FRAUD: Outcome
OUTCOME_LEGITIMATE: Outcome
LABEL_RESULT_UNSPECIFIED: LabelResult
ACCEPTED: LabelResult
DUPLICATE: LabelResult
REVISED: LabelResult
PENDING: LabelResult
REJECTED: LabelResult

class Label(_message.Message):
    __slots__ = ("request_id", "outcome", "label_time_ms", "source", "label_id", "amount")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LABEL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    outcome: Outcome
    label_time_ms: int
    source: str
    label_id: str
    amount: float
    def __init__(self, request_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., label_time_ms: _Optional[int] = ..., source: _Optional[str] = ..., label_id: _Optional[str] = ..., amount: _Optional[float] = ...) -> None: ...

class SendLabelsRequest(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class LabelAck(_message.Message):
    __slots__ = ("result", "reason")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    result: LabelResult
    reason: str
    def __init__(self, result: _Optional[_Union[LabelResult, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class SendLabelsResponse(_message.Message):
    __slots__ = ("results", "counts")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[LabelAck]
    counts: _containers.ScalarMap[str, int]
    def __init__(self, results: _Optional[_Iterable[_Union[LabelAck, _Mapping]]] = ..., counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetPerformanceRequest(_message.Message):
    __slots__ = ("model", "maturity_seconds", "has_maturity", "window_seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MATURITY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HAS_MATURITY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    maturity_seconds: float
    has_maturity: bool
    window_seconds: float
    def __init__(self, model: _Optional[str] = ..., maturity_seconds: _Optional[float] = ..., has_maturity: _Optional[bool] = ..., window_seconds: _Optional[float] = ...) -> None: ...

class VariantPerformance(_message.Message):
    __slots__ = ("variant", "version", "shadow", "threshold", "predictions", "labelled", "fraud", "legit", "coverage", "recall", "false_positive_rate", "precision", "amount_recall", "auc")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    FRAUD_FIELD_NUMBER: _ClassVar[int]
    LEGIT_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    FALSE_POSITIVE_RATE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_RECALL_FIELD_NUMBER: _ClassVar[int]
    AUC_FIELD_NUMBER: _ClassVar[int]
    variant: str
    version: int
    shadow: bool
    threshold: float
    predictions: int
    labelled: int
    fraud: int
    legit: int
    coverage: float
    recall: float
    false_positive_rate: float
    precision: float
    amount_recall: float
    auc: float
    def __init__(self, variant: _Optional[str] = ..., version: _Optional[int] = ..., shadow: _Optional[bool] = ..., threshold: _Optional[float] = ..., predictions: _Optional[int] = ..., labelled: _Optional[int] = ..., fraud: _Optional[int] = ..., legit: _Optional[int] = ..., coverage: _Optional[float] = ..., recall: _Optional[float] = ..., false_positive_rate: _Optional[float] = ..., precision: _Optional[float] = ..., amount_recall: _Optional[float] = ..., auc: _Optional[float] = ...) -> None: ...

class GetPerformanceResponse(_message.Message):
    __slots__ = ("model", "variants", "verdict", "details_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    variants: _containers.RepeatedCompositeFieldContainer[VariantPerformance]
    verdict: str
    details_json: str
    def __init__(self, model: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[VariantPerformance, _Mapping]]] = ..., verdict: _Optional[str] = ..., details_json: _Optional[str] = ...) -> None: ...
