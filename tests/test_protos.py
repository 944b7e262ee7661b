"""The wire contract: generated code has not drifted from protos/, and buf lint passes."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_has_no_drift(tmp_path: Path) -> None:
    files = _load_generator().generate(tmp_path)
    committed = ROOT / "tightwad" / "v1"
    names = {p.name for p in files}
    assert names == {p.name for p in committed.iterdir() if p.is_file() and p.suffix != ".pyc"}
    for generated in files:
        assert generated.read_bytes() == (committed / generated.name).read_bytes(), (
            f"tightwad/v1/{generated.name} differs from protos/: run scripts/gen_protos.py"
        )


def test_every_service_is_importable_with_its_stub() -> None:
    from tightwad.v1 import agent_pb2_grpc, controller_pb2_grpc, engine_pb2_grpc

    assert engine_pb2_grpc.EngineServiceStub
    assert agent_pb2_grpc.NodeServiceStub
    assert controller_pb2_grpc.ControllerServiceStub


def test_buf_workspace_is_the_repository_root_with_protos_as_its_module() -> None:
    config = yaml.safe_load((ROOT / "buf.yaml").read_text(encoding="utf-8"))
    assert config["version"] == "v2"
    assert [m["path"] for m in config["modules"]] == ["protos"]
    assert not (ROOT / "protos" / "buf.yaml").exists(), "one buf config: the root's"


@pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed")
def test_buf_lint_passes() -> None:
    proc = subprocess.run(
        ["npx", "--yes", "@bufbuild/buf", "lint"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "command",
    ["tightwad", "tightwadctl", "tightwad-agent", "tightwad-controller", "tightwad-gateway"],
)
def test_entry_points_answer_help_and_version(command: str) -> None:
    exe = Path(sys.executable).parent / command
    assert exe.exists(), f"{command} is not installed (pip install -e .)"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert "0.1.0" in version.stdout + version.stderr
    helptext = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert helptext.returncode == 0, helptext.stderr
    assert "usage:" in helptext.stdout.lower()
