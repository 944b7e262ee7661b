"""Malformed or truncated GGUF files and cluster files never crash an agent or the controller.

- ``read_model_facts`` over SmolLM2's real header, mutated (hypothesis) or truncated: valid
  facts or :class:`ModelLoadError`, never another exception. The fuzzed files are the first
  2 MB of the real model (the whole header) extended sparsely to the real size, so that intact
  headers still produce facts.
- The embedded engine loading a truncated GGUF, in a subprocess: ``ModelLoadError`` with a
  clear message and a clean exit, not a crash (no signal, no abort).
- Cluster files: mutations of ``configs/tightwad.example.yaml`` and hostile YAML (tags, alias
  bombs, self-references, binary junk): :class:`ConfigError` or a config, nothing else.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tightwad.config import load_config
from tightwad.engine.model_facts import read_model_facts
from tightwad.errors import ConfigError, ModelLoadError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "tightwad.example.yaml"
HEAD = 2 * 1024 * 1024
FUZZ = settings(
    deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def gguf_head(smollm_path: Path) -> tuple[bytes, int]:
    with smollm_path.open("rb") as fh:
        return fh.read(HEAD), smollm_path.stat().st_size


def _write(path: Path, head: bytes, size: int) -> Path:
    with path.open("wb") as fh:
        fh.write(head)
        fh.truncate(max(size, len(head)))  # sparse: no disk for the tensor data
    return path


def test_intact_head_gives_facts(gguf_head: tuple[bytes, int], tmp_path: Path) -> None:
    head, size = gguf_head
    facts = read_model_facts(_write(tmp_path / "m.gguf", head, size))
    assert facts.n_layers == 30 and facts.n_vocab > 0


@pytest.mark.parametrize("length", [0, 3, 4, 8, 23, 24, 100, 4096, 65_536, 1_000_000, HEAD])
def test_truncated_files_are_model_load_errors(
    gguf_head: tuple[bytes, int], tmp_path: Path, length: int
) -> None:
    path = tmp_path / "t.gguf"
    path.write_bytes(gguf_head[0][:length])
    with pytest.raises(ModelLoadError) as info:
        read_model_facts(path)
    assert str(path) in info.value.message


mutation = st.tuples(
    # Mostly in the first 64 KiB (magic, counts, key/value types and lengths), some anywhere.
    st.one_of(st.integers(0, 65_535), st.integers(0, HEAD - 1)),
    st.one_of(
        st.binary(min_size=1, max_size=8),
        st.sampled_from(
            [
                b"\xff" * 8,
                b"\x00" * 8,
                struct.pack("<Q", 2**63),
                struct.pack("<I", 2**31),
                struct.pack("<I", 12),  # an unknown value type
                struct.pack("<I", 9),  # ARRAY
            ]
        ),
    ),
)


@settings(FUZZ, max_examples=400)
@given(
    mutations=st.lists(mutation, min_size=1, max_size=6),
    cut=st.none() | st.integers(24, HEAD),
)
def test_mutated_headers_never_raise_anything_else(
    gguf_head: tuple[bytes, int], tmp_path: Path, mutations: list[tuple[int, bytes]], cut: int
) -> None:
    head, size = gguf_head
    data = bytearray(head)
    for offset, patch in mutations:
        data[offset : offset + len(patch)] = patch
    data = data[:HEAD]
    if cut is not None:
        data, size = data[:cut], cut
    path = _write(tmp_path / "fuzz.gguf", bytes(data), size)
    try:
        facts = read_model_facts(path)
    except ModelLoadError as exc:
        assert exc.message
    else:
        assert facts.n_layers >= 0


@pytest.mark.engine
def test_engine_refuses_a_truncated_gguf_without_crashing(
    gguf_head: tuple[bytes, int], tmp_path: Path
) -> None:
    path = tmp_path / "truncated.gguf"
    path.write_bytes(gguf_head[0])
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from tightwad.engine.engine_config import EngineConfig
        from tightwad.engine.llama_engine import Engine
        from tightwad.errors import ModelLoadError
        cfg = EngineConfig(model_id="t", path={str(path)!r}, ctx_size=256, max_sessions=1,
                           threads=1)
        try:
            asyncio.run(Engine.load(cfg))
        except ModelLoadError as exc:
            print("MODEL_LOAD_ERROR", exc.message)
            sys.exit(3)
        print("LOADED")
        """
    )
    proc = asyncio.run(_run(script))
    code, out = proc
    assert code == 3, (code, out[-2000:])
    assert "MODEL_LOAD_ERROR" in out


