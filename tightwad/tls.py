"""Mutual TLS for the gRPC plane: the cluster's CA and this host's certificate as credentials.

Owns :func:`server_credentials` and :func:`channel_credentials`, both built from the
``cluster.tls`` section (:class:`tightwad.config.TlsConfig`: ``ca_file``, ``cert_file``,
``key_file``), and :func:`read_tls_files`. The files are made by ``tightwadctl certs init|issue``
(:mod:`tightwad.cli.certs`): one cluster CA, and per host one certificate usable both as server
and as client, so every component presents the same pair whichever side of a call it is on.

Guarantees:

- a server built with these credentials *requires* a client certificate signed by the cluster
  CA (``require_client_auth=True``): a peer without one, or with one from another CA, fails
  the TLS handshake before any RPC (and before the token is even looked at);
- a missing, unreadable or non-PEM file is a :class:`~tightwad.errors.ConfigError` naming the
  key (``cluster.tls.cert_file``) and the path, never a gRPC core crash later;
- key material is never logged, and never part of an error message.

mTLS and the shared token are independent layers: mTLS proves the peer holds a cluster
certificate, the token (see :mod:`tightwad.rpc`) still authorises every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from tightwad.config import TlsConfig
from tightwad.errors import ConfigError

__all__ = ["TlsFiles", "channel_credentials", "read_tls_files", "server_credentials"]

_CERT_MARK = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK = b"PRIVATE KEY-----"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM bytes of the CA bundle, this host's certificate chain and its private key."""

    ca: bytes
    cert: bytes
    key: bytes

    def __repr__(self) -> str:  # never print key material
        return f"TlsFiles(ca={len(self.ca)}B, cert={len(self.cert)}B, key=<redacted>)"


def _read(path: Path, key: str, mark: bytes) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"cluster.tls.{key}", f"no such file: {path}") from None
    except OSError as exc:
        raise ConfigError(
            f"cluster.tls.{key}", f"cannot read {path}: {exc.strerror or exc}"
        ) from None
    if mark not in data:
        what = "a PEM private key" if mark == _KEY_MARK else "a PEM certificate"
        raise ConfigError(f"cluster.tls.{key}", f"{path} is not {what}")
    return data


def read_tls_files(tls: TlsConfig) -> TlsFiles:
    """Read and sanity-check the three PEM files; :class:`ConfigError` on any problem."""
    return TlsFiles(
        ca=_read(tls.ca_file, "ca_file", _CERT_MARK),
        cert=_read(tls.cert_file, "cert_file", _CERT_MARK),
        key=_read(tls.key_file, "key_file", _KEY_MARK),
    )


def server_credentials(tls: TlsConfig | TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate signed by the cluster CA."""
    files = tls if isinstance(tls, TlsFiles) else read_tls_files(tls)
    return grpc.ssl_server_credentials(
        [(files.key, files.cert)], root_certificates=files.ca, require_client_auth=True
    )


def channel_credentials(tls: TlsConfig | TlsFiles) -> grpc.ChannelCredentials:
    """Channel credentials: trust only the cluster CA, present this host's certificate."""
    files = tls if isinstance(tls, TlsFiles) else read_tls_files(tls)
    return grpc.ssl_channel_credentials(
        root_certificates=files.ca, private_key=files.key, certificate_chain=files.cert
    )
