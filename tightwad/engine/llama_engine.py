"""The embedded engine: one llama.cpp model serving many sessions, each a KV sequence.

Guarantees:
- Every llama.cpp call of an engine runs on one worker thread, so concurrent sessions are safe;
  sessions interleave at command granularity (FIFO). CPU-only engines of a process share one
  such thread: llama.cpp computes with an OpenMP team per calling thread, and once a process
  has more OpenMP threads than cores (two teams on a 2-core box), libgomp stops spinning
  between steps and every engine decodes markedly slower. Engines with GPU layers keep a
  thread of their own, so two GPUs of one agent can decode at the same time.
- Sessions (:mod:`tightwad.engine.session`) keep the session protocol; this module owns the
  model, the slots (KV sequences) and the prefix cache.
- Closing a session returns its slot; its KV cells stay as a cached prefix (LRU) that a later
  session with a common prompt prefix reuses (``seq_cp``) instead of recomputing; when the
  cache is full, the oldest such prefix is dropped for the live sessions. Reuse goes up to
  whole aligned prefill chunks, or all of a prompt but its pending token when the source was
  prefilled from that very prompt (same chunks): n choices of one prompt share one prefill
  and their first tokens come from one cache.
- When every session is taken, an Open waits up to ``open_wait_s`` for one to free, then is
  refused with :class:`~tightwad.errors.OverloadedError` (429, "busy ... retry later").
- A session opened with a grammar gets a matcher over the engine's own vocabulary; the
  grammar tokenizer is built once, on the first constrained session, on the compute thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from tightwad.engine.binding import LlamaLoadParams, LlamaModel, llama_version
from tightwad.engine.chat_template import ChatTemplate
from tightwad.engine.contract import (
    BatchOccupancy,
    DraftStep,
    EngineInfo,
    Message,
    TokenLogprob,
    VerifyResult,
)
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.ggml_devices import VK_DISABLE_FUSION, software_vulkan_workaround
from tightwad.engine.offload import placement_line
from tightwad.engine.session import Session, SessionGrammar, Slot
from tightwad.engine.session_rules import check_open, check_tokens
from tightwad.engine.step_batcher import MORE, WAIT, BatchStats, FnJob, Job, StepBatcher
from tightwad.errors import (
    InvalidRequestError,
    ModelLoadError,
    OverloadedError,
    UnavailableError,
)
from tightwad.logs import get_logger
from tightwad.spec.sampling import SamplingConfig, SparseDist

if TYPE_CHECKING:
    from concurrent.futures import Future

    from tightwad.engine.grammar import GrammarMatcher, GrammarSpec, GrammarTokenizer

__all__ = [
    "DraftStep",
    "Engine",
    "EngineConfig",
    "EngineInfo",
    "Session",
    "TokenLogprob",
    "VerifyResult",
    "check_open",
    "check_tokens",
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


# The ggml RPC protocol major version of the pinned llama.cpp (ggml-rpc.h); servers of another
# major version cannot serve this engine.
RPC_PROTOCOL_MAJOR = 7


async def _probe_rpc_devices(devices: Sequence[str]) -> None:
    """Check every RPC endpoint answers HELLO with our protocol version before llama.cpp
    connects (it aborts the whole process on an unreachable endpoint)."""
    from tightwad.engine.rpc_probe import ProbeError, rpc_hello

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


def _tools(tools_json: str) -> list[Any]:
    try:
        tools = json.loads(tools_json)
    except ValueError as exc:
        raise InvalidRequestError(f"tools is not valid JSON: {exc}", param="tools") from exc
    if not isinstance(tools, list):
        raise InvalidRequestError("tools must be a JSON array", param="tools")
    return tools


class Engine:
    """One loaded model. ``await Engine.load(cfg)``; sessions via :meth:`open_session`."""

    def __init__(
        self,
        cfg: EngineConfig,
        model: LlamaModel,
        executor: ThreadPoolExecutor,
        *,
        batch_steps: bool = False,
    ):
        self.cfg = cfg
        self._batcher = (
            StepBatcher(model, executor, name=cfg.model_id, make_room=self._make_room)
            if batch_steps
            else None
        )
        self._m = model
        self._exec = executor
        n_slots = cfg.max_sessions + cfg.cache_slots
        self._slots = [Slot(seq_id=i) for i in range(n_slots)]
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
        self._freed = asyncio.Event()  # set when a session's slot comes back
        self._grammar_tok: GrammarTokenizer | None = None
        self._grammar_lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    async def load(
        cls,
        cfg: EngineConfig,
        progress: Callable[[float], None] | None = None,
        *,
        batch_steps: bool | None = None,
    ) -> Engine:
        """Load ``cfg``'s model. ``batch_steps`` (default: the config's ``batch_steps``)
        runs the pending work of all sessions as one forward pass per step
        (:mod:`tightwad.engine.step_batcher`)."""
        batching = cfg.batch_steps if batch_steps is None else batch_steps
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
        if software := software_vulkan_workaround(cfg.devices, cfg.gpu_layers):
            log.info(
                "vulkan_fusion_off",
                model=cfg.model_id,
                device=software,
                reason="Mesa's software Vulkan device (llvmpipe) crashes in ggml-vulkan's fused "
                f"kernels; {VK_DISABLE_FUSION}=1 for this process",
            )
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(executor, lambda: LlamaModel(params, progress))
            engine = await loop.run_in_executor(
                executor, lambda: cls(cfg, model, executor, batch_steps=batching)
            )
        except BaseException:
            if not shared:
                executor.shutdown(wait=False)
            raise
        log.info(
            "engine_loaded",
            model=cfg.model_id,
            path=str(cfg.path),
            n_ctx=model.n_ctx,
            placement=placement_line(cfg, engine._placement()),
        )
        return engine

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._freed.set()  # Opens waiting for a session give up
        batcher = self._batcher

        def close() -> None:
            if batcher is not None:
                batcher.close()
            self._m.close()

        await asyncio.get_running_loop().run_in_executor(self._exec, close)
        if self._exec is not _cpu_thread:
            self._exec.shutdown(wait=True)

    def step(
        self, session: Session, draft: list[int], q: Sequence[SparseDist] | None
    ) -> asyncio.Future[VerifyResult]:
        """Queue one Verify step of ``session`` (batched with other sessions' pending work
        when step batching is on); the future resolves on the event loop."""
        return self.job(session.verify_job(draft, q))

    def job(self, job: Job) -> asyncio.Future[Any]:
        """Queue a session's batch job: into the batcher, or alone on the compute thread."""
        if self._batcher is not None:
            return self._batcher.submit(job)
        return asyncio.get_running_loop().run_in_executor(self._exec, lambda: self._alone(job))

    def call(self, session: Session, fn: Callable[[], T], *, closed_ok: bool = False) -> Any:
        """Run a command of ``session`` that decodes nothing on the compute thread, in order
        with the session's batch jobs; returns an asyncio future."""
        if self._batcher is not None:
            return self._batcher.submit(FnJob.call(session, fn, closed_ok=closed_ok))
        return asyncio.get_running_loop().run_in_executor(self._exec, fn)

    def _alone(self, job: Job) -> Any:
        t0 = time.perf_counter()
        while True:
            part = job.prepare()
            if part is WAIT:  # FIFO: a prefill's source is always complete by now
                raise RuntimeError("a batch job waits with step batching off")
            if part is not None:
                while True:
                    try:
                        self._m.decode(*part)
                        break
                    except OverloadedError:
                        if not self._make_room():
                            raise
            res = job.finish(0, t0)
            if res is not MORE:
                return res

    @property
    def batch_stats(self) -> BatchStats | None:
        """Decodes and steps of the step batcher (None when batching is off)."""
        return self._batcher.stats if self._batcher is not None else None

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the engine's compute thread (FIFO with every other call)."""
        if self._closed:
            raise UnavailableError(f"engine {self.cfg.model_id} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` on the compute thread without waiting (RuntimeError once shut down)."""
        return self._exec.submit(fn)

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._exec

    @property
    def model(self) -> LlamaModel:
        return self._m

    @property
    def closed(self) -> bool:
        return self._closed

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
            batch=self.occupancy(),
        )

    def occupancy(self) -> BatchOccupancy:
        """The step batcher's live occupancy (the default, ``enabled`` False, when off)."""
        if self._batcher is None:
            return BatchOccupancy()
        s = self._batcher.stats
        per = max(s.decodes, 1)
        return BatchOccupancy(
            enabled=True,
            decodes=s.decodes,
            jobs=s.steps,
            tokens=s.tokens,
            prefill_tokens=s.prefill_tokens,
            mean_sessions_per_step=s.steps / per,
            mean_tokens_per_step=s.tokens / per,
            recent_sessions_per_step=sum(s.widths) / max(len(s.widths), 1),
            max_jobs=s.max_jobs,
            max_tokens=s.max_tokens,
            max_sessions=self.cfg.max_sessions,
            step_token_budget=self._m.batch_capacity,
            prefill_chunk=self.cfg.prefill_chunk,
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

            self._pieces = await self.run(build)
        return self._pieces

    async def special_tokens(self) -> list[int]:
        m = self._m
        return await self.run(lambda: [t for t in range(m.n_vocab) if m.is_control(t)])

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return await self.run(
            lambda: self._m.tokenize(text, add_special=add_special, parse_special=parse_special)
        )

    async def detokenize(self, tokens: Sequence[int], *, render_special: bool) -> bytes:
        self._check_tokens(tokens)
        return await self.run(
            lambda: self._m.detokenize(list(tokens), render_special=render_special)
        )

    async def render_chat(
        self, messages: Sequence[Message], *, add_generation_prompt: bool, tools_json: str = ""
    ) -> tuple[str, list[int]]:
        if self._template is None:
            raise InvalidRequestError(
                f"model {self.cfg.model_id} has no chat template in its GGUF metadata; "
                "use a completion prompt"
            )
        text = self._template.render(
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=_tools(tools_json) if tools_json else None,
        )
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
        grammar: GrammarSpec | None = None,
    ) -> tuple[Session, int, float]:
        """Allocate a sequence and prefill ``prompt``; returns (session, cached tokens, ms).
        With ``grammar``, every token the session emits is constrained by it."""
        check_open(prompt, sampling, n_vocab=self._m.n_vocab, ctx_size=self.cfg.ctx_size)
        if self._closed:
            raise UnavailableError(f"engine {self.cfg.model_id} is closed")
        grammar_state: SessionGrammar | None = None
        if grammar is not None:
            tok, spec = await self._grammar_tokenizer(), grammar

            def matcher() -> GrammarMatcher:
                return tok.matcher(spec)

            grammar_state = await self.run(lambda: SessionGrammar(matcher, self._m.eog))
        await self._wait_for_room()
        if self._closed:
            raise UnavailableError(f"engine {self.cfg.model_id} is closed")
        slot, src, reuse = self._choose_slot(prompt)
        slot.live = True
        self._live += 1
        # What the slot will hold once its queued prefill has run, so a session opened right
        # after may copy this prefix (its prefill waits until ``prefill_at`` reaches it).
        slot.prefill_at = 0  # before kv_tokens: the compute thread reads them in that order
        slot.kv_tokens = list(prompt[:-1])
        slot.exact = (len(prompt) - 1) // self.cfg.prefill_chunk * self.cfg.prefill_chunk
        slot.tail = len(prompt) - 1
        session = Session(
            self,
            slot,
            list(prompt),
            sampling,
            np.random.default_rng(seed),
            top_logprobs=top_logprobs,
            logprobs=logprobs or top_logprobs > 0,
            grammar=grammar_state,
        )
        t0 = time.perf_counter()
        try:
            if self._closed:
                raise UnavailableError(f"engine {self.cfg.model_id} is closed")
            await self.job(session.prefill_job(src, reuse))
        except BaseException:
            session.release()
            raise
        return session, reuse, (time.perf_counter() - t0) * 1000.0

    async def _grammar_tokenizer(self) -> GrammarTokenizer:
        """The grammar tokenizer of this model, built once on the compute thread."""
        async with self._grammar_lock:
            if self._grammar_tok is None:
                from tightwad.engine.grammar import grammar_tokenizer

                t0 = time.perf_counter()
                self._grammar_tok = await self.run(lambda: grammar_tokenizer(self._m))
                log.info(
                    "grammar_tokenizer_built",
                    model=self.cfg.model_id,
                    ms=round((time.perf_counter() - t0) * 1000.0, 1),
                )
            return self._grammar_tok

    async def _wait_for_room(self) -> None:
        """Wait up to ``open_wait_s`` while every session is taken (the caller then gets the
        overloaded error of :meth:`_choose_slot`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.open_wait_s
        while self._live >= self.cfg.max_sessions and not self._closed:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), left)

    def _choose_slot(self, prompt: Sequence[int]) -> tuple[Slot, Slot | None, int]:
        """Pick a slot for a new session and the best prefix source (slot, reuse length)."""
        chunk = self.cfg.prefill_chunk
        best: Slot | None = None
        best_len = 0
        for s in self._slots:
            n = s.reusable(prompt, chunk)
            if n > best_len:
                best, best_len = s, n
        if best_len < self.cfg.min_prefix_reuse:
            best, best_len = None, 0
        if self._live >= self.cfg.max_sessions:
            raise OverloadedError(
                f"engine {self.cfg.model_id} is busy: {self._live} live sessions (max "
                f"{self.cfg.max_sessions}) and none freed within {self.cfg.open_wait_s:g} s; "
                "retry later"
            )
        if best is not None and not best.live:
            return best, best, best_len
        idle = [s for s in self._slots if not s.live and s is not best]
        empty = [s for s in idle if not s.kv_tokens]
        slot = empty[0] if empty else min(idle, key=lambda s: s.last_used)
        return slot, best, best_len

    def _make_room(self) -> bool:
        """On the compute thread, when the KV cache is full: drop the cached prefix of the
        least recently used idle sequence (its cells go unless a live sequence shares them).
        False when no idle sequence holds any."""
        idle = [s for s in self._slots if not s.live and s.kv_tokens and s.prefill_at is None]
        if not idle:
            return False
        victim = min(idle, key=lambda s: s.last_used)
        self._m.seq_rm(victim.seq_id, -1, -1)
        victim.kv_tokens, victim.exact, victim.tail = [], 0, 0
        log.info("kv_cache_full_prefix_dropped", model=self.cfg.model_id, seq=victim.seq_id)
        return True

    async def kv_report(self) -> list[tuple[int, int, int]]:
        """For each idle sequence: (seq_id, tokens its slot records as cached, positions the
        KV cache holds for it); the two are equal unless a sequence leaked cells."""

        def read() -> list[tuple[int, int, int]]:
            m = self._m
            return [
                (s.seq_id, len(s.kv_tokens), m.seq_pos_max(s.seq_id) + 1)
                for s in self._slots
                if not s.live
            ]

        return await self.run(read)

    def release_slot(self, slot: Slot) -> None:
        if slot.live:
            slot.live = False
            slot.last_used = time.monotonic()
            self._live -= 1
            self._freed.set()
