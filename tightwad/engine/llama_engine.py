"""The embedded engine: one llama.cpp model serving many sessions, each a KV sequence.

Guarantees:
- Every llama.cpp call of an engine runs on one worker thread, so concurrent sessions are safe;
  sessions interleave at command granularity (FIFO). CPU-only engines of a process share one
  such thread: llama.cpp computes with an OpenMP team per calling thread, and once a process
  has more OpenMP threads than cores (two teams on a 2-core box), libgomp stops spinning
  between steps and every engine decodes ~18% slower (measured: 34.4 -> 40.7 ms per token for
  Qwen2.5-Coder-1.5B on 2 cores). Engines with GPU layers keep a thread of their own, so two
  GPUs of one agent can decode at the same time.
- A session's token list ``tokens`` is the prompt plus everything committed or drafted; all of
  it but the last ("pending") token is in the KV cache (``n_kv == len(tokens) - 1``) between
  commands.
- Verify decodes ``[pending, d1..dk]`` in one batch, runs :func:`tightwad.spec.acceptance.verify`
  on the target's own processed distribution, and trims the KV cache to the accepted prefix.
- Closing a session returns its slot; its KV cells stay as a cached prefix (LRU) that a later
  session with a common prompt prefix reuses (``seq_cp``) instead of recomputing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from tightwad.engine.binding import LlamaLoadParams, LlamaModel, llama_version
from tightwad.engine.chat_template import ChatTemplate
from tightwad.engine.contract import DraftStep, EngineInfo, Message, TokenLogprob, VerifyResult
from tightwad.engine.engine_config import EngineConfig
from tightwad.errors import (
    ContextLengthError,
    InvalidRequestError,
    ModelLoadError,
    OverloadedError,
    UnavailableError,
)
from tightwad.logs import get_logger
from tightwad.spec.acceptance import Outcome, verify
from tightwad.spec.sampling import SamplingConfig, SparseDist, sample, target_distribution

__all__ = [
    "DraftStep",
    "Engine",
    "EngineConfig",
    "EngineInfo",
    "Session",
    "TokenLogprob",
    "VerifyResult",
]

log = get_logger("tightwad.engine")
T = TypeVar("T")

_cpu_thread: ThreadPoolExecutor | None = None


def _cpu_executor() -> ThreadPoolExecutor:
    """The process's one thread for CPU-only engines (see the module docstring)."""
    global _cpu_thread
    if _cpu_thread is None:
        _cpu_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-cpu")
    return _cpu_thread


@dataclass
class _Slot:
    seq_id: int
    live: bool = False
    kv_tokens: list[int] = field(default_factory=list)
    # Leading positions whose KV came from aligned prefill chunks (exactly reusable).
    exact: int = 0
    last_used: float = 0.0


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _log_softmax(logits: NDArray[np.float32]) -> NDArray[np.float64]:
    x = logits.astype(np.float64)
    m = float(x.max())
    return x - (m + math.log(float(np.exp(x - m).sum())))


def _softmax_prob_of(logits: NDArray[np.float32], token: int) -> float:
    m = float(logits.max())
    return float(math.exp(float(logits[token]) - m) / float(np.exp(logits - m).sum()))


def check_tokens(tokens: Sequence[int], n_vocab: int) -> None:
    """Every id must be in the vocabulary (shared by every EngineLike implementation)."""
    for t in tokens:
        if not 0 <= t < n_vocab:
            raise InvalidRequestError(f"token id {t} is outside the vocabulary (0..{n_vocab - 1})")


def check_open(
    prompt: Sequence[int], sampling: SamplingConfig, *, n_vocab: int, ctx_size: int
) -> None:
    """What every engine checks before opening a session: a non-empty prompt of known ids that
    fits the per-request context, and a logit_bias over known ids."""
    if not prompt:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    check_tokens(prompt, n_vocab)
    bad = [t for t in sampling.logit_bias if not 0 <= t < n_vocab]
    if bad:
        raise InvalidRequestError(
            f"logit_bias names token ids outside the vocabulary (0..{n_vocab - 1}): {bad[:5]}",
            param="logit_bias",
        )
    if len(prompt) >= ctx_size:
        raise ContextLengthError(
            f"the prompt has {len(prompt)} tokens; this model's context is "
            f"{ctx_size} tokens per request",
            param="messages",
        )


# The ggml RPC protocol major version of the pinned llama.cpp (ggml-rpc.h); servers of another
# major version cannot serve this engine.
RPC_PROTOCOL_MAJOR = 7


