"""TLS and mTLS for the gRPC port, from PEM files, reloaded without a restart.

gRPC core asks for the certificate configuration on every new connection
(grpc.dynamic_ssl_server_credentials); we answer "unchanged" unless one of the
files changed since the configuration in force was read, so a rotated
certificate (cert-manager, a renewed Secret) is served to new connections within
a second, and connections already open keep theirs. A file that is unreadable or
does not parse at rotation is refused with a logged reason and the configuration
in force stays (at start, the server refuses to start)."""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

#: How often the files' mtimes are checked on new connections, seconds.
CHECK_SECONDS = 1.0


class TlsError(ValueError):
    """A certificate or key file is missing, unreadable or not PEM."""


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    #: CA bundle for client certificates: when set, clients must present one (mTLS).
    client_ca: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TlsError(f"{what} {path}: unreadable: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{what} {path}: not a PEM file")
    return data


def check_pair(files: TlsFiles) -> None:
    """Raises TlsError unless the key matches the certificate (what gRPC core would
    otherwise only report as a failed handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    except (ssl.SSLError, OSError) as e:
        raise TlsError(
            f"{files.cert} / {files.key}: not a matching certificate and key: {e}"
        ) from None
    if files.client_ca is not None:
        try:
            ctx.load_verify_locations(str(files.client_ca))
        except (ssl.SSLError, OSError) as e:
            raise TlsError(f"client CA {files.client_ca}: {e}") from None


class ReloadingCredentials:
    """Server credentials that follow the PEM files."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp = self._mtimes()
        self.reloads = 0
        first = self._config()  # raises TlsError: the server does not start
        self.credentials = grpc.dynamic_ssl_server_credentials(
            first, self._fetch, require_client_authentication=files.client_ca is not None
        )

    def _mtimes(self) -> tuple[int, ...]:
        out = []
        for p in self.files.paths():
            try:
                out.append(os.stat(p).st_mtime_ns)
            except OSError:
                out.append(-1)
        return tuple(out)

    def _config(self) -> Any:
        f = self.files
        check_pair(f)
        cert, key = _read_pem(f.cert, "certificate"), _read_pem(f.key, "key")
        ca = _read_pem(f.client_ca, "client CA") if f.client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _fetch(self) -> Any:
        """Called by gRPC core for each new connection: a new configuration, or None."""
        now = time.monotonic()
        if now - self._checked < CHECK_SECONDS:
            return None
        with self._lock:
            self._checked = now
            stamp = self._mtimes()
            if stamp == self._stamp:
                return None
            self._stamp = stamp  # judged, good or bad: not re-read until it changes
            try:
                config = self._config()
            except TlsError as e:
                log.error(
                    "TLS files refused; keeping the certificate in force", extra={"reason": str(e)}
                )
                return None
            self.reloads += 1
            log.info("TLS certificate reloaded", extra={"cert": str(self.files.cert)})
            return config


def peer_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The verified client certificate's common name and subject alternative names
    (empty without mTLS)."""
    auth = context.auth_context() or {}
    out = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for v in auth.get(key, ()):
            out.append(v.decode() if isinstance(v, bytes) else str(v))
    return out
