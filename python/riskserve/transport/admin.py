"""riskserve.admin.v1.ModelAdmin over the deployment service. Every text field is
bounded by `settings.limits` (model names, salt, x-actor: RISKSERVE_MAX_NAME_BYTES;
reason: RISKSERVE_MAX_REASON_BYTES) before the service sees it: the reason and
actor are written into deployment.json and the log."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import grpc

from riskserve.config import LimitsSettings
from riskserve.deployments import DeploymentService, Revision, VersionStatus
from riskserve.errors import InvalidInput
from riskserve.monitoring import Metrics
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as pb
from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as pb_grpc
from riskserve.transport.auth import current_principal
from riskserve.transport.codec import Bounds

SERVICE_NAME = "riskserve.admin.v1.ModelAdmin"


def actor_of(context: grpc.aio.ServicerContext, bounds: Bounds) -> str:
    """Who made an admin call, for the audit history: the authenticated principal,
    with the caller's own `x-actor` metadata (bounded) after it as a claim, never
    instead of it: "ops-oncall (as alice)"."""
    who = current_principal.get()
    name = who.name if who is not None else "unauthenticated"
    for key, value in context.invocation_metadata() or ():
        if key == "x-actor":
            claimed = bounds.name("metadata 'x-actor'", str(value))
            return f"{name} (as {claimed})"
    return name


def thresholds_pb(rev: Revision, own: Mapping[int, float]) -> list[pb.Threshold]:
    """The threshold of each version of `rev` whose own threshold is known (`own`:
    the versions loaded now), and of each override (in a History entry, of a
    version since unloaded: without its manifest threshold)."""
    overrides = dict(rev.thresholds)
    known = {v: own[v] for v in rev.loaded if v in own}
    return [
        pb.Threshold(
            version=v,
            threshold=overrides[v] if v in overrides else known[v],
            overridden=v in overrides,
            manifest_threshold=own.get(v),  # None: unset
        )
        for v in sorted(known.keys() | overrides.keys())
    ]


def deployment_pb(name: str, rev: Revision, own: Mapping[int, float]) -> pb.Deployment:
    """`rev` of model `name`; `own` holds the loaded versions' own thresholds."""
    return pb.Deployment(
        model=name,
        revision=rev.revision,
        variants=[pb.Variant(version=v, weight=w) for v, w in rev.variants],
        salt=rev.salt,
        shadow=pb.Shadow(version=rev.shadow_version or 0, sample_percent=rev.shadow_percent),
        loaded_versions=list(rev.loaded),
        updated_at=rev.updated_at,
        actor=rev.actor,
        reason=rev.reason,
        thresholds=thresholds_pb(rev, own),
    )


def version_pb(v: VersionStatus) -> pb.VersionInfo:
    return pb.VersionInfo(
        version=v.version,
        state=v.state.value,
        sha256=v.sha256,
        platform=v.platform,
        reason=v.reason,
        threshold=v.threshold or 0.0,
    )


class AdminServicer(pb_grpc.ModelAdminServicer):  # type: ignore[misc]
    def __init__(
        self, deployments: DeploymentService, metrics: Metrics, limits: LimitsSettings
    ) -> None:
        self.m = deployments
        self.metrics = metrics
        self.bounds = Bounds(limits)

    def _model(self, name: str) -> str:
        if not name:
            raise InvalidInput("field 'model' is required")
        return self.bounds.name("field 'model'", name)

    def _deployment(self, name: str, rev: Revision) -> pb.Deployment:
        return deployment_pb(name, rev, self.m.own_thresholds(name))

    def _change(self, request: Any, context: Any) -> tuple[str, str, str]:
        """A change request's model, its caller and reason, bounded."""
        name = self._model(request.model)
        return name, actor_of(context, self.bounds), self.bounds.reason(request.reason)

    async def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:
        await self.m.refresh()
        out = []
        # Hashing every available version reads files: keep it off the event loop.
        listing = await asyncio.get_running_loop().run_in_executor(None, self.m.list_models)
        for model in listing:
            out.append(
                pb.ModelInfo(name=model.name, versions=[version_pb(v) for v in model.versions])
            )
        return pb.ListModelsResponse(models=out)

    async def LoadVersion(self, request: Any, context: Any) -> pb.LoadVersionResponse:
        name, actor, reason = self._change(request, context)
        if request.version <= 0:
            raise InvalidInput("field 'version' must be >= 1")
        rev = await self.m.load(name, request.version, actor, reason)
        info = version_pb(self.m.loaded_status(name, request.version))
        return pb.LoadVersionResponse(version=info, deployment=self._deployment(name, rev))

    async def UnloadVersion(self, request: Any, context: Any) -> pb.UnloadVersionResponse:
        name, actor, reason = self._change(request, context)
        rev = await self.m.unload(name, request.version, actor, reason)
        return pb.UnloadVersionResponse(deployment=self._deployment(name, rev))

    async def GetDeployment(self, request: Any, context: Any) -> pb.Deployment:
        name = self._model(request.model)
        await self.m.refresh()
        return self._deployment(name, self.m.current(name))

    async def SetTraffic(self, request: Any, context: Any) -> pb.Deployment:
        name, actor, reason = self._change(request, context)
        salt = self.bounds.name("field 'salt'", request.salt)
        variants = [(v.version, v.weight) for v in request.variants]
        rev = await self.m.set_traffic(name, variants, salt, actor, reason)
        return self._deployment(name, rev)

    async def SetShadow(self, request: Any, context: Any) -> pb.Deployment:
        name, actor, reason = self._change(request, context)
        rev = await self.m.set_shadow(name, request.version, request.sample_percent, actor, reason)
        return self._deployment(name, rev)

    async def Promote(self, request: Any, context: Any) -> pb.Deployment:
        name, actor, reason = self._change(request, context)
        rev = await self.m.promote(name, request.version, actor, reason)
        return self._deployment(name, rev)

    async def Rollback(self, request: Any, context: Any) -> pb.Deployment:
        name, actor, reason = self._change(request, context)
        rev = await self.m.rollback(name, actor, reason)
        self.metrics.rollbacks.labels(name, "manual").inc()
        return self._deployment(name, rev)

    async def SetThreshold(self, request: Any, context: Any) -> pb.Deployment:
        name, actor, reason = self._change(request, context)
        if request.version <= 0:
            raise InvalidInput("field 'version' must be >= 1")
        threshold: float | None = None
        if not request.clear:
            threshold = request.threshold
            if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
                raise InvalidInput(
                    f"field 'threshold' must be a finite number in [0, 1], got {threshold}"
                )
        rev = await self.m.set_threshold(name, request.version, threshold, actor, reason)
        return self._deployment(name, rev)

    async def History(self, request: Any, context: Any) -> pb.HistoryResponse:
        name = self._model(request.model)
        await self.m.refresh()
        revs = self.m.history(name, request.limit)
        own = self.m.own_thresholds(name)
        return pb.HistoryResponse(revisions=[deployment_pb(name, r, own) for r in revs])
