"""Stop strings with holdback, and the token-level guard for accepted blocks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tightwad.spec.stops import BlockResult, OutputGuard, StopScanner


@pytest.mark.parametrize(
    ("stops", "chunks", "emitted", "stopped"),
    [
        (["END"], ["hello E", "N", "D world"], ["hello ", "", ""], True),
        (["END"], ["hello E", "Nx"], ["hello ", "ENx"], False),
        (["\n\n"], ["a\n", "\nb"], ["a", ""], True),
        (["ab", "b"], ["xab"], ["x"], True),  # earliest start wins
        (["abc", "bd"], ["ab", "d"], ["", "a"], True),
        ([], ["abc"], ["abc"], False),
        ([""], ["abc"], ["abc"], False),  # empty stop strings are ignored
        (["stop"], ["sto", "p", "more"], ["", "", ""], True),
    ],
)
def test_stop_scanner_table(
    stops: list[str], chunks: list[str], emitted: list[str], stopped: bool
) -> None:
    scanner = StopScanner(stops)
    assert [scanner.feed(c) for c in chunks] == emitted
    assert scanner.stopped is stopped


def test_flush_releases_held_text_unless_stopped() -> None:
    scanner = StopScanner(["END"])
    assert scanner.feed("the EN") == "the "
    assert scanner.held == "EN"
    assert scanner.flush() == "EN"
    stopped = StopScanner(["x"])
    stopped.feed("ax")
    assert stopped.flush() == "" and stopped.feed("more") == ""
    assert stopped.matched == "x"


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc\n", max_size=40),
    stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=10),
)
def test_nothing_after_a_stop_is_ever_emitted(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    scanner = StopScanner(stops)
    out = "".join(scanner.feed(text[a:b]) for a, b in itertools.pairwise(bounds))
    out += scanner.flush()
    # Oracle: text generated one character at a time stops at the first stop string to complete.
    hits = [(i + len(s), i) for s in stops if s and (i := text.find(s)) >= 0]
    assert out == (text[: min(hits)[1]] if hits else text)
    assert scanner.stopped is bool(hits)


# --- token level ----------------------------------------------------------------------------

PIECES = [b"He", b"llo", b" wor", b"ld", b"<eos>", b"!", b"\xc3", b"\xa9", b"EN", b"D"]
EOS = 4


def guard(**kwargs: object) -> OutputGuard:
    return OutputGuard(PIECES, eog_token_ids=[EOS], **kwargs)  # type: ignore[arg-type]


def test_eos_inside_a_block_is_not_kept_nor_counted() -> None:
    g = guard()
    assert g.push_block([0, 1, 4, 5]) == BlockResult(2, "Hello", "stop")
    assert g.count == 2
    assert g.push_block([5]) == BlockResult(0, "", "stop")


def test_max_tokens_cuts_the_block() -> None:
    g = guard(max_tokens=3)
    assert g.push_block([0, 1]) == BlockResult(2, "Hello", None)
    assert g.push_block([2, 3, 5]) == BlockResult(1, " wor", "length")
    assert g.count == 3


def test_zero_max_tokens_keeps_nothing() -> None:
    assert guard(max_tokens=0).push_block([0]) == BlockResult(0, "", "length")


def test_stop_string_across_tokens_inside_a_block() -> None:
    g = guard(stop_strings=["END"])
    assert g.push_block([0, 8]) == BlockResult(2, "He", None)  # "EN" held back
    assert g.push_block([9, 5, 1]) == BlockResult(1, "", "stop")
    assert g.count == 3


def test_held_text_is_released_at_length_and_at_eos() -> None:
    g = guard(stop_strings=["END"], max_tokens=2)
    assert g.push_block([0, 8]) == BlockResult(2, "HeEN", "length")
    g = guard(stop_strings=["END"])
    assert g.push_block([8, 6, 4]) == BlockResult(2, "EN\ufffd", "stop")


def test_multibyte_char_completing_later_is_emitted_whole() -> None:
    g = guard()
    assert g.push_block([0, 6]).text == "He"
    assert g.push_block([7]).text == "é"
    assert g.finish() == ""


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.lists(st.integers(0, len(PIECES) - 1), max_size=25),
    cuts=st.lists(st.integers(0, 25), max_size=6),
    stops=st.lists(st.sampled_from(["END", "lo w", "!", "ld!", "é"]), max_size=2),
    max_tokens=st.none() | st.integers(0, 25),
)
def test_guard_matches_a_one_shot_reference(
    tokens: list[int], cuts: list[int], stops: list[str], max_tokens: int | None
) -> None:
    g = guard(stop_strings=stops, max_tokens=max_tokens)
    bounds = sorted({0, len(tokens), *(c for c in cuts if c <= len(tokens))})
    text, kept = "", 0
    for a, b in itertools.pairwise(bounds):
        res = g.push_block(tokens[a:b])
        text, kept = text + res.text, kept + res.kept
        assert res.kept <= b - a
    text += g.finish()
    # reference: cut at EOS / max_tokens, decode, cut at the first stop
    ref_tokens = tokens[: tokens.index(EOS)] if EOS in tokens else tokens
    if max_tokens is not None:
        ref_tokens = ref_tokens[:max_tokens]
    full = b"".join(PIECES[t] for t in ref_tokens).decode("utf-8", errors="replace")
    hits = [i for i in (full.find(s) for s in stops) if i >= 0]
    assert text == (full[: min(hits)] if hits else full)
    assert kept == g.count <= len(ref_tokens)
    if hits:
        assert g.finish_reason == "stop"
        # no token after the one completing the stop is counted
        done = b"".join(PIECES[t] for t in ref_tokens[: kept - 1]).decode(errors="replace")
        assert not any(s in done for s in stops)
