from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VersionInfo(_message.Message):
    __slots__ = ("version", "state", "sha256", "platform", "reason", "threshold")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    sha256: str
    platform: str
    reason: str
    threshold: float
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., sha256: _Optional[str] = ..., platform: _Optional[str] = ..., reason: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class LoadVersionRequest(_message.Message):
    __slots__ = ("model", "version", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class LoadVersionResponse(_message.Message):
    __slots__ = ("version", "deployment")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    deployment: Deployment
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ..., deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class UnloadVersionRequest(_message.Message):
    __slots__ = ("model", "version", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class UnloadVersionResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("version", "weight")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    version: int
    weight: int
    def __init__(self, version: _Optional[int] = ..., weight: _Optional[int] = ...) -> None: ...

class Shadow(_message.Message):
    __slots__ = ("version", "sample_percent")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    version: int
    sample_percent: float
    def __init__(self, version: _Optional[int] = ..., sample_percent: _Optional[float] = ...) -> None: ...

class Threshold(_message.Message):
    __slots__ = ("version", "threshold", "overridden", "manifest_threshold")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OVERRIDDEN_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    version: int
    threshold: float
    overridden: bool
    manifest_threshold: float
    def __init__(self, version: _Optional[int] = ..., threshold: _Optional[float] = ..., overridden: _Optional[bool] = ..., manifest_threshold: _Optional[float] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("model", "revision", "variants", "salt", "shadow", "loaded_versions", "updated_at", "actor", "reason", "thresholds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    revision: int
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    salt: str
    shadow: Shadow
    loaded_versions: _containers.RepeatedScalarFieldContainer[int]
    updated_at: str
    actor: str
    reason: str
    thresholds: _containers.RepeatedCompositeFieldContainer[Threshold]
    def __init__(self, model: _Optional[str] = ..., revision: _Optional[int] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ..., salt: _Optional[str] = ..., shadow: _Optional[_Union[Shadow, _Mapping]] = ..., loaded_versions: _Optional[_Iterable[int]] = ..., updated_at: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., thresholds: _Optional[_Iterable[_Union[Threshold, _Mapping]]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetTrafficRequest(_message.Message):
    __slots__ = ("model", "variants", "salt", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    salt: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ..., salt: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetShadowRequest(_message.Message):
    __slots__ = ("model", "version", "sample_percent", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    sample_percent: float
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., sample_percent: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("model", "version", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetThresholdRequest(_message.Message):
    __slots__ = ("model", "version", "threshold", "clear", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    threshold: float
    clear: bool
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., threshold: _Optional[float] = ..., clear: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("model", "limit")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    limit: int
    def __init__(self, model: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("revisions",)
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[Deployment]
    def __init__(self, revisions: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ...) -> None: ...
