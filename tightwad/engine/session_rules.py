"""The session protocol's checks, shared by every engine (embedded and HTTP adapters).

Each function raises the error a client should see and otherwise returns the value the
command works on, so an engine states a rule once: what a prompt must be to open, what a
command may do to a session's token list (rewind, draft alignment, verify's room).
"""

from __future__ import annotations

from collections.abc import Sequence

from tightwad.errors import ContextLengthError, InvalidRequestError
from tightwad.spec.sampling import SamplingConfig, SparseDist

__all__ = [
    "check_live",
    "check_open",
    "check_rewind",
    "check_tokens",
    "draft_alignment",
    "verify_draft",
]


def check_tokens(tokens: Sequence[int], n_vocab: int) -> None:
    """Every id must be in the vocabulary."""
    for t in tokens:
        if not 0 <= t < n_vocab:
            raise InvalidRequestError(f"token id {t} is outside the vocabulary (0..{n_vocab - 1})")


def check_open(
    prompt: Sequence[int], sampling: SamplingConfig, *, n_vocab: int, ctx_size: int
) -> None:
    """A non-empty prompt of known ids that fits the per-request context, and a logit_bias
    over known ids."""
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


def check_live(closed: bool) -> None:
    if closed:
        raise InvalidRequestError("the session is closed")


def check_rewind(keep: int, n_tokens: int) -> None:
    if not 1 <= keep <= n_tokens:
        raise InvalidRequestError(f"rewind keep={keep} outside 1..{n_tokens}")


def draft_alignment(
    tokens: Sequence[int], keep: int, append: Sequence[int], *, n_vocab: int
) -> list[int]:
    """The token list a Draft aligns the session to (keep ``keep`` tokens, append ``append``)."""
    check_tokens(append, n_vocab)
    if keep > len(tokens):
        raise InvalidRequestError(f"draft keep={keep} exceeds the {len(tokens)} tokens")
    new = [*tokens[:keep], *append]
    if not new:
        raise InvalidRequestError("draft would leave the session empty")
    return new


def verify_draft(
    draft: Sequence[int],
    q: Sequence[SparseDist] | None,
    *,
    room: int,
    n_vocab: int,
) -> tuple[list[int], list[SparseDist] | None]:
    """The draft a Verify scores: known ids, one q per token when q is given, cut so that the
    draft and the emitted token fit the session's ``room``."""
    check_tokens(draft, n_vocab)
    if q is not None and len(q) != len(draft):
        raise InvalidRequestError(
            f"verify got {len(draft)} draft tokens but {len(q)} draft distributions"
        )
    if room <= 0:
        raise ContextLengthError("the session's context is full")
    cut = list(draft[: max(0, room - 1)])
    return cut, (list(q[: len(cut)]) or None) if q is not None else None
