"""The speculative loop: a route's :class:`~tightwad.gateway.types.Backend` over Engine sessions.

One request = one target session (+ one draft session when a model drafts). Each round:

1. the draft-length controller picks k from this request's measured goodput (0 = plain step);
2. a proposer drafts up to k tokens: n-gram lookup, the request's predicted output, a draft
   model (greedy: one-hot; sampled: with its sparse q), a text drafter, or hybrid (n-gram
   when it has a long match, else the model); tokens a grammar forces lead the draft for free;
3. the target verifies them in one forward pass and answers accepted n + its next token;
4. the accepted block goes through the :class:`~tightwad.spec.stops.OutputGuard` token by token
   (EOG, max_tokens, stop strings), so nothing after a stop is emitted or counted.

Every emitted token is one the target itself chose. A draft engine that fails or stalls is
dropped for the rest of the request and decoding goes on (identical output); a target failure
ends the request with :class:`~tightwad.errors.UnavailableError`.

Layout (policy + shell, as :mod:`tightwad.agent.processes.lifecycle`):

- :mod:`.policy`: every round decision as a pure function (plain stretch or round, k, forced
  head, which proposer, copy shaping, copy pauses and runs, lookahead, origins);
- :mod:`.run`: :class:`~.run.RequestRun`, the shell that awaits the sessions and applies them;
- :mod:`.drafting`: a request's draft-model session and pipelined drafts;
- :mod:`.control`: the request's draft-length controller and counters;
- :mod:`.calibration`: what a route measures at start;
- :mod:`.route`: :class:`RouteSpec` and :class:`SpecBackend`, what a route's requests share.
"""

from tightwad.gateway.loop.route import DrafterHealth, RouteSpec, SpecBackend

__all__ = ["DrafterHealth", "RouteSpec", "SpecBackend"]
