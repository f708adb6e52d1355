"""riskserve.feedback.v1.Feedback over the feedback service: labels in
(SendLabels, StreamLabels), outcomes out (GetPerformance). The credential is
checked before any request byte is decoded (transport/auth.py); every label is
committed before its acknowledgement is sent."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from riskserve.errors import InvalidInput, RiskserveError
from riskserve.feedback.outcomes import Performance, to_json
from riskserve.feedback.records import LabelAck, LabelResult
from riskserve.feedback.service import FeedbackService, LabelIn, count_by_result
from riskserve.pb.riskserve.feedback.v1 import feedback_pb2 as pb
from riskserve.pb.riskserve.feedback.v1 import feedback_pb2_grpc as pb_grpc
from riskserve.transport.codec import Bounds
from riskserve.transport.errors import STATUS, takes_bytes

SERVICE_NAME = "riskserve.feedback.v1.Feedback"

log = logging.getLogger(__name__)

_OUTCOME = {pb.OUTCOME_FRAUD: "fraud", pb.OUTCOME_LEGITIMATE: "legit"}
_RESULT = {
    LabelResult.ACCEPTED: pb.ACCEPTED,
    LabelResult.DUPLICATE: pb.DUPLICATE,
    LabelResult.REVISED: pb.REVISED,
    LabelResult.PENDING: pb.PENDING,
    LabelResult.REJECTED: pb.REJECTED,
}


def _labels_in(request: pb.SendLabelsRequest) -> list[LabelIn]:
    out = []
    for lb in request.labels:
        outcome = _OUTCOME.get(lb.outcome)
        out.append(
            LabelIn(
                request_id=lb.request_id,
                outcome=outcome if outcome is not None else f"enum value {lb.outcome}",
                label_time_ms=lb.label_time_ms,
                source=lb.source,
                label_id=lb.label_id,
                amount=lb.amount if lb.HasField("amount") else None,
            )
        )
    return out


def _reply(acks: Sequence[LabelAck]) -> pb.SendLabelsResponse:
    return pb.SendLabelsResponse(
        results=[pb.LabelAck(result=_RESULT[a.result], reason=a.reason) for a in acks],
        counts=count_by_result(acks),
    )


def performance_pb(model: str, perf: Performance) -> pb.GetPerformanceResponse:
    variants = []
    for v in perf.variants:
        fields: dict[str, Any] = {}
        for name in (
            "coverage",
            "recall",
            "false_positive_rate",
            "precision",
            "amount_recall",
            "auc",
        ):
            value = getattr(v, name)
            if value is not None and math.isfinite(value):
                fields[name] = value
        variants.append(
            pb.VariantPerformance(
                variant=v.variant,
                version=v.version,
                shadow=v.shadow,
                threshold=v.threshold if v.threshold is not None else math.nan,
                predictions=v.predictions,
                labelled=v.labelled,
                fraud=v.fraud,
                legit=v.legit,
                **fields,
            )
        )
    return pb.GetPerformanceResponse(
        model=model,
        variants=variants,
        verdict=perf.verdict.summary,
        details_json=json.dumps(to_json(perf), allow_nan=False),
    )


class FeedbackServicer(pb_grpc.FeedbackServicer):  # type: ignore[misc]
    def __init__(self, service: FeedbackService, bounds: Bounds) -> None:
        self._service = service
        self._bounds = bounds

    async def SendLabels(
        self, request: pb.SendLabelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SendLabelsResponse:
        return _reply(await self._service.send(_labels_in(request)))

    @takes_bytes
    async def StreamLabels(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SendLabelsResponse]:
        """One reply per message, sent once that message's labels are committed.
        A message that does not decode or holds a bad label ends the stream with
        INVALID_ARGUMENT naming it; what was acknowledged before stays."""
        n = 0
        async for data in request_iterator:
            try:
                try:
                    request = pb.SendLabelsRequest.FromString(data)
                except DecodeError:
                    raise InvalidInput(
                        "message is not a valid riskserve.feedback.v1.SendLabelsRequest"
                    ) from None
                acks = await self._service.send(_labels_in(request))
            except RiskserveError as e:
                await context.abort(STATUS[e.code], f"message {n}: {e.message}")
                return
            yield _reply(acks)
            n += 1

    async def GetPerformance(
        self, request: pb.GetPerformanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPerformanceResponse:
        model = self._bounds.name("field 'model'", request.model)
        if not model:
            raise InvalidInput("field 'model' is required")
        maturity = (
            request.maturity_seconds if request.has_maturity or request.maturity_seconds else None
        )
        window = request.window_seconds or None
        perf = await self._service.performance(model, maturity, window)
        return performance_pb(model, perf)
