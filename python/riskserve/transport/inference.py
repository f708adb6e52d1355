"""inference.GRPCInferenceService: the Open Inference Protocol (KServe V2)."""

from __future__ import annotations

import grpc

from riskserve.dataplane import SERVER_NAME, DataPlane
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc
from riskserve.transport.codec import decode_request, encode_response

SERVICE_NAME = "inference.GRPCInferenceService"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, dataplane: DataPlane, version: str) -> None:
        self._dp = dataplane
        self._version = version

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

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        req = decode_request(request, context.time_remaining())
        result = await self._dp.infer(req)
        return encode_response(result)
