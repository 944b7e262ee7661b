"""Incremental detokenizing: token ids in, complete UTF-8 text out, as soon as it is complete.

Owns :class:`IncrementalDetokenizer`. Guarantee: the concatenation of every ``push`` and the
final ``flush`` equals ``b"".join(pieces[t] for t in tokens).decode("utf-8", errors="replace")``;
a multi-byte character split across tokens is emitted once its last byte arrives, and invalid
bytes become U+FFFD exactly where a one-shot decode would put them.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

__all__ = ["IncrementalDetokenizer"]


class IncrementalDetokenizer:
    """Turns token ids into text using ``pieces[i]`` = the bytes token i renders to."""

    __slots__ = ("_decoder", "_pieces")

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self._pieces = pieces
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """Text completed by ``token``; an incomplete multi-byte tail is held back."""
        if not 0 <= token < len(self._pieces):
            raise ValueError(f"token: id {token} outside the vocabulary of {len(self._pieces)}")
        return self._decoder.decode(self._pieces[token], final=False)

    def push_many(self, tokens: Sequence[int]) -> str:
        """Text completed by ``tokens``, pushed in order."""
        return "".join(self.push(token) for token in tokens)

    def flush(self) -> str:
        """End of stream: the held-back bytes, invalid leftovers as U+FFFD. Resets the state."""
        return self._decoder.decode(b"", final=True)
