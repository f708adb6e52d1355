"""What a stop needs from the transport (riskserve.server.Server.stop).

gRPC core cancels every call it has received but no handler has picked up yet
when the server shuts down (grpc/grpc#41785), and under load there are always
some: grpc.aio picks calls up one at a time. `Quiesce` counts the calls our
handlers pick up and, during a stop, holds their replies (the call runs; only its
return waits) until no new call has come in for a moment: a client waiting for its
reply sends nothing more, so every call already sent is picked up before core
shuts down. It lives in the one wrapper every method of ours already has
(transport.errors.guarded), not in a per-RPC server interceptor."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

#: A stop shuts gRPC down once no new call has come in over this many checks
#: QUIET_TICK seconds apart while replies are held (with the loop free, a call queued
#: in gRPC core is picked up within microseconds; counting checks rather than
#: seconds keeps a process that was not scheduled for a while from stopping early) ...
QUIET_TICKS = 4
QUIET_TICK = 0.005
#: ... or after this long in any case (clients that send without waiting for replies).
HOLD_SECONDS = 0.5


class Quiesce:
    """Counts picked-up calls; holds their replies while a stop is under way."""

    def __init__(self) -> None:
        self.calls = 0
        self._held: asyncio.Event | None = None

    def picked_up(self) -> None:
        self.calls += 1

    async def reply_allowed(self) -> None:
        """Returns at once, except between hold() and release()."""
        if self._held is not None:
            await self._held.wait()

    async def hold(self) -> int:
        """Holds replies until no new call has come in for QUIET_TICKS checks (at
        most HOLD_SECONDS); returns how many calls came in meanwhile."""
        self._held = asyncio.Event()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HOLD_SECONDS
        first = seen = self.calls
        quiet = 0
        while quiet < QUIET_TICKS:
            await asyncio.sleep(QUIET_TICK)
            quiet = quiet + 1 if self.calls == seen else 0
            seen = self.calls
            if loop.time() >= deadline:
                log.warning("calls still coming in; stopping anyway", extra={"held": seen - first})
                break
        return seen - first

    def release(self) -> None:
        if self._held is not None:
            self._held.set()


class DrainingHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 whose Watch streams end when the server stops: a watcher (a
    client doing client-side health checking) would otherwise hold the stop for the
    whole grace period and then be cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self._closing = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        watch = asyncio.ensure_future(super().Watch(request, context))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait((watch, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (watch, closing):
                t.cancel()
            await asyncio.gather(watch, closing, return_exceptions=True)

    def close_watches(self) -> None:
        self._closing.set()
