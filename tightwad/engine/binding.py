"""The only module that touches llama.cpp: a thin, synchronous wrapper over its C API.

It owns one model and one context (a unified KV cache shared by many sequences) and exposes
exactly what the engine needs: tokenize / detokenize / token pieces, decode a batch with chosen
output rows, read a row of logits as numpy, and remove or copy KV cells of a sequence.

Not thread-safe: every call must come from the engine's single worker thread. Errors of the C
layer are translated here into :mod:`tightwad.errors` (a user-facing message, never a crash).
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tightwad.errors import ModelLoadError, OverloadedError, UnavailableError

try:
    import llama_cpp as _ll
except ImportError as _exc:  # pragma: no cover - exercised only on a broken install
    _ll = None
    _IMPORT_ERROR: Exception | None = _exc
else:
    _IMPORT_ERROR = None

__all__ = ["LlamaLoadParams", "LlamaModel", "llama_version"]

_GGUF_MAGIC = b"GGUF"
_backend_ready = False


def _lib() -> object:
    if _ll is None:
        raise UnavailableError(
            "llama-cpp-python is not installed; run scripts/build_llama.sh and pip install "
            f"the wheel it builds ({_IMPORT_ERROR})"
        )
    return _ll


def llama_version() -> str:
    _lib()
    return str(getattr(_ll, "__version__", "unknown"))


@dataclass(frozen=True, slots=True)
class LlamaLoadParams:
    """How to load a model: one context of ``n_ctx`` cells shared by ``n_seq_max`` sequences."""

    path: Path
    n_ctx: int = 4096
    n_threads: int = 0
    n_gpu_layers: int = 0
    flash_attn: bool = False
    n_seq_max: int = 8
    n_batch: int = 512
    tensor_split: tuple[float, ...] = ()
    # Devices in order, as ggml names them ("CUDA0", "Vulkan1") or "RPC[host:port]" for a
    # ggml-rpc-server; empty = llama.cpp's default devices. The CPU is implicit: layers beyond
    # n_gpu_layers stay on it.
    devices: tuple[str, ...] = ()


def _check_gguf(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    with path.open("rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[:4] != _GGUF_MAGIC:
        raise ModelLoadError(f"not a GGUF file (bad magic {head[:4]!r}): {path}")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in (2, 3):
        raise ModelLoadError(f"unsupported GGUF version {version}: {path}")


def _ensure_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        ll = _lib()
        ll.llama_backend_init()  # type: ignore[attr-defined]
        if os.environ.get("TIGHTWAD_LLAMA_LOG", "") != "1":
            ll.llama_log_set(_silent_log, ctypes.c_void_p(0))  # type: ignore[attr-defined]
        _backend_ready = True


if _ll is not None:

    @_ll.llama_log_callback  # type: ignore[misc]
    def _silent_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        return None

else:  # pragma: no cover
    _silent_log = None


_ggml_libs: dict[str, ctypes.CDLL] = {}


def _ggml(name: str) -> ctypes.CDLL:
    """One of the ggml shared libraries shipped inside llama-cpp-python's wheel."""
    if name not in _ggml_libs:
        lib_dir = Path(_lib().__file__).parent / "lib"  # type: ignore[attr-defined]
        _ggml_libs[name] = ctypes.CDLL(str(lib_dir / f"lib{name}.so"))
    return _ggml_libs[name]


def _device_array(names: Sequence[str]) -> ctypes.Array[ctypes.c_void_p]:
    """A NULL-terminated ``ggml_backend_dev_t[]`` for the model params' ``devices``.

    RPC endpoints are added with ``ggml_backend_rpc_add_server`` but not registered globally, so
    a later model loaded without an explicit list never picks them up by accident. Callers must
    probe endpoints first: llama.cpp aborts the process when an endpoint does not answer.
    """
    base = _ggml("ggml-base")
    base.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    base.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    base.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    ggml = _ggml("ggml")
    ggml.ggml_backend_dev_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_name.argtypes = [ctypes.c_char_p]
    found: list[int] = []
    for name in names:
        if name.startswith("RPC[") and name.endswith("]"):
            rpc = _ggml("ggml-rpc")
            rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
            rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
            reg = rpc.ggml_backend_rpc_add_server(name[4:-1].encode())
            if not reg:
                raise ModelLoadError(f"the RPC server {name[4:-1]} reports no devices")
            for i in range(base.ggml_backend_reg_dev_count(reg)):
                found.append(base.ggml_backend_reg_dev_get(reg, i))
        else:
            dev = ggml.ggml_backend_dev_by_name(name.encode())
            if not dev:
                raise ModelLoadError(f"ggml has no device named {name!r} on this host")
            found.append(dev)
    arr = (ctypes.c_void_p * (len(found) + 1))(*found, None)
    return arr