async def _run(script: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


# --- cluster files -------------------------------------------------------------------------


def _load_text(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "cluster.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path, env={})
    except ConfigError as exc:
        assert str(exc)


# Deep nesting (RecursionError) and control characters (ReaderError outside the try) were bugs
# this fuzzer found; both now give a ConfigError.
HOSTILE_YAML = [
    "",
    "---\n...\n",
    "[1, 2",
    "cluster: !!python/object/apply:os.system ['true']\n",
    "cluster: &a [*a]\n",
    "a: &a ['x','x']\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c]\ncluster: {name: [*d,*d,*d,*d,*d,*d,*d,*d]}\n",
    "cluster:\n\tname: tab\n",
    "cluster: {name: x}\ncluster: {name: y}\n",
    "? [complex, key]\n: value\n",
    "cluster:\n  name: " + "a" * 100_000 + "\n",
    "gateway:\n  port: 99999999999999999999999\n",
    "gateway:\n  port: .nan\n",
    "models: " + "[" * 5000 + "]" * 5000 + "\n",
    "models: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n",
    "cluster:\n  token: ${UNSET_VARIABLE}\n",
    "cluster:\n  token: ${" + "A" * 10_000 + "}\n",
    "\ufeffcluster: {name: bom}\n",
    'cluster: {name: "\\ud800"}\n',
    "routes: 7\n",
    "agents: {hosts: [{name: a, address: 'not an address', port: -1}]}\n",
]


@pytest.mark.parametrize("text", HOSTILE_YAML, ids=range(len(HOSTILE_YAML)))
def test_hostile_yaml(tmp_path: Path, text: str) -> None:
    _load_text(tmp_path, text)


@pytest.mark.parametrize(
    "blob",
    [
        b"\xff\xfe\x00\x01",
        b"cluster: \xc3\x28\n",
        b"\x00" * 64,
        b"cluster: {name: a\x1fb}\n",
    ],
)
def test_binary_junk(tmp_path: Path, blob: bytes) -> None:
    _load_text(tmp_path, blob)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


EXAMPLE_DATA = yaml.safe_load(EXAMPLE.read_text()) if EXAMPLE.exists() else {}
EXAMPLE_PATHS = _paths(EXAMPLE_DATA)[1:] or [("cluster",)]
yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["127.0.0.1", "grpc://h:1", "http://x", "0.0.0.0", "-1", "${X}", "1e9"]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=6,
)


@settings(FUZZ, max_examples=300)
@given(
    edits=st.lists(st.tuples(st.sampled_from(EXAMPLE_PATHS), yaml_values), max_size=4),
    drops=st.lists(st.sampled_from(EXAMPLE_PATHS), max_size=2),
)
def test_mutated_example_config(
    tmp_path: Path, edits: list[tuple[tuple[Any, ...], Any]], drops: list[tuple[Any, ...]]
) -> None:
    import copy

    data = copy.deepcopy(EXAMPLE_DATA)
    for path, value in edits:
        _set(data, path, value)
    for path in drops:
        _set(data, path, None, drop=True)
    _load_text(tmp_path, yaml.safe_dump(data, allow_unicode=True))


def _set(data: Any, path: tuple[Any, ...], value: Any, *, drop: bool = False) -> None:
    node = data
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return
    try:
        if drop:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        return


@settings(FUZZ, max_examples=200)
@given(
    # Printable text only: control characters are the known ReaderError (test_binary_junk).
    text=st.text(
        st.characters(blacklist_categories=("Cc", "Cs"), whitelist_characters="\n\t\r"),
        max_size=300,
    )
)
def test_random_text_config(tmp_path: Path, text: str) -> None:
    _load_text(tmp_path, text)


def test_example_config_loads(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "cluster.yaml")
    load_config(tmp_path / "cluster.yaml", env={"TIGHTWAD_TOKEN": "t", "TIGHTWAD_API_KEY": "k"})
