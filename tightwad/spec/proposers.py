"""Draft-free proposers: n-gram lookup over the sequence, and OpenAI predicted outputs.

Owns :class:`NGramProposer` and :class:`PredictionProposer`. Both work on token ids only, keep
an index that is updated as tokens are appended (no O(n^2) rescans), and resynchronise
themselves when handed a sequence that is not an extension of what they saw (a rewind). A
proposal is only a guess: acceptance decides, so a wrong guess costs time, never correctness.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["NGramMatch", "NGramProposer", "PredictionProposer"]


@dataclass(frozen=True, slots=True)
class NGramMatch:
    """A lookup result: the proposed ``tokens`` and the n of the suffix that matched (0 = none).

    ``source`` is the position in the sequence where the copied continuation starts (-1 when
    nothing matched).
    """

    tokens: tuple[int, ...]
    match_length: int
    source: int


_NO_MATCH = NGramMatch(tokens=(), match_length=0, source=-1)


def _copy_forward(seq: Sequence[int], start: int, k: int) -> list[int]:
    """Copy k tokens from ``seq[start:]``, continuing into the copy itself (LZ77-style), so a
    periodic tail proposes its continuation rather than stopping at the end of the sequence."""
    n = len(seq)
    out: list[int] = []
    for i in range(k):
        src = start + i
        out.append(seq[src] if src < n else out[src - n])
    return out


class NGramProposer:
    """Prompt-lookup decoding: copy what followed the most recent earlier occurrence of the
    longest matching suffix (``max_n`` down to ``min_n`` tokens).

    The index maps each n-gram to the position of the token that followed its most recent
    occurrence; appending a token costs O(max_n - min_n + 1).
    """

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError("min_n/max_n: need 1 <= min_n <= max_n")
        self.min_n = min_n
        self.max_n = max_n
        self._tokens: list[int] = []
        self._index: dict[int, dict[tuple[int, ...], int]] = {}
        self._last_match = 0
        self.reset()

    def reset(self, tokens: Sequence[int] = ()) -> None:
        """Forget everything and index ``tokens``."""
        self._tokens = []
        self._index = {n: {} for n in range(self.min_n, self.max_n + 1)}
        self.extend(tokens)

    def extend(self, new_tokens: Sequence[int]) -> None:
        """Append tokens to the indexed sequence."""
        seq = self._tokens
        for token in new_tokens:
            j = len(seq)
            for n in range(self.min_n, min(self.max_n, j) + 1):
                self._index[n][tuple(seq[j - n : j])] = j
            seq.append(int(token))

    @property
    def tokens(self) -> Sequence[int]:
        """The indexed sequence (read-only view by convention)."""
        return self._tokens

    @property
    def last_match_length(self) -> int:
        """``match_length`` of the latest lookup/propose."""
        return self._last_match

    def sync(self, tokens: Sequence[int]) -> None:
        """Make the index cover exactly ``tokens``: extend when it grows, rebuild otherwise."""
        seen = len(self._tokens)
        if len(tokens) >= seen and list(tokens[:seen]) == self._tokens:
            self.extend(tokens[seen:])
        else:
            self.reset(tokens)

    def lookup(self, tokens: Sequence[int] | None, k: int) -> NGramMatch:
        """Up to k proposed tokens after ``tokens`` (None = the indexed sequence as is)."""
        if tokens is not None:
            self.sync(tokens)
        seq = self._tokens
        match = _NO_MATCH
        if k > 0:
            for n in range(min(self.max_n, len(seq)), self.min_n - 1, -1):
                start = self._index[n].get(tuple(seq[len(seq) - n :]))
                if start is not None:
                    copied = _copy_forward(seq, start, k)
                    match = NGramMatch(tokens=tuple(copied), match_length=n, source=start)
                    break
        self._last_match = match.match_length
        return match

    def propose(self, tokens: Sequence[int] | None, k: int) -> list[int]:
        """Up to k proposed tokens (empty when no suffix of length >= min_n recurs)."""
        return list(self.lookup(tokens, k).tokens)


class PredictionProposer:
    """OpenAI predicted outputs (``prediction: {type: "content", content}``) as a proposer.

    Keeps an alignment point in the prediction: while the output follows the prediction,
    propose the prediction's next tokens. When the output diverges, re-align by finding the
    output's recent suffix in the prediction (the longest backward match, nearest after the
    divergence point), so an edit in the middle does not lose the rest of the prediction.
    A single-token match re-aligns only within ``near`` tokens after the divergence point;
    elsewhere at least ``min_match`` tokens must agree.
    """

    def __init__(
        self,
        prediction_tokens: Sequence[int],
        *,
        min_match: int = 2,
        max_match: int = 16,
        near: int = 8,
        max_candidates: int = 256,
    ) -> None:
        if not 1 <= min_match <= max_match:
            raise ValueError("min_match/max_match: need 1 <= min_match <= max_match")
        self.prediction: tuple[int, ...] = tuple(int(t) for t in prediction_tokens)
        self.min_match = min_match
        self.max_match = max_match
        self.near = near
        self.max_candidates = max_candidates
        self._positions: dict[int, list[int]] = {}
        for pos, token in enumerate(self.prediction):
            self._positions.setdefault(token, []).append(pos)
        self._output: list[int] = []
        self._pos: int | None = 0
        self._anchor = 0
        self._run = 0

    @property
    def run(self) -> int:
        """How many of the output's last tokens follow the prediction where it is aligned now
        (a long run means the output is copying the prediction)."""
        return self._run if self._pos is not None else 0

    @property
    def aligned(self) -> bool:
        """Whether the output currently follows the prediction."""
        return self._pos is not None

    @property
    def position(self) -> int | None:
        """Index in the prediction of the token expected next (None while lost)."""
        return self._pos

    def sync(self, output: Sequence[int]) -> int:
        """Catch up with ``output`` (the completion so far); returns :attr:`run`."""
        self._sync(output)
        return self.run

    def propose(self, output: Sequence[int], k: int) -> list[int]:
        """Up to k prediction tokens expected after ``output`` (the completion so far)."""
        self._sync(output)
        if self._pos is None or k <= 0:
            return []
        return list(self.prediction[self._pos : self._pos + k])

    def _sync(self, output: Sequence[int]) -> None:
        seen = len(self._output)
        if len(output) < seen or list(output[:seen]) != self._output:
            self._output, self._pos, self._anchor, self._run = [], 0, 0, 0
            seen = 0
        for token in output[seen:]:
            self._advance(int(token))

    def _advance(self, token: int) -> None:
        self._output.append(token)
        pos = self._pos
        if pos is not None and pos < len(self.prediction) and self.prediction[pos] == token:
            self._pos = pos + 1
            self._run += 1
            return
        if pos is not None:
            self._anchor = pos
        self._pos = self._realign()
        self._run = 0 if self._pos is None else self._backward_match(self._pos - 1)

    def _realign(self) -> int | None:
        """Position after the best match of the output's suffix in the prediction, or None."""
        positions = self._positions.get(self._output[-1], [])
        if not positions:
            return None
        centre = bisect.bisect_left(positions, self._anchor)
        half = self.max_candidates // 2
        best: tuple[int, int, int] | None = None
        for end in positions[max(0, centre - half) : centre + half]:
            length = self._backward_match(end)
            near = self._anchor <= end < self._anchor + self.near
            if length < self.min_match and not near:
                continue
            distance = (
                end - self._anchor
                if end >= self._anchor
                else len(self.prediction) + (self._anchor - end)
            )
            score = (length, -distance, end)
            if best is None or score > best:
                best = score
        return None if best is None else best[2] + 1

    def _backward_match(self, end: int) -> int:
        """How many of the output's last tokens equal the prediction ending at ``end``."""
        out, pred = self._output, self.prediction
        length = 0
        while (
            length < self.max_match
            and length <= end
            and length < len(out)
            and out[-1 - length] == pred[end - length]
        ):
            length += 1
        return length
