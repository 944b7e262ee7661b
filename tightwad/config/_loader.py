"""Where the cluster file comes from, and the three ways to get a ClusterConfig.

Resolution order of :func:`load_config`: the explicit path (the CLI's ``-c PATH``), else the
``TIGHTWAD_CONFIG`` environment variable, else ``configs/cluster.yaml`` under the current
directory; otherwise a ConfigError says where it looked. ``env`` (default ``os.environ``)
serves both ``TIGHTWAD_CONFIG`` and ``${VAR}`` expansion, so tests never touch the process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from tightwad.config._build import build_config
from tightwad.config._document import Document, join, parse_document
from tightwad.config._env import expand
from tightwad.config._schema import ClusterConfig
from tightwad.errors import ConfigError

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "config_from_mapping",
    "default_config",
    "load_config",
    "resolve_config_path",
]

CONFIG_ENV_VAR = "TIGHTWAD_CONFIG"
DEFAULT_CONFIG_PATH = Path("configs") / "cluster.yaml"


def resolve_config_path(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> Path:
    """The file :func:`load_config` would read, or ConfigError saying where it looked."""
    env = os.environ if env is None else env
    if path is not None and str(path):
        return Path(path).expanduser()
    from_env = env.get(CONFIG_ENV_VAR, "")
    if from_env:
        return Path(from_env).expanduser()
    if DEFAULT_CONFIG_PATH.is_file():
        return DEFAULT_CONFIG_PATH
    raise ConfigError(
        "",
        f"no cluster file: no path was given (-c PATH), {CONFIG_ENV_VAR} is not set, and "
        f"{Path.cwd() / DEFAULT_CONFIG_PATH} does not exist",
    )


def load_config(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> ClusterConfig:
    """Read, expand, validate and build the cluster file; ConfigError on any problem."""
    env = os.environ if env is None else env
    file = resolve_config_path(path, env=env)
    return build_config(parse_document(_read_text(file, env), env, str(file)))


def config_from_mapping(
    data: Mapping[str, object],
    *,
    env: Mapping[str, str] | None = None,
    source: str | None = None,
) -> ClusterConfig:
    """Build a ClusterConfig from already-parsed data (code, tests), with the file's rules.

    ``${VAR}`` in strings is expanded from ``env`` (default ``os.environ``); errors carry the
    key path but no line.
    """
    env = os.environ if env is None else env
    plain = _plain(data, "", env, source)
    return build_config(Document(data=plain, lines={}, file=source))


def default_config() -> ClusterConfig:
    """The single-host embedded default: everything on loopback, one local agent."""
    return config_from_mapping(
        {
            "cluster": {"name": "local"},
            "agents": {"hosts": [{"name": "local", "address": "127.0.0.1"}]},
        },
        env={},
    )


def _read_text(file: Path, env: Mapping[str, str]) -> str:
    origin = f" (from {CONFIG_ENV_VAR})" if env.get(CONFIG_ENV_VAR) == str(file) else ""
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        reason = f"cannot read {file}{origin}: no such file"
    except IsADirectoryError:
        reason = f"cannot read {file}{origin}: it is a directory"
    except UnicodeDecodeError as exc:
        reason = f"cannot read {file}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except OSError as exc:
        reason = f"cannot read {file}{origin}: {exc.strerror or exc}"
    raise ConfigError("", reason, file=str(file))


def _plain(value: object, path: str, env: Mapping[str, str], source: str | None) -> object:
    """Mappings -> dict, lists/tuples -> list, paths -> str, strings ``${}``-expanded."""
    if isinstance(value, Mapping):
        return {k: _plain(v, join(path, k), env, source) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, join(path, i), env, source) for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        try:
            return expand(value, env)
        except ValueError as exc:
            raise ConfigError(path, str(exc), file=source) from exc
    return value
