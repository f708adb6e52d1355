"""inference.GRPCInferenceService: the Open Inference Protocol (KServe V2).

ModelInfer and ModelStreamInfer receive the request bytes. A plain request of a
version the native path serves is scored and answered in one native call
(DataPlane.infer_bytes, which returns the reply's bytes); every other request is
decoded with the codec (the Rust reader by default) and scored by DataPlane.infer,
which gives every refusal its status and message. The other methods get messages
the Registrar decoded. Every inference request that reaches a handler is counted in
riskserve_requests_total, a refused one under a bounded model label; every one
that reaches a version, in that version's ModelStatistics (Triton's statistics
extension: riskserve.monitoring.statistics)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from riskserve.config import LimitsSettings
from riskserve.dataplane import SERVER_NAME, DataPlane, InferRequest, shown
from riskserve.deployments import DeploymentService, VersionState
from riskserve.errors import InvalidInput, RiskserveError
from riskserve.monitoring.statistics import (
    Duration,
    PeerStatistics,
    ServedStatistics,
    with_peers,
)
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc
from riskserve.transport.admin import actor_of
from riskserve.transport.codec import Bounds, Codec, RequestRefused, encode_response
from riskserve.transport.errors import Throttle, takes_bytes

SERVICE_NAME = "inference.GRPCInferenceService"
#: The protocol extensions ServerMetadata names (Triton's words).
EXTENSIONS = ("statistics",)

log = logging.getLogger(__name__)


def _stream_error(
    model_name: str, model_version: str, request_id: str, message: str
) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=model_name, model_version=model_version, id=request_id
        ),
    )


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The V2 service. `limits` bound every request field; `rust_parser` reads
    inference requests in Rust (else with the generated protobuf code). With
    `--workers N`, `peer_statistics` gives the other workers' ModelStatistics
    figures (riskserve.monitoring.fleet.SnapshotWriter.peer_statistics)."""

    def __init__(
        self,
        dataplane: DataPlane,
        version: str,
        deployments: DeploymentService,
        limits: LimitsSettings,
        *,
        rust_parser: bool = True,
        peer_statistics: Callable[[], PeerStatistics] | None = None,
    ) -> None:
        self._dp = dataplane
        self._peer_statistics = peer_statistics
        self._version = version
        self._deployments = deployments
        self._bounds = Bounds(limits)
        self._codec = Codec(self._bounds, rust_parser)
        self._throttle = Throttle(log)

    def _decode(self, method: str, data: bytes, time_remaining: float | None) -> InferRequest:
        """The inference request in `data`; a refused one is counted (and, when
        its bytes do not decode, logged as a throttled warning) before it is raised."""
        try:
            return self._codec.decode(data, time_remaining)
        except RequestRefused as e:
            self._dp.observe_refused(e.model_name, e.code.name)
            if e.model_name is None:
                self._throttle.warning(
                    f"undecodable {method}",
                    "request refused: it does not decode",
                    method=method,
                    error=e.message,
                    size=len(data),
                )
            raise

    def _repository_request(self, request: Any) -> str:
        """Bounds a repository request's fields; returns its model name."""
        b = self._bounds
        b.name("field 'repository_name'", request.repository_name)
        name = b.name("field 'model_name'", request.model_name)
        if not name:
            raise InvalidInput("field 'model_name' is required")
        b.parameters({k: _choice(v) for k, v in request.parameters.items()})
        return name

    # -- repository extension (admin: needs the bearer token) -----------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        out = []
        self._bounds.name("field 'repository_name'", request.repository_name)
        listing = await asyncio.get_running_loop().run_in_executor(
            None, self._deployments.list_models
        )
        for model in listing:
            for v in model.versions:
                ready = v.state is VersionState.LOADED
                if request.ready and not ready:
                    continue
                out.append(
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=model.name,
                        version=str(v.version),
                        state="READY" if ready else "UNAVAILABLE",
                        reason=v.reason,
                    )
                )
        return pb.RepositoryIndexResponse(models=out)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        """Loads a version (parameter `version`, default the newest in the
        registry) and sends it all traffic: LoadVersion then Promote."""
        name = self._repository_request(request)
        version = _version_param(request.parameters) or None
        actor = actor_of(context, self._bounds)
        await self._deployments.load_and_promote(name, version, actor)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        """With parameter `version`: UnloadVersion. Without: the model leaves
        service (NOT_FOUND until loaded again)."""
        m = self._deployments
        name = self._repository_request(request)
        version = _version_param(request.parameters)
        actor = actor_of(context, self._bounds)
        if version:
            await m.unload(name, version, actor, "RepositoryModelUnload")
        else:
            await m.remove(name, actor, "RepositoryModelUnload")
        return pb.RepositoryModelUnloadResponse()

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dp.ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        name, version = self._model_ref(request)
        return pb.ModelReadyResponse(ready=self._dp.model_ready(name, version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=list(EXTENSIONS)
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        md = self._dp.model_metadata(*self._model_ref(request))
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=md.name,
            versions=list(md.versions),
            platform=md.platform,
            inputs=[tm(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in md.inputs],
            outputs=[tm(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in md.outputs],
        )

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        """Triton's statistics extension: every loaded version of every model (no
        name), of one model (no version) or one version; with workers, the whole
        server's figures. Open to every caller, like ModelMetadata."""
        served = self._dp.statistics(*self._model_ref(request))
        if self._peer_statistics is not None and served:
            loop = asyncio.get_running_loop()
            served = with_peers(served, await loop.run_in_executor(None, self._peer_statistics))
        return pb.ModelStatisticsResponse(model_stats=[_model_statistics(s) for s in served])

    def _model_ref(self, request: Any) -> tuple[str, str]:
        """A (name, version) request's fields, bounded."""
        b = self._bounds
        return b.name("field 'name'", request.name), b.name("field 'version'", request.version)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse | bytes]:
        """Triton's bidirectional stream: one response per request, in order. A
        failed request (one that does not even decode, too) answers with
        `error_message` (its status name first) and the stream goes on."""
        dp = self._dp
        async for data in request_iterator:
            received = time.perf_counter()
            fast = dp.infer_bytes(data, context.time_remaining(), received, stream=True)
            if fast is not None:
                yield fast  # ModelStreamInferResponse bytes (the Registrar passes bytes on)
                continue
            try:
                req = self._decode("ModelStreamInfer", data, context.time_remaining())
            except RequestRefused as e:
                message = f"{e.code.name}: {e.message}"
                yield _stream_error(e.model_name or "", e.model_version, e.request_id, message)
                continue
            try:
                result = await self._dp.infer(req, received)
                reply = encode_response(result)
                if result.statistics is not None:
                    result.statistics.succeeded(len(result.probability), received)
                yield pb.ModelStreamInferResponse(infer_response=reply)
            except RiskserveError as e:
                message = f"{e.code.name}: {e.message}"
                yield _stream_error(req.model_name, req.model_version, req.id, message)
            except Exception:
                log.exception("stream request failed with an internal error")
                message = "INTERNAL: internal error; see the server log"
                yield _stream_error(req.model_name, req.model_version, req.id, message)

    @takes_bytes
    async def ModelInfer(
        self, data: bytes, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse | bytes:
        """The native path first (DataPlane.infer_bytes: plain requests of versions
        it serves, reply bytes from one native call); every other request, and
        every one it does not accept, through the decoder and DataPlane.infer."""
        received = time.perf_counter()
        remaining = context.time_remaining()
        fast = self._dp.infer_bytes(data, remaining, received)
        if fast is not None:
            return fast  # reply bytes: one native call did the work
        req = self._decode("ModelInfer", data, remaining)
        result = await self._dp.infer(req, received)
        reply = encode_response(result)
        if result.statistics is not None:
            result.statistics.succeeded(len(result.probability), received)
        return reply


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _model_statistics(s: ServedStatistics) -> pb.ModelStatistics:
    st = s.statistics
    return pb.ModelStatistics(
        name=s.name,
        version=str(s.version),
        last_inference=st.last_inference_ms,
        inference_count=st.inference_count,
        execution_count=st.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(st.success),
            fail=_duration(st.fail),
            queue=_duration(st.queue),
            compute_input=_duration(st.compute_input),
            compute_infer=_duration(st.compute_infer),
            compute_output=_duration(st.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=b.batch_size, compute_infer=_duration(b.compute_infer)
            )
            for b in st.batches
        ],
    )


def _choice(p: Any) -> Any:
    """The value of a parameter message's oneof (None when it names none)."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _version_param(params: Any) -> int:
    """The repository parameter `version` (0 when absent)."""
    raw = _choice(params["version"]) if "version" in params else None
    if raw is None:
        return 0
    try:
        v = int(raw)
    except (TypeError, ValueError):
        text = raw if isinstance(raw, str) else repr(raw)
        raise InvalidInput(f"parameter 'version' must be an integer, got {shown(text)}") from None
    if v <= 0:
        raise InvalidInput("parameter 'version' must be >= 1")
    return v