class LlamaModel:
    """One loaded model and its context. Close with :meth:`close`."""

    def __init__(
        self, params: LlamaLoadParams, progress: Callable[[float], None] | None = None
    ) -> None:
        _check_gguf(params.path)
        ll = _lib()
        _ensure_backend()
        self.params = params
        mparams = ll.llama_model_default_params()  # type: ignore[attr-defined]
        mparams.n_gpu_layers = params.n_gpu_layers
        if params.devices:
            self._devices_keepalive = _device_array(params.devices)
            mparams.devices = ctypes.cast(self._devices_keepalive, ctypes.c_void_p)
        if params.tensor_split:
            arr = (ctypes.c_float * len(params.tensor_split))(*params.tensor_split)
            self._split_keepalive = arr
            mparams.tensor_split = arr
        if progress is not None:

            def _cb(fraction: float, _user: ctypes.c_void_p) -> bool:
                progress(float(fraction))
                return True

            self._progress_cb = ll.llama_progress_callback(_cb)  # type: ignore[attr-defined]
            mparams.progress_callback = self._progress_cb
        model = ll.llama_model_load_from_file(str(params.path).encode(), mparams)  # type: ignore[attr-defined]
        if not model:
            raise ModelLoadError(
                f"llama.cpp could not load {params.path}: unsupported architecture, corrupt "
                "file, or not enough memory (set TIGHTWAD_LLAMA_LOG=1 for llama.cpp's log)"
            )
        self._model = model
        self._vocab = ll.llama_model_get_vocab(model)  # type: ignore[attr-defined]
        cparams = ll.llama_context_default_params()  # type: ignore[attr-defined]
        cparams.n_ctx = params.n_ctx
        cparams.n_batch = max(params.n_batch, 1)
        cparams.n_ubatch = max(params.n_batch, 1)
        cparams.n_seq_max = params.n_seq_max
        threads = params.n_threads or max(1, os.cpu_count() or 1)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = True
        cparams.no_perf = True
        cparams.flash_attn_type = (
            ll.LLAMA_FLASH_ATTN_TYPE_ENABLED  # type: ignore[attr-defined]
            if params.flash_attn
            else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED  # type: ignore[attr-defined]
        )
        ctx = ll.llama_init_from_model(model, cparams)  # type: ignore[attr-defined]
        if not ctx:
            ll.llama_model_free(model)  # type: ignore[attr-defined]
            raise ModelLoadError(
                f"could not create a context of {params.n_ctx} tokens for {params.path}: "
                "context too large for memory? lower ctx_size or max_sessions"
            )
        self._ctx = ctx
        self._mem = ll.llama_get_memory(ctx)  # type: ignore[attr-defined]
        self.n_threads = threads
        self.n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))  # type: ignore[attr-defined]
        self.n_ctx = int(ll.llama_n_ctx(ctx))  # type: ignore[attr-defined]
        self.n_ctx_train = int(ll.llama_model_n_ctx_train(model))  # type: ignore[attr-defined]
        self.n_layer = int(ll.llama_model_n_layer(model))  # type: ignore[attr-defined]
        self.bos = int(ll.llama_vocab_bos(self._vocab))  # type: ignore[attr-defined]
        self.eos = int(ll.llama_vocab_eos(self._vocab))  # type: ignore[attr-defined]
        self.eog = frozenset(
            t
            for t in range(self.n_vocab)
            if ll.llama_vocab_is_eog(self._vocab, t)  # type: ignore[attr-defined]
        )
        self._batch = ll.llama_batch_init(max(params.n_batch, 1), 0, 1)  # type: ignore[attr-defined]
        self._batch_cap = max(params.n_batch, 1)
        self._closed = False

    # -- metadata -----------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        ll = _lib()
        buf = ctypes.create_string_buffer(1 << 16)
        n = ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))  # type: ignore[attr-defined]
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))  # type: ignore[attr-defined]
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        ll = _lib()
        raw = ll.llama_model_chat_template(self._model, None)  # type: ignore[attr-defined]
        return raw.decode("utf-8", errors="replace") if raw else None

    def description(self) -> str:
        ll = _lib()
        buf = ctypes.create_string_buffer(256)
        ll.llama_model_desc(self._model, buf, len(buf))  # type: ignore[attr-defined]
        return buf.value.decode("utf-8", errors="replace")

    def model_size(self) -> int:
        return int(_lib().llama_model_size(self._model))  # type: ignore[attr-defined]

    # -- tokens -------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        ll = _lib()
        raw = text.encode("utf-8")
        cap = len(raw) + 16
        buf = (ctypes.c_int32 * cap)()
        n = ll.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, parse_special)  # type: ignore[attr-defined]
        if n < 0:
            cap = -n
            buf = (ctypes.c_int32 * cap)()
            n = ll.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, parse_special)  # type: ignore[attr-defined]
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        ll = _lib()
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)  # type: ignore[attr-defined]
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)  # type: ignore[attr-defined]
        return buf.raw[:n]

    def detokenize(self, tokens: Sequence[int], *, render_special: bool) -> bytes:
        ll = _lib()
        arr = (ctypes.c_int32 * max(len(tokens), 1))(*tokens)
        cap = max(64, len(tokens) * 16)
        buf = ctypes.create_string_buffer(cap)
        n = ll.llama_detokenize(self._vocab, arr, len(tokens), buf, cap, False, render_special)  # type: ignore[attr-defined]
        if n < 0:
            cap = -n
            buf = ctypes.create_string_buffer(cap)
            n = ll.llama_detokenize(self._vocab, arr, len(tokens), buf, cap, False, render_special)  # type: ignore[attr-defined]
        return buf.raw[:n]

    def is_control(self, token: int) -> bool:
        return bool(_lib().llama_vocab_is_control(self._vocab, token))  # type: ignore[attr-defined]

    def add_bos(self) -> bool:
        return bool(_lib().llama_vocab_get_add_bos(self._vocab))  # type: ignore[attr-defined]

    def token_text(self, token: int) -> bytes:
        raw = _lib().llama_vocab_get_text(self._vocab, token)  # type: ignore[attr-defined]
        return bytes(raw or b"")

    # -- decoding -----------------------------------------------------------------------

    def decode(
        self, seq_id: int, tokens: Sequence[int], start_pos: int, outputs: Sequence[int]
    ) -> None:
        """Decode ``tokens`` at positions ``start_pos..`` of ``seq_id``; rows in ``outputs``
        (indices into ``tokens``) get logits. Splits into chunks of the batch capacity."""
        ll = _lib()
        if not tokens:
            return
        want = set(outputs)
        for chunk_start in range(0, len(tokens), self._batch_cap):
            chunk = tokens[chunk_start : chunk_start + self._batch_cap]
            b = self._batch
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = start_pos + chunk_start + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq_id
                b.logits[i] = 1 if (chunk_start + i) in want else 0
            b.n_tokens = len(chunk)
            rc = ll.llama_decode(self._ctx, b)  # type: ignore[attr-defined]
            if rc == 1:
                raise OverloadedError(
                    "the engine's KV cache is full (too many or too long sessions); "
                    "retry later or raise ctx_size"
                )
            if rc != 0:
                raise UnavailableError(f"llama_decode failed with code {rc}")
        self._last_offset = len(tokens) - len(chunk)

    def decode_many(self, parts: Sequence[tuple[int, Sequence[int], int, Sequence[int]]]) -> None:
        """One ``llama_decode`` over several sequences: each part is (seq_id, tokens, start_pos,
        outputs) as in :meth:`decode`; the parts lie back to back in the batch, so the rows of
        a part whose tokens start at batch index ``o`` are ``logits_row(o + i)``. All tokens
        must fit in one batch (``batch_capacity``)."""
        ll = _lib()
        total = sum(len(p[1]) for p in parts)
        if total > self._batch_cap:
            raise ValueError(f"{total} tokens exceed the batch capacity {self._batch_cap}")
        if total == 0:
            return
        b = self._batch
        j = 0
        for seq_id, tokens, start_pos, outputs in parts:
            want = set(outputs)
            for i, tok in enumerate(tokens):
                b.token[j] = tok
                b.pos[j] = start_pos + i
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = seq_id
                b.logits[j] = 1 if i in want else 0
                j += 1
        b.n_tokens = total
        rc = ll.llama_decode(self._ctx, b)  # type: ignore[attr-defined]
        self._last_offset = 0
        if rc == 1:
            raise OverloadedError(
                "the engine's KV cache is full (too many or too long sessions); "
                "retry later or raise ctx_size"
            )
        if rc != 0:
            raise UnavailableError(f"llama_decode failed with code {rc}")

    @property
    def batch_capacity(self) -> int:
        return self._batch_cap

    def logits_row(self, index: int) -> NDArray[np.float32]:
        """Logits of output row ``index`` (index into the tokens of the *last* decode call;
        only rows of its final chunk are available)."""
        ll = _lib()
        local = index - self._last_offset
        ptr = ll.llama_get_logits_ith(self._ctx, local)  # type: ignore[attr-defined]
        if not ptr:
            raise UnavailableError(f"no logits for row {index}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def argmax_row(self, index: int) -> int:
        """The argmax of output row ``index``'s logits, read in place (no copy)."""
        ll = _lib()
        ptr = ll.llama_get_logits_ith(self._ctx, index - self._last_offset)  # type: ignore[attr-defined]
        if not ptr:
            raise UnavailableError(f"no logits for row {index}")
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))

    # -- KV cache -----------------------------------------------------------------------

    def seq_rm(self, seq_id: int, p0: int, p1: int = -1) -> None:
        ok = _lib().llama_memory_seq_rm(self._mem, seq_id, p0, p1)  # type: ignore[attr-defined]
        if not ok:
            raise UnavailableError(f"could not trim KV cache of sequence {seq_id} at {p0}")

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        _lib().llama_memory_seq_cp(self._mem, src, dst, p0, p1)  # type: ignore[attr-defined]

    def seq_pos_max(self, seq_id: int) -> int:
        return int(_lib().llama_memory_seq_pos_max(self._mem, seq_id))  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._closed:
            return
        ll = _lib()
        self._closed = True
        ll.llama_batch_free(self._batch)  # type: ignore[attr-defined]
        ll.llama_free(self._ctx)  # type: ignore[attr-defined]
        ll.llama_model_free(self._model)  # type: ignore[attr-defined]
