"""What a route measures at start: the target's Verify cost per batch width, and for a draft
model what a draft step costs, so the first request already knows whether drafting can pay.

Owns :func:`measure` (the I/O: one calibration session on the target, one on a drafter) and
:func:`seed_model_control` (pure: what the measurement means for the route's model-drafting
controller). Where even near-perfect acceptance could not pay (e.g. a CPU, where verifying 8
tokens costs several plain steps), model-drafting requests then start plain and never pay for
the drafter's prefill; the controller's rare probe re-measures. A failure is only logged by
the caller: the route then drafts at the lengths it is asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from tightwad.gateway.engine_client import EngineClient
from tightwad.spec.draft_control import DraftLengthController
from tightwad.spec.sampling import SamplingConfig
from tightwad.spec.verify_cost import CALIBRATION_WIDTHS, VerifyCosts

__all__ = ["CALIBRATION_TEXT", "Calibration", "ModelSeed", "measure", "seed_model_control"]

#: Text the calibration sessions decode (code: repetitive enough for any vocabulary).
CALIBRATION_TEXT = "def fibonacci(n):\n    if n < 2:\n        return n\n" * 4
#: Plain steps measured; the fastest counts.
PLAIN_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class Calibration:
    """``costs``: Verify seconds by width; ``plain_s``: the fastest of
    :data:`PLAIN_SAMPLES` plain steps (a round trip included);
    ``draft_s_per_token``: a draft model's seconds per drafted token (None: not measured)."""

    costs: VerifyCosts
    plain_s: float
    draft_s_per_token: float | None = None


async def measure(
    target: EngineClient,
    *,
    n_ctx: int,
    max_draft_tokens: int,
    timeout_s: float,
    drafter: EngineClient | None = None,
) -> Calibration:
    """Measure the target's Verify at :data:`CALIBRATION_WIDTHS` (up to ``max_draft_tokens``
    + 1 and the context), and ``drafter``'s draft step. Raises the session's
    :class:`~tightwad.errors.TightwadError` or ``TimeoutError``; the sessions are closed
    whatever happens."""
    tokens = await target.tokenize(CALIBRATION_TEXT, add_special=True, parse_special=False)
    tsess = target.session(timeout_s=timeout_s)
    dsess = drafter.session(timeout_s=timeout_s) if drafter is not None else None
    per_draft: float | None = None
    costs = VerifyCosts()
    try:
        await tsess.open(tokens, SamplingConfig())
        used = len(tokens)
        # The fastest of a few plain steps: contention on a shared host only ever adds time,
        # and a slow plain step would make any drafting look cheap next to it.
        steps, engine_s = [], []
        for _ in range(PLAIN_SAMPLES):
            t0 = time.perf_counter()
            res = await tsess.verify([])
            steps.append(time.perf_counter() - t0)
            engine_s.append(res.verify_ms / 1000.0)
            used += 1
        t_plain = min(steps)
        costs.observe(1, min(engine_s))
        # A junk draft (one repeated token) is rejected at once: the session grows by one
        # token per Verify, whatever its width.
        junk = tokens[1]
        for width in CALIBRATION_WIDTHS[1:]:
            if width - 1 > max_draft_tokens or used + width >= n_ctx:
                break
            res = await tsess.verify([junk] * (width - 1))
            costs.observe(width, res.verify_ms / 1000.0)
            used += 1 + res.accepted
        if dsess is not None:
            await dsess.open(tokens, SamplingConfig())
            t0 = time.perf_counter()
            prop = await dsess.draft(8, keep=len(tokens))
            per_draft = (time.perf_counter() - t0) / max(1, len(prop.tokens))
    finally:
        for sess in (dsess, tsess):
            if sess is None:
                continue
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sess.close(), 5.0)
    return Calibration(costs, t_plain, per_draft)


@dataclass(frozen=True, slots=True)
class ModelSeed:
    """What :func:`seed_model_control` gave the controller (for the log line)."""

    verify_extra_s_per_token: float
    draft_s_per_token: float


def seed_model_control(
    shared: DraftLengthController,
    cal: Calibration,
    *,
    max_draft_tokens: int,
    k_max: int,
    pipeline: bool,
) -> ModelSeed | None:
    """Seed the route's model-drafting controller from a calibration with a draft step: the
    extra cost per drafted token of a round at the controller's usual widths (pipelined
    drafting hides the draft step behind the verify of the round before). None (nothing
    seeded) without a measured draft step."""
    per_draft = cal.draft_s_per_token
    if per_draft is None:
        return None
    costs = cal.costs
    k = max(1, min(8, max_draft_tokens, k_max))
    wide = costs.seconds(k + 1) or 0.0
    verify_extra = max(0.0, wide - (costs.seconds(1) or 0.0)) / k
    per_token = verify_extra if pipeline else verify_extra + per_draft
    shared.seed(cal.plain_s, per_token)
    shared.use_verify_costs(costs.seconds, draft_per_token=0.0 if pipeline else per_draft)
    return ModelSeed(verify_extra, per_draft)
