"""inference.GRPCInferenceService: the Open Inference Protocol (KServe V2)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from riskserve.dataplane import SERVER_NAME, DataPlane
from riskserve.deployments import DeploymentService, VersionState
from riskserve.errors import InvalidInput, RiskserveError
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc
from riskserve.transport.admin import actor_of
from riskserve.transport.codec import decode_request, decode_request_bytes, encode_response
from riskserve.transport.errors import Registrar

SERVICE_NAME = "inference.GRPCInferenceService"

log = logging.getLogger(__name__)


def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, dataplane: DataPlane, version: str, deployments: DeploymentService) -> None:
        self._dp = dataplane
        self._version = version
        self._deployments = deployments

    # -- repository extension (admin: needs the bearer token) -----------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        out = []
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
        name = request.model_name
        if not name:
            raise InvalidInput("field 'model_name' is required")
        version = _version_param(request.parameters) or None
        await self._deployments.load_and_promote(name, version, actor_of(context))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        """With parameter `version`: UnloadVersion. Without: the model leaves
        service (NOT_FOUND until loaded again)."""
        m = self._deployments
        name = request.model_name
        if not name:
            raise InvalidInput("field 'model_name' is required")
        version = _version_param(request.parameters)
        if version:
            await m.unload(name, version, actor_of(context), "RepositoryModelUnload")
        else:
            await m.remove(name, actor_of(context), "RepositoryModelUnload")
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
        return pb.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        md = self._dp.model_metadata(request.name, request.version)
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=md.name,
            versions=list(md.versions),
            platform=md.platform,
            inputs=[tm(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in md.inputs],
            outputs=[tm(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in md.outputs],
        )

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Triton's bidirectional stream: one response per request, in order. A
        failed request answers with `error_message` (its status name first) and
        the stream goes on."""
        async for request in request_iterator:
            try:
                req = decode_request(request, context.time_remaining())
                result = await self._dp.infer(req)
                yield pb.ModelStreamInferResponse(infer_response=encode_response(result))
            except RiskserveError as e:
                yield _stream_error(request, f"{e.code.name}: {e.message}")
            except Exception:
                log.exception("stream request failed with an internal error")
                yield _stream_error(request, "INTERNAL: internal error; see the server log")

    async def ModelInferBytes(
        self, data: bytes, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """ModelInfer from the request bytes (see register_bytes_model_infer)."""
        req = decode_request_bytes(data, context.time_remaining())
        result = await self._dp.infer(req)
        return encode_response(result)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        req = decode_request(request, context.time_remaining())
        result = await self._dp.infer(req)
        return encode_response(result)


def _version_param(params: Any) -> int:
    p = params.get("version") if "version" in params else None
    if p is None:
        return 0
    which = p.WhichOneof("parameter_choice")
    raw = getattr(p, which) if which else ""
    try:
        v = int(raw)
    except (TypeError, ValueError):
        raise InvalidInput(f"parameter 'version' must be an integer, got {raw!r}") from None
    if v <= 0:
        raise InvalidInput("parameter 'version' must be >= 1")
    return v


def register_bytes_model_infer(server: Registrar, servicer: InferenceServicer) -> None:
    """Serves ModelInfer from the raw request bytes, parsed in Rust, instead of the
    generated deserializer. Registered after the generated service: a registered
    handler takes precedence; the other methods keep the generated ones."""
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInferBytes,
        request_deserializer=None,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    server.add_registered_method_handlers(SERVICE_NAME, {"ModelInfer": handler})
