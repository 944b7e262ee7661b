"""Regenerate the wire package ``tightwad/v1/`` from ``protos/`` (grpcio-tools + mypy-protobuf).

Usage: python scripts/gen_protos.py [OUT_ROOT]   (default: the repository root)

The proto package ``tightwad.v1`` maps onto the Python package ``tightwad.v1``, so generated
modules import each other (``from tightwad.v1 import common_pb2``) without path tricks. Nothing
else lives in ``tightwad/v1/``. The no-drift test regenerates into a temporary directory and
compares byte for byte.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(PROTOS.glob("tightwad/v1/*.proto"))
    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    grpc_plugin = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
    if plugin is None or grpc_plugin is None:
        raise SystemExit("mypy-protobuf is not installed (pip install -e '.[dev]')")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(f.relative_to(PROTOS)) for f in files),
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    init = out / "tightwad" / "v1" / "__init__.py"
    init.write_text('"""Generated gRPC/protobuf code for tightwad.v1 (scripts/gen_protos.py)."""\n')
    return sorted(p for p in (out / "tightwad" / "v1").iterdir() if p.is_file())


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(target):
        print(path)
