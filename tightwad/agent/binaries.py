"""Where this host's llama.cpp binaries are: ``ggml-rpc-server`` (or its older name
``rpc-server``) and ``llama-server``.

Search order, first hit wins:

1. a configured path (``binaries:`` section, when it names a file path rather than a bare name;
   when that file is gone, its name is searched for in the places below);
2. an explicit directory (``agents.binaries_dir`` or ``--binaries-dir``);
3. ``$TIGHTWAD_BIN_DIR``;
4. the build cache of ``scripts/build_llama.sh``:
   ``$TIGHTWAD_CACHE/llama.cpp/<version>/<backend>/bin`` (default ``~/.cache/tightwad``), newest
   version first, then ``$TIGHTWAD_BACKEND``'s build (else GPU backends before ``cpu``);
5. ``$PATH``.

A miss raises :class:`~tightwad.errors.NotFoundError` listing every place looked at and how to
fix it, so ``tightwad-agent --check`` and a failed ``StartProcess`` say the same thing.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tightwad.errors import NotFoundError

__all__ = [
    "BIN_DIR_ENV",
    "BinaryKind",
    "BinaryLocator",
    "find_binary",
    "search_dirs",
]

BIN_DIR_ENV = "TIGHTWAD_BIN_DIR"


class BinaryKind(enum.StrEnum):
    RPC_SERVER = "rpc_server"
    LLAMA_SERVER = "llama_server"


_NAMES: dict[BinaryKind, tuple[str, ...]] = {
    BinaryKind.RPC_SERVER: ("ggml-rpc-server", "rpc-server"),
    BinaryKind.LLAMA_SERVER: ("llama-server",),
}
_FIX = (
    "build them with scripts/build_worker.sh (or scripts/build_llama.sh bin), then set "
    "agents.binaries_dir in the cluster file or $TIGHTWAD_BIN_DIR to the directory holding them"
)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.parent.name))


# Without $TIGHTWAD_BACKEND, a GPU build is preferred over a CPU one of the same version.
_BACKEND_ORDER = ("cuda", "rocm", "metal", "vulkan", "cpu")


def _backend_rank(path: Path, chosen: str | None) -> int:
    name = path.parent.name
    if chosen:
        return 0 if name == chosen else 1
    return _BACKEND_ORDER.index(name) if name in _BACKEND_ORDER else len(_BACKEND_ORDER)


def _cache_bins(env: Mapping[str, str]) -> list[Path]:
    """``$TIGHTWAD_CACHE/llama.cpp/<version>/<backend>/bin``: newest version first, then the
    backend ``$TIGHTWAD_BACKEND`` names (else GPU backends before ``cpu``)."""
    root = env.get("TIGHTWAD_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tightwad"
    chosen = env.get("TIGHTWAD_BACKEND") or None
    found = [p for p in (base / "llama.cpp").glob("*/*/bin") if p.is_dir()]
    by_backend = sorted(found, key=lambda p: _backend_rank(p, chosen))
    return sorted(by_backend, key=_version_key, reverse=True)


def search_dirs(
    explicit_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> list[Path]:
    """The directories looked in, in order (``$PATH`` last)."""
    env = os.environ if env is None else env
    dirs: list[Path] = []
    if explicit_dir is not None:
        dirs.append(Path(explicit_dir).expanduser())
    if env.get(BIN_DIR_ENV):
        dirs.append(Path(env[BIN_DIR_ENV]).expanduser())
    dirs += _cache_bins(env)
    dirs += [Path(p) for p in env.get("PATH", "").split(os.pathsep) if p]
    return dirs


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _names(kind: BinaryKind, configured: str | None) -> tuple[str, ...]:
    names = _NAMES[kind]
    if configured and "/" not in configured and configured not in names:
        return (configured, *names)
    return names


def find_binary(
    kind: BinaryKind,
    *,
    explicit_dir: Path | None = None,
    configured: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Path:
    """The executable for ``kind``; ``NotFoundError`` names every place looked at."""
    dirs = search_dirs(explicit_dir, env)
    if configured and "/" in configured:
        path = Path(configured).expanduser()
        if _executable(path):
            return path
        dirs.insert(0, path.parent)  # a stale configured path: still search by name
        configured = path.name
    names = _names(kind, configured)
    for directory in dirs:
        for name in names:
            candidate = directory / name
            if _executable(candidate):
                return candidate
    looked = ", ".join(str(d) for d in dirs) or "(nowhere: PATH is empty)"
    raise NotFoundError(f"no {' or '.join(names)} found; looked in {looked}. Fix: {_FIX}")


@dataclass(frozen=True, slots=True)
class BinaryLocator:
    """Finds binaries with this agent's settings; what ``Supervisor`` and ``--check`` use."""

    explicit_dir: Path | None = None
    rpc_server_name: str | None = None
    llama_server_name: str | None = None
    env: Mapping[str, str] | None = None

    def find(self, kind: BinaryKind) -> Path:
        configured = (
            self.rpc_server_name if kind is BinaryKind.RPC_SERVER else self.llama_server_name
        )
        return find_binary(
            kind, explicit_dir=self.explicit_dir, configured=configured, env=self.env
        )

    def try_find(self, kind: BinaryKind) -> Path | None:
        try:
            return self.find(kind)
        except NotFoundError:
            return None

    def where(self) -> Sequence[Path]:
        return search_dirs(self.explicit_dir, self.env)

    def __call__(self, kind: BinaryKind) -> Path:
        return self.find(kind)
