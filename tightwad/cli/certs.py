"""``tightwadctl certs init|issue``: a cluster CA and per-host certificates for mutual TLS.

    tightwadctl certs init  --dir D [--name CLUSTER] [--days 3650]
    tightwadctl certs issue --dir D --name NODE --host IP|DNS [--host ...] [--days 825]

``init`` writes ``D/ca.pem`` (the CA certificate, to copy to every host) and ``D/ca-key.pem``
(the CA's private key, mode 0600: keep it off the cluster hosts once certificates are issued).
``issue`` writes ``D/NODE.pem`` and ``D/NODE-key.pem`` (0600), a certificate for NODE signed by
the CA, valid as server *and* client (extended key usages serverAuth + clientAuth), with every
``--host`` as a subject alternative name (IP addresses as IP SANs, others as DNS names).
Point ``cluster.tls`` at them: ``ca_file: D/ca.pem``, ``cert_file: D/NODE.pem``,
``key_file: D/NODE-key.pem``.

Keys are EC P-256, signatures ECDSA-SHA256. Nothing is overwritten without ``--force``; the
library functions :func:`init_ca` and :func:`issue_cert` are what tests and other code call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tightwad.errors import ConfigError, TightwadError

__all__ = ["CaFiles", "NodeFiles", "certs_main", "init_ca", "issue_cert"]

CA_DAYS = 3650
NODE_DAYS = 825
_SKEW = dt.timedelta(minutes=5)  # tolerate small clock differences between hosts


@dataclass(frozen=True, slots=True)
class CaFiles:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class NodeFiles:
    cert: Path
    key: Path
    ca: Path


def _write(path: Path, data: bytes, *, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError("certs", f"{path} exists; use --force to overwrite it")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600 if private else 0o644)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(
    directory: Path, *, name: str = "tightwad", days: int = CA_DAYS, force: bool = False
) -> CaFiles:
    """Create the cluster CA in ``directory``: ``ca.pem`` and ``ca-key.pem`` (0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tightwad"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} cluster CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = CaFiles(cert=directory / "ca.pem", key=directory / "ca-key.pem")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(files.key, key_pem, private=True, force=force)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False, force=force)
    return files


def _san(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        if not host:
            raise ConfigError("certs.host", "empty host name")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_cert(
    directory: Path,
    name: str,
    hosts: Sequence[str],
    *,
    days: int = NODE_DAYS,
    force: bool = False,
) -> NodeFiles:
    """Issue ``NAME.pem`` / ``NAME-key.pem`` signed by the CA in ``directory``."""
    if not name or "/" in name or name.startswith(".") or name in {"ca", "ca-key"}:
        raise ConfigError("certs.name", f"{name!r} is not a usable node name")
    if not hosts:
        raise ConfigError("certs.host", "give at least one --host (IP address or DNS name)")
    ca_cert_path, ca_key_path = directory / "ca.pem", directory / "ca-key.pem"
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(
            "certs.dir", f"no CA in {directory}: run `tightwadctl certs init` first"
        ) from None
    except ValueError as exc:
        raise ConfigError("certs.dir", f"the CA files in {directory} are unreadable") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("certs.dir", f"{ca_key_path} is not an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tightwad"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = NodeFiles(
        cert=directory / f"{name}.pem", key=directory / f"{name}-key.pem", ca=ca_cert_path
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(files.key, key_pem, private=True, force=force)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False, force=force)
    return files


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tightwadctl certs", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", help="create the cluster CA")
    init.add_argument("--dir", required=True, type=Path, help="where to write ca.pem, ca-key.pem")
    init.add_argument("--name", default="tightwad", help="cluster name in the CA's subject")
    init.add_argument("--days", type=int, default=CA_DAYS)
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    issue = sub.add_parser("issue", help="issue a server+client certificate for one host")
    issue.add_argument("--dir", required=True, type=Path, help="the CA's directory")
    issue.add_argument("--name", required=True, help="node name (file stem and common name)")
    issue.add_argument(
        "--host", action="append", default=[], help="IP or DNS name of the host (repeatable)"
    )
    issue.add_argument("--days", type=int, default=NODE_DAYS)
    issue.add_argument("--force", action="store_true", help="overwrite existing files")
    return p


def certs_main(argv: Sequence[str]) -> int:
    """Entry point of ``tightwadctl certs``; returns the exit status."""
    args = _parser().parse_args(list(argv))
    try:
        if args.days <= 0:
            raise ConfigError("certs.days", f"must be > 0, got {args.days}")
        if args.action == "init":
            ca = init_ca(args.dir, name=args.name, days=args.days, force=args.force)
            print(f"cluster CA: {ca.cert}\nCA key (keep it safe, mode 0600): {ca.key}")
            return 0
        node = issue_cert(args.dir, args.name, args.host, days=args.days, force=args.force)
        print(
            f"certificate for {args.name}: {node.cert}\nkey (mode 0600): {node.key}\n"
            "cluster.tls:\n"
            f"  ca_file: {node.ca}\n  cert_file: {node.cert}\n  key_file: {node.key}"
        )
        return 0
    except TightwadError as exc:
        print(f"tightwadctl certs: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(certs_main(sys.argv[1:]))