async def _probe_rpc_devices(devices: Sequence[str]) -> None:
    """Check every RPC endpoint answers HELLO with our protocol version before llama.cpp
    connects (it aborts the whole process on an unreachable endpoint)."""
    from tightwad.agent.processes.probes import ProbeError, rpc_hello

    for name in devices:
        if not (name.startswith("RPC[") and name.endswith("]")):
            continue
        endpoint = name[4:-1]
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ModelLoadError(f"bad RPC endpoint {endpoint!r}: expected host:port")
        try:
            version = await rpc_hello(host, int(port), timeout_s=5.0)
        except ProbeError as exc:
            raise ModelLoadError(
                f"RPC endpoint {endpoint} is unreachable or not a ggml-rpc-server ({exc})"
            ) from exc
        major = int(version.split(".")[0])
        if major != RPC_PROTOCOL_MAJOR:
            raise ModelLoadError(
                f"RPC endpoint {endpoint} speaks protocol {version}; this engine needs "
                f"{RPC_PROTOCOL_MAJOR}.x (build both from the same llama.cpp version)"
            )


class Engine:
    """One loaded model. ``await Engine.load(cfg)``; sessions via :meth:`open_session`."""

    def __init__(self, cfg: EngineConfig, model: LlamaModel, executor: ThreadPoolExecutor):
        self.cfg = cfg
        self._m = model
        self._exec = executor
        n_slots = cfg.max_sessions + cfg.cache_slots
        self._slots = [_Slot(seq_id=i) for i in range(n_slots)]
        self._live = 0
        self._pieces: list[bytes] | None = None
        self._fingerprint: str | None = None
        tmpl = model.chat_template()
        self._template = (
            ChatTemplate(
                tmpl,
                bos_token=model.piece(model.bos, special=True).decode("utf-8", "replace")
                if model.bos >= 0
                else "",
                eos_token=model.piece(model.eos, special=True).decode("utf-8", "replace")
                if model.eos >= 0
                else "",
            )
            if tmpl
            else None
        )
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    async def load(
        cls, cfg: EngineConfig, progress: Callable[[float], None] | None = None
    ) -> Engine:
        shared = cfg.gpu_layers == 0 and not cfg.devices
        executor = (
            _cpu_executor()
            if shared
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{cfg.model_id}")
        )
        n_slots = cfg.max_sessions + cfg.cache_slots
        params = LlamaLoadParams(
            path=Path(cfg.path),
            n_ctx=cfg.ctx_size * cfg.max_sessions,
            n_threads=cfg.threads,
            n_gpu_layers=cfg.gpu_layers,
            flash_attn=cfg.flash_attn,
            n_seq_max=n_slots,
            n_batch=cfg.batch_size,
            tensor_split=cfg.tensor_split,
            devices=cfg.devices,
        )
        await _probe_rpc_devices(cfg.devices)
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(executor, lambda: LlamaModel(params, progress))
            engine = await loop.run_in_executor(executor, lambda: cls(cfg, model, executor))
        except BaseException:
            if not shared:
                executor.shutdown(wait=False)
            raise
        log.info("engine_loaded", model=cfg.model_id, path=str(cfg.path), n_ctx=model.n_ctx)
        return engine

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._exec, self._m.close)
        if self._exec is not _cpu_thread:
            self._exec.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise UnavailableError(f"engine {self.cfg.model_id} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn)

    # -- facts --------------------------------------------------------------------------

    @property
    def live_sessions(self) -> int:
        return self._live

    @property
    def n_vocab(self) -> int:
        return self._m.n_vocab

    @property
    def eog(self) -> frozenset[int]:
        return self._m.eog

    async def info(self) -> EngineInfo:
        fingerprint = await self.vocab_fingerprint()
        m = self._m
        return EngineInfo(
            model_id=self.cfg.model_id,
            model_name=m.meta("general.name") or Path(self.cfg.path).stem,
            architecture=m.meta("general.architecture") or "",
            n_layers=m.n_layer,
            n_ctx=self.cfg.ctx_size,
            n_ctx_train=m.n_ctx_train,
            n_vocab=m.n_vocab,
            vocab_fingerprint=fingerprint,
            bos_token_id=m.bos,
            eog_token_ids=tuple(sorted(m.eog)),
            live_sessions=self._live,
            n_threads=m.n_threads,
            path=str(self.cfg.path),
            engine_version=llama_version(),
            devices=self._placement(),
            has_chat_template=self._template is not None,
        )

    def _placement(self) -> tuple[tuple[str, int], ...]:
        """Layers per device, as llama.cpp assigns them: the first n_layer - n_gpu_layers on
        the CPU, the rest split over ``devices`` by ``tensor_split`` (even when empty)."""
        n = self._m.n_layer
        gpu = n if self.cfg.gpu_layers < 0 else min(self.cfg.gpu_layers, n)
        devices = list(self.cfg.devices) or (["GPU"] if gpu else [])
        out: list[tuple[str, int]] = [("CPU", n - gpu)] if n - gpu else []
        if gpu and devices:
            split = list(self.cfg.tensor_split) or [1.0] * len(devices)
            total = sum(split[: len(devices)]) or 1.0
            bounds = [round(gpu * sum(split[: i + 1]) / total) for i in range(len(devices))]
            prev = 0
            for name, b in zip(devices, bounds, strict=False):
                out.append((name, b - prev))
                prev = b
        return tuple(out)

    async def vocab_fingerprint(self) -> str:
        if self._fingerprint is None:
            from tightwad.engine.model_facts import read_model_facts

            facts = await asyncio.to_thread(read_model_facts, Path(self.cfg.path))
            self._fingerprint = facts.vocab_fingerprint
        return self._fingerprint

    async def pieces(self) -> list[bytes]:
        if self._pieces is None:
            m = self._m

            def build() -> list[bytes]:
                return [b"" if m.is_control(t) else m.piece(t) for t in range(m.n_vocab)]

            self._pieces = await self._run(build)
        return self._pieces

    async def special_tokens(self) -> list[int]:
        m = self._m
        return await self._run(lambda: [t for t in range(m.n_vocab) if m.is_control(t)])

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return await self._run(
            lambda: self._m.tokenize(text, add_special=add_special, parse_special=parse_special)
        )

    async def detokenize(self, tokens: Sequence[int], *, render_special: bool) -> bytes:
        self._check_tokens(tokens)
        return await self._run(
            lambda: self._m.detokenize(list(tokens), render_special=render_special)
        )

    async def render_chat(
        self, messages: Sequence[Message], *, add_generation_prompt: bool
    ) -> tuple[str, list[int]]:
        if self._template is None:
            raise InvalidRequestError(
                f"model {self.cfg.model_id} has no chat template in its GGUF metadata; "
                "use a completion prompt"
            )
        text = self._template.render(messages, add_generation_prompt=add_generation_prompt)
        tokens = await self.tokenize(text, add_special=True, parse_special=True)
        return text, tokens

    def _check_tokens(self, tokens: Sequence[int]) -> None:
        check_tokens(tokens, self._m.n_vocab)

    # -- sessions -----------------------------------------------------------------------

    async def open_session(
        self,
        prompt: Sequence[int],
        sampling: SamplingConfig,
        *,
        seed: int | None = None,
        top_logprobs: int = 0,
        logprobs: bool = False,
    ) -> tuple[Session, int, float]:
        """Allocate a sequence and prefill ``prompt``; returns (session, cached tokens, ms)."""
        check_open(prompt, sampling, n_vocab=self._m.n_vocab, ctx_size=self.cfg.ctx_size)
        if self._closed:
            raise UnavailableError(f"engine {self.cfg.model_id} is closed")
        slot, src, reuse = self._choose_slot(prompt)
        slot.live = True
        self._live += 1
        # What the slot will hold once its queued prefill has run (the worker is FIFO), so a
        # session opened right after may copy this prefix safely.
        slot.kv_tokens = list(prompt[:-1])
        slot.exact = (len(prompt) - 1) // self.cfg.prefill_chunk * self.cfg.prefill_chunk
        session = Session(
            self,
            slot,
            list(prompt),
            sampling,
            np.random.default_rng(seed),
            top_logprobs=top_logprobs,
            logprobs=logprobs or top_logprobs > 0,
        )
        t0 = time.perf_counter()
        try:
            await self._run(lambda: session._prefill(src, reuse))
        except BaseException:
            session.n_kv = 0
            session.release()
            raise
        return session, reuse, (time.perf_counter() - t0) * 1000.0

    def _choose_slot(self, prompt: Sequence[int]) -> tuple[_Slot, _Slot | None, int]:
        """Pick a slot for a new session and the best prefix source (slot, reuse length)."""
        limit = len(prompt) - 1
        chunk = self.cfg.prefill_chunk
        best: _Slot | None = None
        best_len = 0
        for s in self._slots:
            n = min(_lcp(s.kv_tokens, prompt), limit, s.exact) // chunk * chunk
            if n > best_len:
                best, best_len = s, n
        if best_len < self.cfg.min_prefix_reuse:
            best, best_len = None, 0
        if self._live >= self.cfg.max_sessions:
            raise OverloadedError(
                f"engine {self.cfg.model_id} has {self._live} live sessions (max "
                f"{self.cfg.max_sessions}); retry later"
            )
        if best is not None and not best.live:
            return best, best, best_len
        idle = [s for s in self._slots if not s.live and s is not best]
        empty = [s for s in idle if not s.kv_tokens]
        slot = empty[0] if empty else min(idle, key=lambda s: s.last_used)
        return slot, best, best_len

    def _release(self, slot: _Slot) -> None:
        if slot.live:
            slot.live = False
            slot.last_used = time.monotonic()
            self._live -= 1


class Session:
    """One request's sequence in the engine. Use only from one task at a time."""

    def __init__(
        self,
        engine: Engine,
        slot: _Slot,
        prompt: list[int],
        sampling: SamplingConfig,
        rng: np.random.Generator,
        *,
        top_logprobs: int,
        logprobs: bool,
    ) -> None:
        self._e = engine
        self._m = engine._m
        self._slot = slot
        self.seq = slot.seq_id
        self.tokens: list[int] = prompt
        self.prompt_len = len(prompt)
        self.n_kv = 0
        self.sampling = sampling
        self.rng = rng
        self.top_logprobs = top_logprobs
        self.logprobs = logprobs
        self.closed = False
        self._plain = (
            not sampling.logit_bias
            and sampling.repeat_penalty == 1.0
            and sampling.presence_penalty == 0.0
            and sampling.frequency_penalty == 0.0
        )

    # Runs on the worker thread.
    def _prefill(self, src: _Slot | None, reuse: int) -> None:
        m = self._m
        if src is not None and src is not self._slot:
            m.seq_rm(self.seq, -1, -1)
            m.seq_cp(src.seq_id, self.seq, 0, reuse)
        elif src is None:
            m.seq_rm(self.seq, -1, -1)
            reuse = 0
        m.seq_rm(self.seq, reuse, -1)
        end = len(self.tokens) - 1
        chunk = self._e.cfg.prefill_chunk
        pos = reuse
        while pos < end:
            stop = min(end, (pos // chunk + 1) * chunk)
            m.decode(self.seq, self.tokens[pos:stop], pos, outputs=())
            pos = stop
        self.n_kv = end
        self._slot.kv_tokens = self.tokens[: self.n_kv]

    def release(self) -> None:
        """Free the sequence (its KV stays as a cached prefix). Idempotent.

        The slot is handed back only after any command of this session still running on the
        worker thread has finished, so a new session never shares cells with a dying one."""
        if self.closed:
            return
        self.closed = True
        try:
            loop = asyncio.get_running_loop()
            fut = self._e._exec.submit(lambda: self.tokens[: self.n_kv])
        except RuntimeError:  # no loop, or the engine's executor is already shut down
            self._finish_release(self.tokens[: self.n_kv])
            return

        def done(f: Any) -> None:
            kv = f.result() if not f.cancelled() and f.exception() is None else []
            loop.call_soon_threadsafe(self._finish_release, kv)

        fut.add_done_callback(done)

    def _finish_release(self, kv_tokens: list[int]) -> None:
        self._slot.kv_tokens = kv_tokens
        self._slot.exact = min(self._slot.exact, len(kv_tokens))
        self._e._release(self._slot)

    @property
    def room(self) -> int:
        """Tokens that may still be appended before the per-session context is full."""
        return self._e.cfg.ctx_size - len(self.tokens)

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidRequestError("the session is closed")

    # -- distributions ------------------------------------------------------------------

    def _dist(self, logits: NDArray[np.float32], history: Sequence[int]) -> SparseDist:
        return target_distribution(logits, history, self.sampling)

    def _logprob(self, logits: NDArray[np.float32], token: int) -> TokenLogprob:
        lp = _log_softmax(logits)
        top: tuple[tuple[int, float], ...] = ()
        if self.top_logprobs > 0:
            k = min(self.top_logprobs, lp.shape[0])
            idx = np.argpartition(-lp, k - 1)[:k]
            idx = idx[np.argsort(-lp[idx], kind="stable")]
            top = tuple((int(i), float(lp[i])) for i in idx)
        return TokenLogprob(token_id=token, logprob=float(lp[token]), top=top)

    # -- verify / generate --------------------------------------------------------------

    async def verify(
        self, draft: Sequence[int], q: Sequence[SparseDist] | None = None
    ) -> VerifyResult:
        """One round: score ``draft`` in one forward pass, keep the accepted prefix, and emit
        the target's next token. ``verify([])`` is one plain decoding step."""
        self._check_open()
        self._e._check_tokens(draft)
        if q is not None and len(q) != len(draft):
            raise InvalidRequestError(
                f"verify got {len(draft)} draft tokens but {len(q)} draft distributions"
            )
        if self.room <= 0:
            raise ContextLengthError("the session's context is full")
        draft = list(draft[: max(0, self.room - 1)])
        if q is not None:
            q = list(q[: len(draft)])
        return await self._e._run(lambda: self._verify_sync(draft, q or None))

    def _verify_sync(self, draft: list[int], q: Sequence[SparseDist] | None) -> VerifyResult:
        t0 = time.perf_counter()
        m = self._m
        base = list(self.tokens)
        batch = [base[-1], *draft]
        m.decode(self.seq, batch, self.n_kv, outputs=range(len(batch)))
        rows: dict[int, NDArray[np.float32]] = {}

        def row(i: int) -> NDArray[np.float32]:
            if i not in rows:
                rows[i] = m.logits_row(i)
            return rows[i]

        def dist_at(i: int) -> SparseDist:
            return self._dist(row(i), base + draft[:i])

        def argmax_at(i: int) -> int:
            if self._plain:
                # Greedy without penalties: the argmax of llama.cpp's own buffer, no copy.
                return int(np.argmax(rows[i])) if i in rows else m.argmax_row(i)
            return dist_at(i).argmax()

        outcome: Outcome = verify(draft, q, dist_at, argmax_at, self.sampling.greedy, self.rng)
        a, nxt = outcome.accepted, outcome.next_token
        lps: tuple[TokenLogprob, ...] = ()
        if self.logprobs:
            emitted = [*draft[:a], nxt]
            lps = tuple(self._logprob(row(i), tok) for i, tok in enumerate(emitted))
        keep = self.n_kv + 1 + a
        if a < len(draft):
            m.seq_rm(self.seq, keep, -1)
        self.tokens = base + draft[:a] + [nxt]
        self.n_kv = keep
        return VerifyResult(
            accepted=a,
            next_token=nxt,
            logprobs=lps,
            verify_ms=(time.perf_counter() - t0) * 1000.0,
            n_tokens=len(self.tokens),
        )

    async def generate(
        self, n: int, stop_tokens: Sequence[int] = (), *, ignore_eos: bool = False
    ) -> AsyncIterator[tuple[int, TokenLogprob | None, str | None]]:
        """Plain decoding: yields (token, logprob, stop reason or None) up to ``n`` tokens.

        The next step is queued on the compute thread before a token is yielded, so the model
        decodes back to back while the caller streams. A step decoded for a caller that stops
        iterating early is rolled back (queued behind it on the same thread)."""
        self._check_open()
        stops = set(stop_tokens) | (set() if ignore_eos else set(self._e.eog))
        loop = asyncio.get_running_loop()

        def step() -> asyncio.Future[VerifyResult]:
            if self._e._closed:
                raise UnavailableError(f"engine {self._e.cfg.model_id} is closed")
            return loop.run_in_executor(self._e._exec, lambda: self._verify_sync([], None))

        ahead: asyncio.Future[VerifyResult] | None = None
        ahead_len = 0  # the session's length once the queued step has run
        done = False
        try:
            for i in range(n):
                if self.room <= 0:
                    done = True
                    yield -1, None, "context_full"
                    return
                fut, ahead = ahead or step(), None
                res = await fut
                lp = res.logprobs[0] if res.logprobs else None
                if res.next_token in stops:
                    done = True
                    eog = res.next_token in self._e.eog
                    yield res.next_token, lp, "eog" if eog else "token"
                    return
                last = i == n - 1
                if not last and self.room > 0:
                    ahead, ahead_len = step(), len(self.tokens) + 1
                done = last
                yield res.next_token, lp, "length" if last else None
        finally:
            if ahead is not None and not done:
                # The caller will not take the queued step: undo it on the same thread, after it.
                ahead.add_done_callback(lambda f: f.cancelled() or f.exception())
                with contextlib.suppress(RuntimeError):  # the engine's thread is gone
                    self._e._exec.submit(self._undo_step, ahead_len)

    def _undo_step(self, expected: int) -> None:
        """Drop the last plain step (if the session grew to ``expected`` tokens with it)."""
        if not self.closed and len(self.tokens) == expected:
            self._truncate_sync(expected - 1)

    def _truncate_sync(self, keep: int) -> int:
        """Keep the first ``keep`` tokens (the last of them pending, outside the KV cache)."""
        self.tokens = self.tokens[:keep]
        self._slot.kv_tokens = self._slot.kv_tokens[: keep - 1]
        self._slot.exact = min(self._slot.exact, keep - 1)
        if self.n_kv > keep - 1:
            self._m.seq_rm(self.seq, keep - 1, -1)
            self.n_kv = keep - 1
        return len(self.tokens)

    async def rewind(self, keep: int) -> int:
        self._check_open()
        if not 1 <= keep <= len(self.tokens):
            raise InvalidRequestError(f"rewind keep={keep} outside 1..{len(self.tokens)}")
        return await self._e._run(lambda: self._truncate_sync(keep))

    # -- draft --------------------------------------------------------------------------

    async def draft(
        self,
        k: int,
        *,
        keep: int,
        append: Sequence[int],
        min_confidence: float = 0.0,
        top_m: int = 0,
    ) -> AsyncIterator[DraftStep]:
        """Align to the target (keep ``keep`` tokens, append ``append``), then propose up to
        ``k`` tokens, yielding each as produced. Ends early on low confidence, EOG or a full
        context; :attr:`last_draft_stop` says why."""
        self._check_open()
        self._e._check_tokens(append)
        if keep > len(self.tokens):
            raise InvalidRequestError(f"draft keep={keep} exceeds the {len(self.tokens)} tokens")
        new = self.tokens[:keep] + list(append)
        if not new:
            raise InvalidRequestError("draft would leave the session empty")
        k = max(0, min(k, self._e.cfg.ctx_size - len(new)))
        self.last_draft_stop = "length"
        row = await self._e._run(lambda: self._sync_sync(new, want_row=k > 0))
        for i in range(k):
            step = await self._e._run(
                lambda r=row: self._draft_pick(r, min_confidence, top_m)  # type: ignore[misc]
            )
            if step is None:
                self.last_draft_stop = "low_confidence"
                return
            self.tokens.append(step.token_id)
            yield step
            if step.token_id in self._e.eog:
                self.last_draft_stop = "eog"
                return
            if i < k - 1:
                row = await self._e._run(self._advance_sync)
        if k == 0 and self._e.cfg.ctx_size - len(new) <= 0:
            self.last_draft_stop = "context_full"

    def _sync_sync(self, new: list[int], *, want_row: bool) -> NDArray[np.float32] | None:
        m = self._m
        valid = min(_lcp(self.tokens, new), self.n_kv, len(new) - 1)
        m.seq_rm(self.seq, valid, -1)
        self._slot.kv_tokens = self._slot.kv_tokens[:valid]
        self._slot.exact = min(self._slot.exact, valid)
        self.tokens = new
        tail = new[valid:] if want_row else new[valid:-1]
        if tail:
            outputs = (len(tail) - 1,) if want_row else ()
            m.decode(self.seq, tail, valid, outputs=outputs)
        self.n_kv = valid + len(tail)
        return m.logits_row(len(tail) - 1) if want_row else None

    def _advance_sync(self) -> NDArray[np.float32]:
        m = self._m
        m.decode(self.seq, [self.tokens[-1]], self.n_kv, outputs=(0,))
        self.n_kv += 1
        return m.logits_row(0)

    def _draft_pick(
        self, logits: NDArray[np.float32] | None, min_confidence: float, top_m: int
    ) -> DraftStep | None:
        assert logits is not None
        # The pending token was just decoded: n_kv == len(tokens) here.
        if self.sampling.greedy:
            dist = self._dist(logits, self.tokens) if not self._plain else None
            tok = dist.argmax() if dist is not None else int(np.argmax(logits))
            prob = _softmax_prob_of(logits, tok)
            if prob < min_confidence:
                return None
            return DraftStep(token_id=tok, prob=prob, q=None)
        dist = self._dist(logits, self.tokens)
        if top_m > 0 and len(dist.token_ids) > top_m:
            dist = dist.top(top_m)
        tok = sample(dist, self.rng)
        prob = dist.prob_of(tok)
        if prob < min_confidence:
            return None
        return DraftStep(token_id=tok, prob=prob, q=dist)
