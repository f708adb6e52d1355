"""The routing table: an immutable snapshot mapping model names to loaded
versions and the live one. It is replaced as a whole, never mutated, so a request
that resolved a version keeps it for its whole life."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from types import MappingProxyType

from riskserve.errors import IntegrityError, NotFound
from riskserve.registry import ModelRepository
from riskserve.runtime import LoadedModel, load_version

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Deployment:
    name: str
    versions: Mapping[int, LoadedModel]
    live: int

    @property
    def live_model(self) -> LoadedModel:
        return self.versions[self.live]


@dataclasses.dataclass(frozen=True)
class RoutingTable:
    deployments: Mapping[str, Deployment]

    def deployment(self, name: str) -> Deployment:
        dep = self.deployments.get(name)
        if dep is None:
            raise NotFound(f"unknown model {name!r}")
        return dep

    def resolve(self, name: str, version: str = "") -> LoadedModel:
        """The live version, or the explicitly requested one (which must be loaded)."""
        dep = self.deployment(name)
        if not version:
            return dep.live_model
        try:
            v = int(version)
        except ValueError:
            raise NotFound(f"model {name!r} has no version {version!r}") from None
        model = dep.versions.get(v)
        if model is None:
            raise NotFound(f"model {name!r} version {version} is not loaded")
        return model


def load_repository(
    repo: ModelRepository,
    onnx_threads: int = 1,
    drift_slots: int = 60,
    drift_slot_seconds: int = 60,
) -> RoutingTable:
    """Loads every version of every model; a version that fails verification is
    refused with a log line naming the file, the rest is served. The newest
    version that loads is live."""
    deployments: dict[str, Deployment] = {}
    for name in repo.models():
        loaded: dict[int, LoadedModel] = {}
        for ref in repo.versions(name):
            try:
                loaded[ref.version] = load_version(
                    repo, ref, onnx_threads, drift_slots, drift_slot_seconds
                )
            except IntegrityError as e:
                log.error(
                    "model version refused",
                    extra={"model": name, "version": ref.version, "reason": e.message},
                )
                continue
            m = loaded[ref.version]
            log.info(
                "model version loaded",
                extra={
                    "model": name,
                    "version": ref.version,
                    "platform": m.platform,
                    "sha256": m.manifest.model_sha256,
                    "features": m.pipeline.n_features,
                },
            )
        if loaded:
            live = max(loaded)
            deployments[name] = Deployment(name, MappingProxyType(loaded), live)
            log.info("model live", extra={"model": name, "version": live})
    return RoutingTable(MappingProxyType(deployments))
