"""A speculative route: its settings (:class:`RouteSpec`) and its :class:`SpecBackend`.

The backend holds what the route's requests share: the target's facts and vocabulary, the
drafters' health and speed, the Verify costs by width, and one draft-length controller per
proposer (what drafting costs and how often it is accepted is learned once, and the probing
schedule carries over, so a short request does not pay to re-discover that drafting loses).
Each request runs in a :class:`~tightwad.gateway.loop.run.RequestRun`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from tightwad.config import DEFAULT_MAX_DRAFT_TOKENS, DRAFT_MODES, DraftMode
from tightwad.errors import ConfigError, TightwadError, UnavailableError
from tightwad.gateway.engine_client import EngineClient, RemoteEngineInfo
from tightwad.gateway.loop import calibration, policy
from tightwad.gateway.loop.policy import Knobs
from tightwad.gateway.loop.run import RequestRun
from tightwad.gateway.text_draft import TextDrafter
from tightwad.gateway.types import GenerationEvent, GenerationRequest, RouteInfo
from tightwad.logs import get_logger
from tightwad.spec.draft_control import DraftControlConfig, DraftLengthController
from tightwad.spec.verify_cost import VerifyCosts

__all__ = ["DrafterHealth", "RouteSpec", "SpecBackend"]

log = get_logger("tightwad.gateway.loop")

#: The target's batch occupancy on the status page is read again at most this often (in the
#: background, when a request starts or the status is asked for).
BATCH_REFRESH_S = 2.0


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """How one route (an OpenAI ``model`` name) is served."""

    name: str
    target: EngineClient
    draft_mode: DraftMode | str = DraftMode.NGRAM
    drafters: tuple[EngineClient, ...] = ()
    # Text-only drafters (Ollama): their text is tokenized by the target (text_draft.py).
    text_drafters: tuple[TextDrafter, ...] = ()
    max_draft_tokens: int = DEFAULT_MAX_DRAFT_TOKENS
    pipeline: bool = False
    hybrid_min_match: int = 3
    ngram_max_n: int = 12
    # An n-gram match at least this long is a copy (an edit, a quoted block): draft
    # copy_start_tokens at once (capped by max_draft_tokens), doubling while copies are
    # accepted whole, instead of ramping up from the controller's k (llama.cpp's ngram-simple:
    # a 12-token match drafts 48). A wide verify can cost less per token than a narrow one
    # (a CPU's matrix tiles), so a copy starts wide, cut to the width the route measured as
    # cheapest per token (VerifyCosts).
    copy_min_match: int = 12
    copy_start_tokens: int = 64
    # Predicted outputs start narrower: an edit inside the prediction is met early, and a
    # wide draft that breaks there wastes its whole verify.
    prediction_start_tokens: int = 16
    # ... and only once the output has followed the prediction for this many tokens.
    prediction_min_run: int = 2
    # Plain steps between drafts: queue the next plain step before looking at this one's
    # token, so the engine never idles for a round trip (drafting starts one token later).
    plain_lookahead: bool = True
    # Proposers that look at every token (n-gram, prediction) decode the tokens that certainly
    # cannot start a draft as one Generate stream (a copy needs its match to grow to
    # copy_min_match first, at most one token per token).
    plain_chunks: bool = True
    draft_timeout_s: float = 5.0
    draft_min_confidence: float = 0.0
    draft_top_m: int = 16
    target_timeout_s: float = 120.0
    drafter_cooldown_s: float = 30.0
    control: DraftControlConfig = field(default_factory=DraftControlConfig)
    # False: always draft max_draft_tokens (no goodput control), e.g. to test a drafter.
    adaptive: bool = True
    # Model drafting: measure at start what a plain step, a wide verify and a draft step cost,
    # so the first request already knows whether drafting can pay on this hardware.
    calibrate: bool = True

    @property
    def knobs(self) -> Knobs:
        """The settings the round policy reads."""
        return Knobs(
            draft_mode=str(self.draft_mode),
            max_draft_tokens=self.max_draft_tokens,
            hybrid_min_match=self.hybrid_min_match,
            copy_min_match=self.copy_min_match,
            copy_start_tokens=self.copy_start_tokens,
            prediction_start_tokens=self.prediction_start_tokens,
            prediction_min_run=self.prediction_min_run,
            plain_lookahead=self.plain_lookahead,
            plain_chunks=self.plain_chunks,
            adaptive=self.adaptive,
        )


@dataclass
class DrafterHealth:
    """A draft engine of the route: when it last failed, how fast it drafts."""

    client: EngineClient
    failed_at: float | None = None
    draft_ms_per_token: float | None = None

    def healthy(self, now: float, cooldown_s: float) -> bool:
        return self.failed_at is None or now - self.failed_at > cooldown_s

    def failed(self) -> None:
        self.failed_at = time.monotonic()

    def observe_draft(self, ms_per_token: float) -> None:
        prev = self.draft_ms_per_token
        self.draft_ms_per_token = ms_per_token if prev is None else 0.8 * prev + 0.2 * ms_per_token


class SpecBackend:
    """A route served by a target engine with an optional drafting strategy."""

    def __init__(self, spec: RouteSpec) -> None:
        if spec.draft_mode not in DRAFT_MODES:
            raise ConfigError(
                f"routes.{spec.name}.draft", f"unknown draft mode '{spec.draft_mode}'"
            )
        if spec.draft_mode in ("model", "hybrid") and not (spec.drafters or spec.text_drafters):
            raise ConfigError(
                f"routes.{spec.name}.draft", f"draft mode '{spec.draft_mode}' needs a draft model"
            )
        self.spec = spec
        self._info: RemoteEngineInfo | None = None
        self._pieces: list[bytes] = []
        self._drafters = [DrafterHealth(c) for c in spec.drafters]
        self._controllers: dict[str, DraftLengthController] = {}
        # What a Verify costs per batch width on the target (calibrated at start, then kept
        # current by every round); empty = not measured, drafts are sent as proposed.
        self.costs = VerifyCosts()
        # Requests running on the route now (their steps share the engine's batch), and the
        # most seen at once.
        self._live = 0
        self._peak_live = 0
        # The target's batch occupancy as last read (its Info), when, and the read under way.
        self._batch: dict[str, int | float | bool] | None = None
        self._batch_read_at = 0.0
        self._batch_asked_at: float | None = None
        self._batch_task: asyncio.Task[None] | None = None
        self._ready = False
        self._error = ""

    # -- what requests read ---------------------------------------------------------------

    @property
    def target_info(self) -> RemoteEngineInfo:
        """The target's facts (read at :meth:`start`)."""
        if self._info is None:
            raise UnavailableError(f"route {self.spec.name} is not ready")
        return self._info

    @property
    def pieces(self) -> Sequence[bytes]:
        """The target's token pieces (its vocabulary's bytes by token id)."""
        return self._pieces

    def pick_drafter(self) -> DrafterHealth | None:
        """The fastest draft engine not resting after a failure (None: none)."""
        now = time.monotonic()
        healthy = [d for d in self._drafters if d.healthy(now, self.spec.drafter_cooldown_s)]
        if not healthy:
            return None
        return min(healthy, key=lambda d: d.draft_ms_per_token or 0.0)

    @property
    def live_runs(self) -> int:
        """How many requests run on the route now (their steps share one batch)."""
        return self._live

    @property
    def batches(self) -> bool:
        """Whether the target decodes the route's runs in one forward pass (its occupancy's
        ``enabled``, as last read; False before the first read)."""
        return bool(self._batch and self._batch.get("enabled"))

    @property
    def priced_load(self) -> int:
        """The load a round's verify is priced at now (:func:`.policy.priced_load`)."""
        return policy.priced_load(self._live, self.batches)

    def run_started(self) -> None:
        """A request's run began (:class:`RequestRun` calls it once, then :meth:`run_ended`)."""
        self._live += 1
        self._peak_live = max(self._peak_live, self._live)
        self._refresh_batch()

    def run_ended(self) -> None:
        self._live = max(0, self._live - 1)

    def record_verify(self, width: int, seconds: float) -> None:
        """A request's Verify of ``width`` tokens took ``seconds`` on the engine: keeps the
        route's costs current (once calibrated). The costs are by total batch width, so only
        a Verify that ran alone on the route counts (with batch mates it timed their work
        too, at a width this run does not know)."""
        if self.costs and self._live <= 1:
            self.costs.observe(width, seconds)

    def controller_for(self, proposer: str) -> DraftLengthController:
        """The route's controller of ``proposer`` (created on first use)."""
        if proposer not in self._controllers:
            ctl = DraftLengthController(self.spec.control)
            if self.costs:
                ctl.use_verify_costs(self.costs.seconds)
            self._controllers[proposer] = ctl
        return self._controllers[proposer]

    def _refresh_batch(self) -> None:
        """Read the target's batch occupancy again in the background, unless a read is under
        way or one began less than :data:`BATCH_REFRESH_S` ago (no Info call per status
        request)."""
        now = time.monotonic()
        if self._batch_task is not None and not self._batch_task.done():
            return
        if self._batch_asked_at is not None and now - self._batch_asked_at < BATCH_REFRESH_S:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._batch_asked_at = now
        self._batch_task = loop.create_task(self._read_batch())

    async def _read_batch(self) -> None:
        try:
            info = await asyncio.wait_for(self.spec.target.info(), 5.0)
        except Exception as exc:  # a status read: the last reading stays, with its age
            log.debug("route_batch_read_failed", route=self.spec.name, reason=str(exc))
            return
        self._batch, self._batch_read_at = info.batch.as_dict(), time.monotonic()

    def _batch_details(self) -> dict[str, object] | None:
        """The target's batch occupancy as last read, with how old the reading is."""
        if self._batch is None:
            return None
        return {**self._batch, "age_s": round(time.monotonic() - self._batch_read_at, 1)}

    # -- start-up -----------------------------------------------------------------------

    async def start(self) -> None:
        """Read the target's facts and vocabulary; refuse drafters of another vocabulary."""
        info = await self.spec.target.info()
        if not info.can_verify and self.spec.draft_mode != "none":
            raise ConfigError(
                f"routes.{self.spec.name}.target",
                f"engine {info.model} ({info.kind}) cannot verify drafts in one pass; "
                "use draft: none for it",
            )
        pieces, _special, fingerprint = await self.spec.target.vocabulary()
        for d in self._drafters:
            dinfo = await d.client.info()
            if dinfo.vocab_fingerprint != fingerprint:
                raise ConfigError(
                    f"routes.{self.spec.name}.draft_model",
                    f"draft {dinfo.model} does not share the target's vocabulary "
                    f"(fingerprint {dinfo.vocab_fingerprint[:12]} vs {fingerprint[:12]})",
                )
            if not dinfo.can_draft:
                raise ConfigError(
                    f"routes.{self.spec.name}.draft_model", f"engine {dinfo.model} cannot draft"
                )
        self._info = info
        self._pieces = pieces
        self._batch, self._batch_read_at = info.batch.as_dict(), time.monotonic()
        if self.spec.draft_mode != "none" and self.spec.adaptive and self.spec.calibrate:
            await self._calibrate(info)
        self._ready = True
        log.info(
            "route_ready",
            route=self.spec.name,
            target=info.model,
            draft_mode=self.spec.draft_mode,
            drafters=len(self._drafters),
        )

    async def _calibrate(self, info: RemoteEngineInfo) -> None:
        """Measure the route's costs (:mod:`.calibration`) and seed its model controller."""
        spec = self.spec
        model = spec.draft_mode == "model" and bool(self._drafters)
        try:
            cal = await calibration.measure(
                spec.target,
                n_ctx=info.n_ctx,
                max_draft_tokens=spec.max_draft_tokens,
                timeout_s=spec.target_timeout_s,
                drafter=self._drafters[0].client if model else None,
            )
        except (TightwadError, TimeoutError) as exc:
            log.warning("route_calibration_failed", route=spec.name, reason=str(exc))
            return
        self.costs = cal.costs
        log.info(
            "route_calibrated",
            route=spec.name,
            plain_ms=round(cal.plain_s * 1000.0, 2),
            verify_ms_by_width={w: round(v * 1000.0, 1) for w, v in cal.costs.measured().items()},
            copy_drafts=cal.costs.copy_drafts(spec.max_draft_tokens),
        )
        if cal.draft_s_per_token is None:
            return
        shared = self.controller_for("model")
        seeded = calibration.seed_model_control(
            shared,
            cal,
            max_draft_tokens=spec.max_draft_tokens,
            k_max=spec.control.k_max,
            pipeline=spec.pipeline,
        )
        assert seeded is not None
        log.info(
            "route_calibrated_model",
            route=spec.name,
            verify_extra_ms_per_token=round(seeded.verify_extra_s_per_token * 1000.0, 2),
            draft_ms_per_token=round(seeded.draft_s_per_token * 1000.0, 2),
            drafting="off: cannot pay on this hardware" if shared.hopeless() else "on",
        )

    # -- status ---------------------------------------------------------------------------

    def _drafting_state(self) -> dict[str, object]:
        """What the route's controllers have learned (for the status page)."""
        out: dict[str, object] = {}
        for name, ctl in self._controllers.items():
            t, c = ctl.plain_step_seconds, ctl.per_token_cost
            out[name] = {
                "plain_step_ms": None if t is None else round(t * 1000.0, 3),
                "extra_ms_per_drafted_token": None if c is None else round(c * 1000.0, 3),
                "acceptance": round(ctl.acceptance, 4),
                "rounds_seen": ctl.rounds_seen,
                "can_pay": not ctl.hopeless(),
            }
        return out

    def info(self) -> RouteInfo:
        i = self._info
        if self._ready:
            self._refresh_batch()
        return RouteInfo(
            name=self.spec.name,
            target=i.model if i else self.spec.target.model,
            draft_mode=self.spec.draft_mode,
            draft=", ".join(d.client.model or d.client.address for d in self._drafters) or None,
            ready=self._ready,
            n_ctx=i.n_ctx if i else 0,
            can_verify=i.can_verify if i else False,
            details={
                "target_address": self.spec.target.address,
                "pipeline": self.spec.pipeline,
                "max_draft_tokens": self.spec.max_draft_tokens,
                "drafters": [
                    {
                        "address": d.client.address,
                        "model": d.client.model,
                        "healthy": d.failed_at is None,
                        "draft_ms_per_token": d.draft_ms_per_token,
                    }
                    for d in self._drafters
                ],
                "error": self._error,
                # Requests running now (the load the draft-length control prices a round's
                # verify at: live runs x their width), and the most at once since start.
                "live_runs": self._live,
                "peak_live_runs": self._peak_live,
                # The target engine's continuous batching (sessions and tokens per forward
                # pass, its limits; enabled False where it does not batch), as last read.
                "batch": self._batch_details(),
                "drafting": self._drafting_state(),
                # What a Verify of each batch width costs on the target (calibrated, then
                # kept current), and how many tokens a copy therefore drafts at most.
                "verify_ms_by_width": {
                    str(w): round(v * 1000.0, 2) for w, v in self.costs.measured().items()
                },
                "copy_drafts": self.costs.copy_drafts(self.spec.max_draft_tokens),
            },
        )

    # -- one request --------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        run = RequestRun(self, request)
        try:
            async for event in run.events():
                yield event
        finally:
            await run.cleanup()
