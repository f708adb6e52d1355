"""A deployment service over a real models folder and real deployment.json, with
stand-in versions: these tests exercise the service's own logic (locks, undo,
persistence, publishing), not model loading; the routing table only looks the
versions up. tests/deployments/test_service_models.py uses really trained models."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from riskserve.deployments import DeploymentService, Revision, StateStore
from riskserve.registry import ModelRepository, VersionRef
from riskserve.routing import RoutingTable

START = Revision(
    revision=1,
    action="start",
    variants=((1, 100), (2, 0)),
    salt="fraud",
    shadow_version=None,
    shadow_percent=0.0,
    loaded=(1, 2),
    updated_at="2026-01-01T00:00:00.000+00:00",
    actor="riskserve",
    reason="test",
    undo_from=1,
)


def stand_in(ref: VersionRef) -> Any:
    """A 'loaded version' with the attributes the service reads."""
    return types.SimpleNamespace(
        name=ref.name,
        version=ref.version,
        inputs=(),
        platform="stand-in",
        threshold=ref.version / 10,  # the version's own (its manifest's)
        manifest=types.SimpleNamespace(model_sha256=f"sha-{ref.version}"),
        pipeline=types.SimpleNamespace(n_features=0),
    )


@dataclasses.dataclass
class Rig:
    service: DeploymentService
    published: list[RoutingTable]
    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "fraud" / "deployment.json"


def rig(root: Path, versions: tuple[int, ...] = (1, 2, 3), start: Revision = START) -> Rig:
    """models/fraud/<versions> on disk, deployment.json at `start`, restored."""
    for v in versions:
        (root / "fraud" / str(v)).mkdir(parents=True, exist_ok=True)
    StateStore(root).write("fraud", [start])
    published: list[RoutingTable] = []
    loader: Callable[[VersionRef], Any] = stand_in
    svc = DeploymentService(ModelRepository(root), loader, published.append)
    svc.restore()
    published.clear()
    return Rig(svc, published, root)
