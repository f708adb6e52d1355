"""The model repository on disk: immutable versions with manifests."""

from riskserve.registry.repository import Manifest, ModelRepository, VersionRef, sha256_file

__all__ = ["Manifest", "ModelRepository", "VersionRef", "sha256_file"]
