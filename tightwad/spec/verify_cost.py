"""What a Verify of each batch width costs on one target, and which width a copy should use.

Owns :class:`VerifyCosts`. Pure: the caller passes measured seconds (a route calibrates a few
widths at start and reports every round's engine-side verify time).

Why. A Verify of width w (the pending token plus w - 1 drafted ones) is one forward pass of
w tokens, and its cost is not linear in w: llama.cpp's CPU matrix kernels work in tiles, so on
a CPU 16 tokens can cost *less* than 15 and a 64-wide verify less per token than a 49-wide one
(measurements in ``benchmarks/README.md``). A GPU has another curve (nearly flat to its
occupancy limit). Measuring beats guessing: a copy draft (a long n-gram match, a predicted
output) is cut to the width that emits most tokens per second if accepted whole.

Model. ``seconds(w)`` is the measured cost of width w (an EWMA over observations), else a
linear interpolation between the measured neighbours (beyond the widest: its per-token cost).
Interpolation is optimistic between tiles (47 looks as cheap per token as 48), so decisions use
measured widths only: :meth:`copy_drafts` picks how many of ``available`` drafted tokens to
send — the measured width up to ``available + 1`` with the lowest seconds per emitted token.
When the request's budget is what limits the draft (``budget_limited``), tokens after it are
worthless, so it minimises the total time of the remaining tokens instead (a shortest path over
widths). Both assume the copy is accepted whole — which is what a copy is for; a copy that
breaks is handled by the caller's pause logic.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["CALIBRATION_WIDTHS", "VerifyCosts"]

#: Widths a route measures at start (capped by its max draft + 1): small ones for model
#: drafts, then the tile multiples that matter on CPUs.
CALIBRATION_WIDTHS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


class VerifyCosts:
    """Measured Verify seconds by batch width for one target (see the module docstring)."""

    def __init__(self, measured: Mapping[int, float] | None = None, *, decay: float = 0.7):
        if not 0.0 <= decay < 1.0:
            raise ValueError("decay: within [0, 1)")
        self.decay = decay
        self._s: dict[int, float] = {}
        for width, secs in (measured or {}).items():
            self.observe(width, secs)

    def observe(self, width: int, seconds: float) -> None:
        """A Verify of ``width`` tokens took ``seconds`` (engine-side)."""
        if width < 1:
            raise ValueError("width: must be >= 1")
        if seconds <= 0.0:
            return
        old = self._s.get(width)
        self._s[width] = seconds if old is None else self.decay * old + (1 - self.decay) * seconds

    @property
    def widths(self) -> tuple[int, ...]:
        """Measured widths, ascending."""
        return tuple(sorted(self._s))

    def measured(self) -> dict[int, float]:
        return dict(sorted(self._s.items()))

    def __bool__(self) -> bool:
        return bool(self._s)

    def seconds(self, width: int) -> float | None:
        """Measured or interpolated seconds of a Verify of ``width`` tokens (None: nothing
        measured yet)."""
        if width < 1:
            raise ValueError("width: must be >= 1")
        if width in self._s:
            return self._s[width]
        if not self._s:
            return None
        ws = self.widths
        below = [w for w in ws if w < width]
        above = [w for w in ws if w > width]
        if not below:
            return self._s[ws[0]] * width / ws[0]
        lo = below[-1]
        if not above:
            return self._s[lo] * width / lo
        hi = above[0]
        frac = (width - lo) / (hi - lo)
        return self._s[lo] + frac * (self._s[hi] - self._s[lo])

    def copy_drafts(self, available: int, *, budget_limited: bool = False) -> int:
        """How many of ``available`` drafted tokens a copy round should send: a measured width
        minus one (``available`` unchanged while no measured width fits; 0 only when
        ``budget_limited`` and plain steps are the cheapest way to the end)."""
        fits = [w for w in self.widths if 2 <= w <= available + 1]
        if available <= 0 or not fits:
            return max(0, available)
        if budget_limited:
            return self._widest_step(available + 1) - 1
        return min(fits, key=lambda w: (self._s[w] / w, -w)) - 1

    def _widest_step(self, tokens: int) -> int:
        """The widest Verify of the cheapest way to emit exactly ``tokens`` tokens by Verifies
        of measured widths (plain steps where nothing fits) or all of them in one round, all
        accepted: it goes first, while the copy still holds (1 = plain steps are cheapest)."""
        plain = self.seconds(1)
        assert plain is not None
        best = [0.0] + [float("inf")] * tokens
        step = [0] * (tokens + 1)
        # Widest first: on a tie the fewer, wider rounds win (each round trip costs too).
        widths = sorted((w for w in self.widths if w > 1), reverse=True)
        for t in range(1, tokens + 1):
            for w in widths:
                cost = self._s[w] + best[t - w] if w <= t else float("inf")
                if cost < best[t] * (1.0 - 1e-9):
                    best[t], step[t] = cost, w
            if plain + best[t - 1] < best[t] * (1.0 - 1e-9):
                best[t], step[t] = plain + best[t - 1], 1
        # The whole rest in one round, at its interpolated cost (one round trip, not several).
        whole = self.seconds(tokens)
        if tokens > 1 and whole is not None and whole <= best[tokens] * (1.0 + 1e-9):
            return tokens
        widest, t = 1, tokens
        while t > 0:
            widest = max(widest, step[t])
            t -= step[t]
        return widest
