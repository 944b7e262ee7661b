"""``tightwadctl certs init|issue``: the files, their modes, and what the certificates say."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tightwad.cli.certs import certs_main
from tightwad.config import TlsConfig
from tightwad.errors import ConfigError
from tightwad.tls import read_tls_files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_then_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert certs_main(["init", "--dir", str(d)]) == 0
    args = ["issue", "--dir", str(d), "--name", "gpu-box", "--host", "10.0.0.7"]
    assert certs_main([*args, "--host", "gpu-box.lan"]) == 0
    out = capsys.readouterr().out
    assert "cert_file:" in out and "BEGIN" not in out  # paths printed, never key material

    assert _mode(d / "ca-key.pem") == 0o600
    assert _mode(d / "gpu-box-key.pem") == 0o600
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    node = x509.load_pem_x509_certificate((d / "gpu-box.pem").read_bytes())

    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert lifetime >= dt.timedelta(days=3650)

    node.verify_directly_issued_by(ca)
    assert not node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    san = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert san.get_values_for_type(x509.DNSName) == ["gpu-box.lan"]


def test_nothing_is_overwritten_without_force(tmp_path: Path) -> None:
    assert certs_main(["init", "--dir", str(tmp_path)]) == 0
    before = (tmp_path / "ca.pem").read_bytes()
    assert certs_main(["init", "--dir", str(tmp_path)]) == 1
    assert (tmp_path / "ca.pem").read_bytes() == before
    assert certs_main(["init", "--dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != before


@pytest.mark.parametrize(
    "argv",
    [
        ["issue", "--name", "n"],  # no --host
        ["issue", "--name", "../evil", "--host", "1.2.3.4"],
        ["issue", "--name", "ca", "--host", "1.2.3.4"],
        ["issue", "--name", "n", "--host", "1.2.3.4", "--days", "0"],
    ],
)
def test_bad_issue_arguments_fail_cleanly(tmp_path: Path, argv: list[str]) -> None:
    assert certs_main(["init", "--dir", str(tmp_path)]) == 0
    assert certs_main([*argv, "--dir", str(tmp_path)]) == 1


def test_issue_without_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["issue", "--dir", str(tmp_path), "--name", "n", "--host", "1.2.3.4"]
    assert certs_main(args) == 1
    assert "certs init" in capsys.readouterr().err


def test_tls_files_are_checked(tmp_path: Path) -> None:
    certs_main(["init", "--dir", str(tmp_path)])
    certs_main(["issue", "--dir", str(tmp_path), "--name", "n", "--host", "127.0.0.1"])
    good = TlsConfig(tmp_path / "ca.pem", tmp_path / "n.pem", tmp_path / "n-key.pem")
    files = read_tls_files(good)
    assert "PRIVATE" not in repr(files)
    with pytest.raises(ConfigError, match=r"cluster\.tls\.key_file"):
        read_tls_files(TlsConfig(good.ca_file, good.cert_file, tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"cluster\.tls\.cert_file.*not a PEM certificate"):
        read_tls_files(TlsConfig(good.ca_file, good.key_file, good.key_file))
    with pytest.raises(ConfigError, match=r"cluster\.tls\.key_file.*not a PEM private key"):
        read_tls_files(TlsConfig(good.ca_file, good.cert_file, good.cert_file))
