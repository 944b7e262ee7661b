"""Facts about GGUF model files, read from their headers: what placement and pairing need.

``read_model_facts`` returns layer count, per-layer tensor bytes, embedding and output bytes,
KV-cache bytes per token (f16), the quantisation, and a vocabulary fingerprint (sha256 over the
token list, token types and BOS/EOS ids: two files with the same tokenizer share it, so a
draft/target pair can be checked without loading either model).

Speed: ``gguf.GGUFReader`` builds a numpy view per array element, which costs ~9 s on a
Qwen2.5 file (150k tokens + 150k merges). We walk the header ourselves over an ``mmap`` (well
under a second, no tensor data touched) and use the ``gguf`` package for its constants
(value types, quantisation block sizes, file-type names).

Errors: a missing, foreign or truncated file raises ``ModelLoadError`` with a reason a user can
act on; ``scan_model_dirs`` turns those into error entries and never raises for a bad file.
Split models (``name-00001-of-00003.gguf``) are read as one model from their first shard.
"""

from __future__ import annotations

import hashlib
import mmap
import re
import struct
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from tightwad.errors import ModelLoadError

__all__ = [
    "ModelFacts",
    "ModelFileError",
    "read_model_facts",
    "scan_model_dirs",
    "sha256_file",
]

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_SMALL_ARRAY = 64
_SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_SCALARS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What a GGUF header says about a model. Sizes in bytes; ``layer_bytes[i]`` = ``blk.i.*``.

    ``output_bytes`` includes ``token_embd`` when the model ties its embeddings (no
    ``output.weight``): llama.cpp then places a copy of it with the output layer.
    ``other_bytes`` counts tensors outside layers, embedding and output (e.g. ``rope_freqs``).
    """

    path: str
    size_bytes: int
    architecture: str
    name: str
    n_layers: int
    context_length: int
    embedding_length: int
    n_head: int
    n_head_kv: int
    layer_bytes: tuple[int, ...]
    embedding_bytes: int
    output_bytes: int
    kv_bytes_per_token: int
    quantization: str
    n_vocab: int
    vocab_fingerprint: str
    tied_embeddings: bool = False
    other_bytes: int = 0
    sha256: str = ""

    @property
    def tensor_bytes(self) -> int:
        """Bytes of all tensor data, counting a tied embedding once."""
        tied = self.embedding_bytes if self.tied_embeddings else 0
        total = sum(self.layer_bytes) + self.embedding_bytes + self.output_bytes
        return total + self.other_bytes - tied


@dataclass(frozen=True, slots=True)
class ModelFileError:
    """A ``*.gguf`` file that could not be read, and why."""

    path: str
    reason: str


class _Truncated(Exception):
    pass


@dataclass(slots=True)
class _Array:
    """An array value too large to materialise: where its payload lies, and its element type."""

    elem_type: GGUFValueType
    count: int
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class _Tensor:
    name: str
    ggml_type: int
    n_elements: int
    offset: int


@dataclass(slots=True)
class _Header:
    fields: dict[str, Any] = field(default_factory=dict)
    tensors: list[_Tensor] = field(default_factory=list)
    data_start: int = 0
    size: int = 0
    sizes: dict[str, int] = field(default_factory=dict)


class _Cursor:
    """Little-endian reads over a buffer; reading past its end raises ``_Truncated``."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise _Truncated
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.unpack("<Q"))).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        buf, pos, end = self.buf, self.pos, len(self.buf)
        for _ in range(count):
            if pos + 8 > end:
                raise _Truncated
            pos += 8 + int.from_bytes(buf[pos : pos + 8], "little")
        if pos > end:
            raise _Truncated
        self.pos = pos


def _value(cur: _Cursor, vtype: GGUFValueType, keep_raw: bool) -> Any:
    if vtype in _SCALARS:
        return cur.unpack(_SCALARS[vtype])
    if vtype == GGUFValueType.STRING:
        return cur.string()
    if vtype == GGUFValueType.ARRAY:
        return _array(cur, keep_raw)
    raise ValueError(f"unknown GGUF value type {int(vtype)}")


def _array(cur: _Cursor, keep_raw: bool) -> Any:
    elem_type = GGUFValueType(cur.unpack("<I"))
    count = cur.unpack("<Q")
    if count <= _SMALL_ARRAY and elem_type != GGUFValueType.ARRAY:
        return [_value(cur, elem_type, False) for _ in range(count)]
    start = cur.pos
    if elem_type in _SCALARS:
        cur.take(count * struct.calcsize(_SCALARS[elem_type]))
    elif elem_type == GGUFValueType.STRING:
        cur.skip_strings(count)
    else:
        raise ValueError(f"nested GGUF arrays of type {int(elem_type)} are not supported")
    raw = bytes(cur.buf[start : cur.pos]) if keep_raw else b""
    return _Array(elem_type, count, raw)


_RAW_KEYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.token_type"})


