"""Deployments over time: the revision history (pure), deployment.json and its
lock (store), the admin commands (service) and the canary guard (canary)."""

from riskserve.deployments.history import Revision, control_version
from riskserve.deployments.service import (
    DeploymentService,
    ModelStatus,
    VersionState,
    VersionStatus,
)
from riskserve.deployments.store import STATE_FILE, StateStore

__all__ = [
    "STATE_FILE",
    "DeploymentService",
    "ModelStatus",
    "Revision",
    "StateStore",
    "VersionState",
    "VersionStatus",
    "control_version",
]
