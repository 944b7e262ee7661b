"""The systemd units in packaging/systemd pass ``systemd-analyze verify``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
COMPONENTS = ("agent", "controller", "gateway")


def test_units_exist_and_stop_gracefully() -> None:
    for comp in COMPONENTS:
        text = (UNITS / f"tightwad-{comp}.service").read_text()
        for line in (
            "KillMode=mixed",
            "Restart=on-failure",
            "EnvironmentFile=-/etc/tightwad/env",
            f"ExecStart=/opt/tightwad/venv/bin/tightwad-{comp}",
        ):
            assert line in text, f"{comp}: {line}"
        assert "PrivateDevices=yes" not in text  # would hide /dev/nvidia*, /dev/kfd, /dev/dri


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (CI: apt-get install -y systemd)",
)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent  # ExecStart must exist for verify: point it here
    for comp in COMPONENTS:
        text = (UNITS / f"tightwad-{comp}.service").read_text()
        (tmp_path / f"tightwad-{comp}.service").write_text(
            text.replace("/opt/tightwad/venv/bin", str(bindir))
        )
        assert (bindir / f"tightwad-{comp}").exists()
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(p.name for p in tmp_path.iterdir())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "tightwad" not in out.stderr, out.stderr
