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
- a missing, unreadable or non-PEM file, a key that is not the certificate's, or an expired
  certificate is a :class:`~tightwad.errors.ConfigError` naming the key
  (``cluster.tls.cert_file``, or the CLI flag it came from) and the path, raised when the
  component starts, never a gRPC core crash or a failing handshake later;
- ``None`` (no ``cluster.tls``) gives ``None`` credentials: plain text, as without TLS;
- key material is never logged, and never part of an error message.

mTLS and the shared token are independent layers: mTLS proves the peer holds a cluster
certificate, the token (see :mod:`tightwad.rpc`) still authorises every call.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tightwad.config import TlsConfig
from tightwad.errors import ConfigError

__all__ = [
    "CONFIG_KEYS",
    "TlsFiles",
    "channel_credentials",
    "read_tls_files",
    "server_credentials",
]

# Where each file was named, for error messages: (ca, cert, key).
CONFIG_KEYS = ("cluster.tls.ca_file", "cluster.tls.cert_file", "cluster.tls.key_file")

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
        raise ConfigError(key, f"no such file: {path}") from None
    except IsADirectoryError:
        raise ConfigError(key, f"{path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    if mark not in data:
        what = "a PEM private key" if mark == _KEY_MARK else "a PEM certificate"
        raise ConfigError(key, f"{path} is not {what}")
    return data


def read_tls_files(tls: TlsConfig, *, keys: tuple[str, str, str] = CONFIG_KEYS) -> TlsFiles:
    """Read and sanity-check the three PEM files; :class:`ConfigError` on any problem.

    ``keys`` name where the ca, cert and key paths came from (default: the cluster file's
    ``cluster.tls.*``; the CLI passes its flags), so the error points at what to fix.
    """
    files = TlsFiles(
        ca=_read(tls.ca_file, keys[0], _CERT_MARK),
        cert=_read(tls.cert_file, keys[1], _CERT_MARK),
        key=_read(tls.key_file, keys[2], _KEY_MARK),
    )
    _check_pair(files, tls, keys)
    return files


def _check_pair(files: TlsFiles, tls: TlsConfig, keys: tuple[str, str, str]) -> None:
    """The certificate parses, is in date, and belongs to the key: else a ConfigError now
    rather than a handshake failure on every call later."""
    try:
        cert = x509.load_pem_x509_certificate(files.cert)
    except ValueError:
        raise ConfigError(keys[1], f"{tls.cert_file} is not a readable certificate") from None
    try:
        key = serialization.load_pem_private_key(files.key, password=None)
    except (ValueError, TypeError):  # TypeError: an encrypted key
        raise ConfigError(
            keys[2], f"{tls.key_file} is not a readable, unencrypted private key"
        ) from None
    if key.public_key() != cert.public_key():
        raise ConfigError(keys[2], f"{tls.key_file} is not the key of {tls.cert_file}")
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        expired = cert.not_valid_after_utc.date().isoformat()
        raise ConfigError(keys[1], f"{tls.cert_file} expired on {expired}")


@overload
def server_credentials(tls: TlsConfig | TlsFiles) -> grpc.ServerCredentials: ...
@overload
def server_credentials(tls: None) -> None: ...
def server_credentials(tls: TlsConfig | TlsFiles | None) -> grpc.ServerCredentials | None:
    """Server credentials that require a client certificate signed by the cluster CA.

    ``None`` (no ``cluster.tls`` in the file) gives ``None``: serve in plain text.
    """
    if tls is None:
        return None
    files = tls if isinstance(tls, TlsFiles) else read_tls_files(tls)
    return grpc.ssl_server_credentials(
        [(files.key, files.cert)], root_certificates=files.ca, require_client_auth=True
    )


@overload
def channel_credentials(tls: TlsConfig | TlsFiles) -> grpc.ChannelCredentials: ...
@overload
def channel_credentials(tls: None) -> None: ...
def channel_credentials(tls: TlsConfig | TlsFiles | None) -> grpc.ChannelCredentials | None:
    """Channel credentials: trust only the cluster CA, present this host's certificate.

    ``None`` (no ``cluster.tls`` in the file) gives ``None``: a plain-text channel.
    """
    if tls is None:
        return None
    files = tls if isinstance(tls, TlsFiles) else read_tls_files(tls)
    return grpc.ssl_channel_credentials(
        root_certificates=files.ca, private_key=files.key, certificate_chain=files.cert
    )
