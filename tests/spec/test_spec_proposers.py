"""N-gram lookup (against a naive scan) and predicted-output alignment."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tightwad.spec.proposers import NGramProposer, PredictionProposer


def naive(tokens: list[int], k: int, min_n: int, max_n: int) -> tuple[list[int], int]:
    """Longest recurring suffix, most recent earlier occurrence, continuation copied forward."""
    n_tok = len(tokens)
    for n in range(min(max_n, n_tok), min_n - 1, -1):
        suffix = tokens[n_tok - n :]
        for start in range(n_tok - n - 1, -1, -1):
            if tokens[start : start + n] == suffix:
                seq = list(tokens)
                for i in range(k):
                    seq.append(seq[start + n + i])
                return seq[n_tok:], n
    return [], 0


@pytest.mark.parametrize(
    ("tokens", "k", "expected", "match"),
    [
        ([1, 2, 3, 4, 1, 2, 3], 3, [4, 1, 2], 3),
        ([1, 2, 3, 9, 2, 3, 7, 8, 2, 3], 2, [7, 8], 2),  # most recent occurrence wins
        ([1, 2, 3, 4], 3, [], 0),
        ([5, 5, 5], 4, [5, 5, 5, 5], 2),  # periodic tail continues into the copy
        ([1, 2, 1, 2, 1], 5, [2, 1, 2, 1, 2], 3),
        ([1, 2, 1], 0, [], 0),
    ],
)
def test_ngram_table(tokens: list[int], k: int, expected: list[int], match: int) -> None:
    proposer = NGramProposer(min_n=1, max_n=4)
    match_obj = proposer.lookup(tokens, k)
    assert list(match_obj.tokens) == expected
    assert match_obj.match_length == match == proposer.last_match_length
    assert proposer.propose(tokens, k) == expected


def test_ngram_min_n_limits_short_matches() -> None:
    proposer = NGramProposer(min_n=2, max_n=3)
    assert proposer.propose([1, 2, 3, 1], 3) == []
    assert proposer.propose([1, 2, 3, 1, 2], 3) == [3, 1, 2]


@settings(max_examples=150, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 3), max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    k=st.integers(0, 6),
    min_n=st.integers(1, 3),
    extra=st.integers(0, 3),
)
def test_ngram_incremental_equals_naive(
    tokens: list[int], cuts: list[int], k: int, min_n: int, extra: int
) -> None:
    proposer = NGramProposer(min_n=min_n, max_n=min_n + extra)
    for cut in [*sorted(cuts), len(tokens)]:
        prefix = tokens[: min(cut, len(tokens))]
        got = proposer.lookup(prefix, k)
        want, n = naive(prefix, k, min_n, min_n + extra)
        assert list(got.tokens) == want
        assert got.match_length == (n if k > 0 else 0)


def test_ngram_extend_and_rewind() -> None:
    proposer = NGramProposer(max_n=3)
    proposer.extend([1, 2, 3, 1, 2])
    assert proposer.propose(None, 2) == [3, 1]
    assert proposer.propose([1, 2, 3, 1], 2) == [2, 3]  # shorter: rebuilt
    assert list(proposer.tokens) == [1, 2, 3, 1]


def test_ngram_scales_to_long_sequences() -> None:
    import time

    tokens = [(i * 7919) % 1000 for i in range(20000)]
    proposer = NGramProposer(max_n=4)
    start = time.perf_counter()
    for end in range(1000, 20001, 50):
        proposer.propose(tokens[:end], 8)
    assert time.perf_counter() - start < 2.0


# --- predicted outputs --------------------------------------------------------------------

PRED = list(range(100, 120))  # 20 distinct tokens


def test_prediction_follows_the_output() -> None:
    prop = PredictionProposer(PRED)
    assert prop.propose([], 3) == [100, 101, 102]
    assert prop.propose([100, 101], 3) == [102, 103, 104]
    assert prop.propose(PRED, 3) == []
    assert prop.aligned


def test_prediction_run_counts_the_tokens_that_followed_it() -> None:
    prop = PredictionProposer(PRED)
    prop.propose([100, 101, 102], 1)
    assert prop.run == 3
    out = [100, 101, 102, 7, 8, 9]  # inserted 7 8 9: lost, no run
    prop.propose(out, 1)
    assert prop.run == 0
    prop.propose([*out, 103, 104], 1)  # back on track: one token re-aligned, then one more
    assert prop.run == 2
    prop.propose([*out, 103, 104, 105, 106], 1)
    assert prop.run == 4
    prop.propose([100, 101, 55, 103], 1)  # rewound and replaced: the match is "103" only
    assert prop.run == 1


def test_prediction_realigns_after_an_insertion() -> None:
    prop = PredictionProposer(PRED)
    out = [100, 101, 102, 7, 8, 9]  # inserted 7 8 9
    assert prop.propose(out, 3) == []
    assert not prop.aligned
    assert prop.propose([*out, 103], 3) == [104, 105, 106]  # single token near the anchor


def test_prediction_realigns_after_a_replacement_and_a_deletion() -> None:
    prop = PredictionProposer(PRED)
    replaced = [100, 101, 55, 103]
    assert prop.propose(replaced, 2) == [104, 105]
    prop = PredictionProposer(PRED)
    near = [100, 101, 102, 108]  # skipped 103..107: one token re-aligns near the anchor
    assert prop.propose(near, 2) == [109, 110]
    prop = PredictionProposer(PRED)
    far = [100, 101, 102, 115, 116]  # skipped 103..114: far, needs min_match tokens
    assert prop.propose(far[:4], 2) == []
    assert prop.propose(far, 2) == [117, 118]


def test_prediction_prefers_the_occurrence_after_the_divergence() -> None:
    pred = [1, 2, 3, 4, 5, 6, 1, 2, 3, 7, 8]
    prop = PredictionProposer(pred)
    out = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert prop.propose(out, 2) == [7, 8]


def test_prediction_lost_when_unrelated_and_recovers_after_rewind() -> None:
    prop = PredictionProposer(PRED)
    assert prop.propose([1, 2, 3, 4], 2) == []
    assert prop.propose([100], 2) == [101, 102]  # not an extension: resynchronised
    assert prop.position == 1


@settings(max_examples=100, deadline=None)
@given(
    pred=st.lists(st.integers(0, 5), min_size=1, max_size=40),
    out=st.lists(st.integers(0, 5), max_size=40),
    k=st.integers(1, 5),
)
def test_prediction_proposals_are_a_slice_of_the_prediction(
    pred: list[int], out: list[int], k: int
) -> None:
    prop = PredictionProposer(pred)
    for end in range(len(out) + 1):
        got = prop.propose(out[:end], k)
        assert len(got) <= k
        if got:
            pos = prop.position
            assert pos is not None and got == pred[pos : pos + k]
            assert pred[pos - 1] == out[end - 1] if end and pos else True
