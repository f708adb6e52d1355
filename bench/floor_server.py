"""A floor server: what Python gRPC alone costs (grpc.aio + uvloop, no model work).

    python bench/floor_server.py --port P [--host 127.0.0.1] [--model fraud]
        [--features bench/results/models/fraud/1/features.json] [--handlers generated|generic]

Implements just enough of the Open Inference Protocol (KServe V2) with riskserve's
generated stubs for bench/load.py: ServerLive, ServerReady, ModelReady, ModelMetadata
and ModelInfer. ModelMetadata lists the raw inputs of ``--features`` as riskserve does, so
load.py sends both servers the same raw-field requests (no inputs without it). ModelInfer
reads only the batch size (the first dimension of the first input's shape) and answers
with a canned ModelInferResponse: one FP32 output "probability" of shape [batch], zeros, in
raw_output_contents. Responses are cached per batch size, so a request costs decoding, one
dict lookup and encoding.

``--handlers generated`` (the default) registers the servicer with the generated
``add_GRPCInferenceServiceServicer_to_server``, as riskserve does; ``generic`` builds the
same five handlers with ``grpc.method_handlers_generic_handler`` and never imports the
generated ``_grpc`` module, whose version check refuses a grpcio older than the
grpcio-tools that wrote it. bench/compare.py's ``floor-grpc175`` runs ``generic`` on
grpcio 1.75 (bench/.venv-grpc175) to measure the floor across the registered-method
change (grpc#43461); ``floor-generic`` is the same on the project's grpcio.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import grpc

from riskserve.pb.inference import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
#: method name -> request message type, for the generic handlers.
METHODS: dict[str, Any] = {
    "ServerLive": pb.ServerLiveRequest,
    "ServerReady": pb.ServerReadyRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelInfer": pb.ModelInferRequest,
}


class FloorServicer:
    def __init__(self, model: str, version: str, inputs: list[tuple[str, str]]) -> None:
        self.model = model
        self.version = version
        self.inputs = inputs  # (name, V2 datatype)
        self._responses: dict[int, pb.ModelInferResponse] = {}

    def _canned(self, batch: int) -> pb.ModelInferResponse:
        resp = self._responses.get(batch)
        if resp is None:
            resp = pb.ModelInferResponse(model_name=self.model, model_version=self.version)
            resp.outputs.add(name="probability", datatype="FP32", shape=[batch])
            resp.raw_output_contents.append(b"\0" * (4 * batch))
            self._responses[batch] = resp
        return resp

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name == self.model)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        if request.name != self.model:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
        md = pb.ModelMetadataResponse(name=self.model, versions=[self.version], platform="floor")
        for name, datatype in self.inputs:
            md.inputs.add(name=name, datatype=datatype, shape=[-1])
        return md

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        batch = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        return self._canned(int(batch))


def register(server: Any, servicer: FloorServicer, handlers: str) -> None:
    if handlers == "generated":
        from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc

        # The generated base class answers the other methods UNIMPLEMENTED, as before.
        servicer.__class__ = type(
            "GeneratedFloorServicer", (FloorServicer, pb_grpc.GRPCInferenceServiceServicer), {}
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        return
    rpcs = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )
        for name, request in METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, rpcs),))


async def serve(
    host: str,
    port: int,
    model: str,
    version: str,
    inputs: list[tuple[str, str]],
    handlers: str = "generated",
) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    register(server, FloorServicer(model, version, inputs), handlers)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(
        f"floor server: serving on {host}:{bound} (grpcio {grpc.__version__}, {handlers} handlers)",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default="fraud")
    ap.add_argument("--version", default="1")
    ap.add_argument("--features", help="features.json whose raw inputs ModelMetadata lists")
    ap.add_argument("--handlers", choices=("generated", "generic"), default="generated")
    a = ap.parse_args(argv)
    inputs: list[tuple[str, str]] = []
    if a.features:
        from riskserve._native import FeaturePipeline
        from riskserve.protocol import V2_DATATYPE

        with open(a.features) as f:
            pipeline = FeaturePipeline(f.read())
        inputs = [(name, V2_DATATYPE[dtype]) for name, dtype in pipeline.inputs]
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    run(serve(a.host, a.port, a.model, a.version, inputs, a.handlers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
