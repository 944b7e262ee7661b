"""Incremental detokenizing of multi-byte UTF-8 split across tokens."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tightwad.spec.detok import IncrementalDetokenizer

PIECES = [b"a", b"\xc3", b"\xa9", b"\xf0\x9f", b"\x98", b"\x80", b"\xff", b" b", b""]


@pytest.mark.parametrize(
    ("tokens", "pushes", "tail"),
    [
        ([0, 1, 2], ["a", "", "é"], ""),
        ([3, 4, 5, 7], ["", "", "😀", " b"], ""),
        ([1, 0], ["", "\ufffda"], ""),  # truncated sequence then ASCII
        ([3, 4], ["", ""], "\ufffd"),  # incomplete at the end
        ([6, 8, 0], ["\ufffd", "", "a"], ""),
    ],
)
def test_pushes_hold_back_incomplete_sequences(
    tokens: list[int], pushes: list[str], tail: str
) -> None:
    detok = IncrementalDetokenizer(PIECES)
    assert [detok.push(t) for t in tokens] == pushes
    assert detok.flush() == tail


def test_unknown_token_raises() -> None:
    with pytest.raises(ValueError, match="token"):
        IncrementalDetokenizer(PIECES).push(99)


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=4), min_size=1, max_size=12),
    data=st.data(),
)
def test_concatenation_equals_one_shot_decode(pieces: list[bytes], data: st.DataObject) -> None:
    tokens = data.draw(st.lists(st.integers(0, len(pieces) - 1), max_size=30))
    detok = IncrementalDetokenizer(pieces)
    text = "".join(detok.push(t) for t in tokens) + detok.flush()
    assert text == b"".join(pieces[t] for t in tokens).decode("utf-8", errors="replace")


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=30), cuts=st.lists(st.integers(0, 120), max_size=8))
def test_valid_text_split_anywhere_never_yields_replacements(text: str, cuts: list[int]) -> None:
    raw = text.encode()
    bounds = sorted({0, len(raw), *(c for c in cuts if c <= len(raw))})
    pieces = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    detok = IncrementalDetokenizer(pieces)
    outs = [detok.push(i) for i in range(len(pieces))]
    assert "".join(outs) + detok.flush() == text
    assert all("\ufffd" not in o for o in outs) or "\ufffd" in text
