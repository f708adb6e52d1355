"""The load shedder's state machine (CoDel-style, on a version's batch queue) with a
fake clock: it sheds only when the queueing delay stays above target for a whole
interval, stops at the first delay below target, and a short burst is queued. And
the canary guard counts only server faults among a canary's failed requests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from riskserve.config import BatchingSettings, ScoringSettings
from riskserve.dataplane import DataPlane, InferRequest, Shedder
from riskserve.monitoring import Metrics
from riskserve.routing import RoutingTable
from riskserve.routing.table import Routed

TARGET, INTERVAL = 0.005, 0.1


def feed(s: Shedder, start: float, end: float, delay: float, step: float = 0.01) -> list[bool]:
    """Observes `delay` every `step` seconds from start to end; the states seen."""
    states = []
    t = start
    while t <= end + 1e-9:
        s.observe(t, delay)
        states.append(s.shedding)
        t += step
    return states


def test_a_delay_above_target_for_an_interval_starts_shedding() -> None:
    s = Shedder(TARGET, INTERVAL)
    states = feed(s, 0.0, 0.09, 0.02)
    assert not any(states)  # above target, but not yet for a whole interval
    s.observe(0.1, 0.02)
    assert s.shedding


def test_a_burst_shorter_than_the_interval_is_not_shed() -> None:
    s = Shedder(TARGET, INTERVAL)
    assert not any(feed(s, 0.0, 0.08, 0.05))  # a large delay, for 80 ms
    s.observe(0.085, 0.0)  # the queue emptied
    assert not any(feed(s, 0.09, 0.17, 0.05))  # another burst: the clock restarted
    assert not s.shedding


def test_one_delay_below_target_restarts_the_interval() -> None:
    """The minimum over the interval must stay above target."""
    s = Shedder(TARGET, INTERVAL)
    feed(s, 0.0, 0.09, 0.02)
    s.observe(0.095, 0.004)
    assert not any(feed(s, 0.1, 0.19, 0.02))
    s.observe(0.2, 0.02)
    assert s.shedding


def test_shedding_stops_when_the_delay_drops_below_target() -> None:
    s = Shedder(TARGET, INTERVAL)
    feed(s, 0.0, 0.2, 0.03)
    assert s.shedding
    s.observe(0.21, 0.01)  # still above: still shedding while the queue drains
    assert s.shedding
    s.observe(0.22, 0.001)
    assert not s.shedding
    # and it takes a whole interval above target again to start again
    assert not any(feed(s, 0.23, 0.32, 0.03))
    s.observe(0.34, 0.03)
    assert s.shedding


def test_an_idle_gap_does_not_count_as_time_above_target() -> None:
    """An empty queue is reported as delay 0 by the batcher, so a dequeue long after
    an old burst starts a new interval rather than finishing the old one."""
    s = Shedder(TARGET, INTERVAL)
    s.observe(0.0, 0.02)
    s.observe(0.01, 0.0)  # drained
    s.observe(10.0, 0.02)
    assert not s.shedding


def test_a_delay_exactly_at_target_counts_as_above() -> None:
    s = Shedder(TARGET, INTERVAL)
    s.observe(0.0, TARGET)
    s.observe(INTERVAL, TARGET)
    assert s.shedding


def test_target_zero_never_sheds() -> None:
    s = Shedder(0.0, INTERVAL)
    assert not any(feed(s, 0.0, 1.0, 10.0))


def test_the_refusal_names_target_interval_and_backoff() -> None:
    assert Shedder(TARGET, INTERVAL).refusal() == (
        "overloaded: queueing delay above 5 ms for 100 ms; retry with backoff"
    )


class _Guard:
    def __init__(self) -> None:
        self.failures: list[tuple[str, int]] = []

    def record(self, model: str, version: int, period: int, *rest: Any) -> None:
        if rest[1] is False:
            self.failures.append((model, version))


@pytest.mark.parametrize(
    ("code", "counted"),
    [
        ("INTERNAL", True),
        ("UNAVAILABLE", True),
        ("DEADLINE_EXCEEDED", False),  # a client's tiny deadlines are not the canary's fault
        ("RESOURCE_EXHAUSTED", False),  # shed, or over the admission bound: the load's
        ("INVALID_ARGUMENT", False),
    ],
)
def test_the_canary_guard_counts_only_server_faults(code: str, counted: bool) -> None:
    dp = DataPlane(
        ScoringSettings(), BatchingSettings(), RoutingTable({}), Metrics(CollectorRegistry())
    )
    guard = dp.guard = _Guard()
    model = SimpleNamespace(name="fraud", version=2)
    routed = Routed(model=cast(Any, model), variant="canary", revision=3, split=True)
    req = InferRequest(model_name="fraud", model_version="", id="x", inputs=())
    try:
        dp._record_error(req, routed, code)
    finally:
        dp.close()
    assert guard.failures == ([("fraud", 2)] if counted else [])