def _parse_header(buf: memoryview) -> _Header:
    cur = _Cursor(buf)
    magic = bytes(cur.take(4))
    if magic != _MAGIC:
        raise ValueError(f"not a GGUF file (starts with {magic!r}, expected {_MAGIC!r})")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    header = _Header(size=len(buf))
    for _ in range(n_kv):
        key = cur.string()
        header.fields[key] = _value(cur, GGUFValueType(cur.unpack("<I")), key in _RAW_KEYS)
    for _ in range(n_tensors):
        header.tensors.append(_tensor_info(cur))
    alignment = int(header.fields.get("general.alignment", _DEFAULT_ALIGNMENT)) or 1
    header.data_start = -(-cur.pos // alignment) * alignment
    return header


def _tensor_info(cur: _Cursor) -> _Tensor:
    name = cur.string()
    n_dims = cur.unpack("<I")
    n_elements = 1
    for _ in range(n_dims):
        n_elements *= cur.unpack("<Q")
    return _Tensor(name, cur.unpack("<I"), n_elements, cur.unpack("<Q"))


def _tensor_sizes(header: _Header) -> dict[str, int]:
    """Bytes of each tensor: exact from the quant block size, else from the next offset."""
    ordered = sorted(header.tensors, key=lambda t: t.offset)
    sizes: dict[str, int] = {}
    for pos, tensor in enumerate(ordered):
        block = GGML_QUANT_SIZES.get(_quant_type(tensor.ggml_type))  # type: ignore[arg-type]
        if block is not None:
            sizes[tensor.name] = tensor.n_elements // block[0] * block[1]
        else:
            end = ordered[pos + 1].offset if pos + 1 < len(ordered) else None
            data_len = header.size - header.data_start
            sizes[tensor.name] = (end if end is not None else data_len) - tensor.offset
        if header.data_start + tensor.offset + sizes[tensor.name] > header.size:
            raise _Truncated
    return sizes


def _quant_type(value: int) -> GGMLQuantizationType | None:
    try:
        return GGMLQuantizationType(value)
    except ValueError:
        return None


def _load(path: Path) -> _Header:
    """Parse one file's header over an mmap, translating every failure to ``ModelLoadError``."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size < 24:
        raise ModelLoadError(_short(path, size))
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                header = _parse_header(view)
                header.sizes = _tensor_sizes(header)
            finally:
                view.release()
    except _Truncated:
        raise ModelLoadError(_short(path, size)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return header


def _short(path: Path, size: int) -> str:
    return (
        f"{path}: truncated or not a GGUF file ({size} bytes; its header or tensor data "
        "ends early). Re-download or re-convert it"
    )


def _shards(path: Path, header: _Header) -> list[Path]:
    """All files of a split model, first shard first; ``[path]`` for a single file."""
    count = int(header.fields.get("split.count", 1) or 1)
    if count <= 1:
        return [path]
    if int(header.fields.get("split.no", 0)) != 0:
        raise ModelLoadError(f"{path}: shard of a split model; open its first shard (-00001-)")
    match = _SPLIT_NAME.match(path.name)
    if match is None:
        raise ModelLoadError(f"{path}: split model whose name does not end -00001-of-NNNNN.gguf")
    stem = match.group("stem")
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def read_model_facts(path: Path | str) -> ModelFacts:
    """Read a GGUF file's header (all shards of a split model) into ``ModelFacts``."""
    path = Path(path)
    header = _load(path)
    shards = _shards(path, header)
    sizes = dict(header.sizes)
    types = {t.name: t.ggml_type for t in header.tensors}
    for shard in shards[1:]:
        other = _load(shard)
        sizes.update(other.sizes)
        types.update({t.name: t.ggml_type for t in other.tensors})
    total_size = sum(p.stat().st_size for p in shards)
    return _facts(path, total_size, header.fields, sizes, types)


def _facts(
    path: Path, size: int, fields: dict[str, Any], sizes: dict[str, int], types: dict[str, int]
) -> ModelFacts:
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelLoadError(f"{path}: GGUF without general.architecture; not a model file")
    n_layers = int(fields.get(f"{arch}.block_count", 0))
    groups = _group_bytes(sizes, n_layers)
    tied = "output.weight" not in sizes and "token_embd.weight" in sizes
    output = groups.output + (sizes["token_embd.weight"] if tied else 0)
    n_head = _first_int(fields.get(f"{arch}.attention.head_count"))
    n_head_kv = fields.get(f"{arch}.attention.head_count_kv", n_head)
    return ModelFacts(
        path=str(path),
        size_bytes=size,
        architecture=arch,
        name=str(fields.get("general.name") or path.stem),
        n_layers=n_layers,
        context_length=int(fields.get(f"{arch}.context_length", 0)),
        embedding_length=int(fields.get(f"{arch}.embedding_length", 0)),
        n_head=n_head,
        n_head_kv=_first_int(n_head_kv),
        layer_bytes=tuple(groups.layers),
        embedding_bytes=groups.embedding,
        output_bytes=output,
        kv_bytes_per_token=_kv_bytes_per_token(fields, arch, n_layers, n_head, n_head_kv),
        quantization=_quantization(fields, sizes, types),
        n_vocab=_n_vocab(fields, arch),
        vocab_fingerprint=_vocab_fingerprint(fields),
        tied_embeddings=tied,
        other_bytes=groups.other,
    )


@dataclass(slots=True)
class _Groups:
    layers: list[int]
    embedding: int = 0
    output: int = 0
    other: int = 0


def _group_bytes(sizes: dict[str, int], n_layers: int) -> _Groups:
    groups = _Groups(layers=[0] * n_layers)
    for name, nbytes in sizes.items():
        head, _, rest = name.partition(".")
        if head == "blk":
            index = int(rest.partition(".")[0])
            if index >= len(groups.layers):
                groups.layers.extend([0] * (index + 1 - len(groups.layers)))
            groups.layers[index] += nbytes
        elif head in ("token_embd", "token_embd_norm", "position_embd", "token_types"):
            groups.embedding += nbytes
        elif head in ("output", "output_norm"):
            groups.output += nbytes
        else:
            groups.other += nbytes
    return groups


def _first_int(value: Any) -> int:
    """A per-model int, or the first of a per-layer list of ints."""
    if isinstance(value, list):
        return int(value[0]) if value else 0
    return int(value or 0)


def _per_layer(value: Any, n_layers: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value][:n_layers]
    return [int(value or 0)] * n_layers


def _kv_bytes_per_token(
    fields: dict[str, Any], arch: str, n_layers: int, n_head: int, n_head_kv: Any
) -> int:
    """f16 K and V for one token over all layers: sum of (k_len + v_len) * n_head_kv * 2."""
    embd = int(fields.get(f"{arch}.embedding_length", 0))
    head_dim = embd // n_head if n_head else 0
    key_len = int(fields.get(f"{arch}.attention.key_length", head_dim))
    value_len = int(fields.get(f"{arch}.attention.value_length", head_dim))
    return sum((key_len + value_len) * kv * 2 for kv in _per_layer(n_head_kv, n_layers))


def _quantization(fields: dict[str, Any], sizes: dict[str, int], types: dict[str, int]) -> str:
    """``general.file_type`` by name (``Q4_K_M``), else the tensor type with the most bytes."""
    file_type = fields.get("general.file_type")
    if isinstance(file_type, int):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    by_type: dict[int, int] = defaultdict(int)
    for name, nbytes in sizes.items():
        by_type[types[name]] += nbytes
    if not by_type:
        return ""
    dominant = max(by_type, key=lambda t: by_type[t])
    quant = _quant_type(dominant)
    return quant.name if quant is not None else f"type{dominant}"


def _n_vocab(fields: dict[str, Any], arch: str) -> int:
    tokens = fields.get("tokenizer.ggml.tokens")
    if isinstance(tokens, _Array):
        return tokens.count
    if isinstance(tokens, list):
        return len(tokens)
    return int(fields.get(f"{arch}.vocab_size", 0))


def _vocab_fingerprint(fields: dict[str, Any]) -> str:
    """sha256 over the token list, token types and BOS/EOS ids, in GGUF's own byte layout."""
    digest = hashlib.sha256(b"tightwad-vocab-v1\0")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        digest.update(_canonical(fields.get(key)))
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        value = fields.get(key)
        digest.update(struct.pack("<q", int(value) if isinstance(value, int) else -1))
    return digest.hexdigest()


def _canonical(value: Any) -> bytes:
    if isinstance(value, _Array):
        return struct.pack("<Q", value.count) + value.raw
    if isinstance(value, list):  # a tiny vocabulary: re-encode as GGUF lays it out
        out = [struct.pack("<Q", len(value))]
        for item in value:
            data = item.encode("utf-8") if isinstance(item, str) else struct.pack("<i", item)
            out.append(struct.pack("<Q", len(data)) + data if isinstance(item, str) else data)
        return b"".join(out)
    return struct.pack("<Q", 0)


def sha256_file(path: Path | str, chunk_bytes: int = 1 << 20) -> str:
    """sha256 of a whole file, read in chunks (seconds for a multi-GB model: call off-loop)."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as fh:
            while chunk := fh.read(chunk_bytes):
                digest.update(chunk)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return digest.hexdigest()


def _gguf_files(dirs: Iterable[Path | str]) -> Iterator[Path | ModelFileError]:
    for directory in map(Path, dirs):
        if not directory.is_dir():
            yield ModelFileError(str(directory), "not a directory (or it does not exist)")
            continue
        yield from sorted(p for p in directory.rglob("*.gguf") if p.is_file())


def _is_later_shard(path: Path) -> bool:
    match = _SPLIT_NAME.match(path.name)
    return match is not None and int(match.group("no")) > 1


def scan_model_dirs(
    dirs: Iterable[Path | str],
) -> tuple[list[ModelFacts], list[ModelFileError]]:
    """Facts of every ``*.gguf`` under ``dirs`` (recursively); unreadable files become errors.

    Later shards of a split model are folded into their first shard's entry.
    """
    models: list[ModelFacts] = []
    errors: list[ModelFileError] = []
    for item in _gguf_files(dirs):
        if isinstance(item, ModelFileError):
            errors.append(item)
        elif not _is_later_shard(item):
            try:
                models.append(read_model_facts(item))
            except ModelLoadError as exc:
                errors.append(ModelFileError(str(item), exc.message))
    return models, errors
