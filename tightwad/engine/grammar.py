"""Constrained decoding: grammars compiled by llguidance over an engine's own vocabulary.

Terms:
- A :class:`GrammarSpec` is what a request asks for (a JSON schema, a Lark grammar or a
  regex), as plain text so it crosses the wire unchanged. :func:`check_grammar` compiles it
  without a vocabulary: the gateway calls it so that a grammar llguidance refuses is a 400 that
  never reaches an engine.
- A :class:`GrammarTokenizer` is llguidance's view of one model's vocabulary (token bytes,
  control tokens, end-of-generation tokens and the model's tokenizer); building one costs about
  a second for a 150k vocabulary, so an engine builds it once, on the first constrained session.
- A :class:`GrammarMatcher` is one session's grammar state after the tokens it has consumed:
  which tokens may come next (:meth:`GrammarMatcher.allowed`), which are forced
  (:meth:`GrammarMatcher.forced`), and :meth:`GrammarMatcher.rollback` so the state follows
  the KV cache when a draft is rejected.

Lossless speculation under a grammar (what the engine does with a matcher in a Verify):
the draft is first cut at its first token the grammar forbids (:meth:`GrammarMatcher.valid_prefix`);
the row at draft position ``i`` is masked by the state after ``draft[:i]``
(:meth:`GrammarMatcher.mask_for_draft`), so the distribution every acceptance rule sees is the
one plain constrained decoding would sample from; afterwards :meth:`GrammarMatcher.settle`
keeps the accepted prefix and the emitted token, rolling the rest back.

Masking sets the logits of forbidden tokens to ``-inf`` before the sampling chain (bias,
penalties, top-k, top-p, min-p, temperature), with or without a draft.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import llguidance
import numpy as np
from numpy.typing import NDArray

from tightwad.errors import InvalidRequestError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

__all__ = [
    "GrammarMatcher",
    "GrammarSpec",
    "GrammarTokenizer",
    "check_grammar",
    "grammar_tokenizer",
    "json_object_spec",
    "json_schema_spec",
]

GrammarKind = Literal["json_schema", "lark", "regex"]
_KINDS: tuple[str, ...] = ("json_schema", "lark", "regex")

# Compact JSON by default (what OpenAI's structured outputs produce): a model that is free to
# add whitespace tends to spend its length limit on newlines.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """A grammar a request constrains its output with. ``source`` is the schema's JSON text,
    a Lark grammar or a regex, per ``kind``."""

    kind: GrammarKind
    source: str

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidRequestError(
                f"grammar kind {self.kind!r} is not one of {', '.join(_KINDS)}", param="grammar"
            )


def json_schema_spec(schema: dict[str, Any]) -> GrammarSpec:
    return GrammarSpec("json_schema", json.dumps(schema, separators=(",", ":")))


def json_object_spec() -> GrammarSpec:
    """Any JSON object (``response_format: {"type": "json_object"}``)."""
    return json_schema_spec({"type": "object"})


def _llguidance_grammar(spec: GrammarSpec) -> str:
    try:
        match spec.kind:
            case "json_schema":
                return llguidance.LLMatcher.grammar_from_json_schema(
                    spec.source, defaults=_JSON_OPTIONS
                )
            case "lark":
                return llguidance.LLMatcher.grammar_from_lark(spec.source)
            case _:
                return llguidance.LLMatcher.grammar_from_regex(spec.source)
    except ValueError as exc:
        raise InvalidRequestError(f"the grammar is not valid: {exc}", param="grammar") from exc


def check_grammar(spec: GrammarSpec, param: str = "response_format") -> None:
    """Raise :class:`InvalidRequestError` (naming ``param``) with llguidance's own message when
    the grammar does not compile. Needs no vocabulary."""
    message = llguidance.LLMatcher.validate_grammar(_llguidance_grammar(spec))
    if message:
        raise InvalidRequestError(
            f"the {spec.kind.replace('_', ' ')} cannot be compiled into a grammar: {message}",
            param=param,
        )


class GrammarTokenizer:
    """llguidance's tokenizer for one vocabulary.

    ``pieces[t]`` is token t's bytes (control tokens rendered as their text, e.g.
    ``<|im_end|>``); ``control`` the ids of control tokens (they never match grammar text);
    ``eog`` the end-of-generation ids (allowed exactly where the grammar may end);
    ``tokenize`` the model's own tokenizer (text bytes -> ids, no special parsing), which
    llguidance uses to turn forced bytes into tokens."""

    def __init__(
        self,
        pieces: Sequence[bytes],
        *,
        control: Sequence[int],
        eog: Sequence[int],
        tokenize: Callable[[bytes], list[int]],
    ) -> None:
        if not eog:
            raise InvalidRequestError("a grammar needs a model with an end-of-generation token")
        ctl = set(control)
        tokens = [b"\xff" + p if t in ctl else p for t, p in enumerate(pieces)]
        self.n_vocab = len(tokens)
        self.eog = tuple(sorted(eog))
        wrapper = llguidance.TokenizerWrapper(
            _Vocab(tokens, eos=self.eog[0], special=sorted(ctl), tokenize=tokenize)
        )
        self._tok = llguidance.LLTokenizer(wrapper, eos_token=list(self.eog))

    def matcher(self, spec: GrammarSpec) -> GrammarMatcher:
        return GrammarMatcher(self, spec)

    @property
    def llguidance(self) -> llguidance.LLTokenizer:
        return self._tok


class _ModelVocab(Protocol):
    """What :func:`grammar_tokenizer` reads of a loaded model (the binding's LlamaModel)."""

    n_vocab: int
    eog: frozenset[int]

    def piece(self, token: int, *, special: bool = False) -> bytes: ...

    def is_control(self, token: int) -> bool: ...

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...


def grammar_tokenizer(model: _ModelVocab) -> GrammarTokenizer:
    """The grammar tokenizer of a loaded model (about a second for a 150k vocabulary)."""

    def tokenize(text: bytes) -> list[int]:
        return model.tokenize(
            text.decode("utf-8", "replace"), add_special=False, parse_special=False
        )

    return GrammarTokenizer(
        [model.piece(t, special=True) for t in range(model.n_vocab)],
        control=[t for t in range(model.n_vocab) if model.is_control(t)],
        eog=sorted(model.eog),
        tokenize=tokenize,
    )


class _Vocab:
    """The object llguidance's TokenizerWrapper reads (its documented duck type)."""

    def __init__(
        self,
        tokens: list[bytes],
        *,
        eos: int,
        special: list[int],
        tokenize: Callable[[bytes], list[int]],
    ) -> None:
        self.tokens = tokens
        self.eos_token_id = eos
        self.bos_token_id = None
        self.special_token_ids = special
        self._tokenize = tokenize

    def __call__(self, text: bytes) -> list[int]:
        return self._tokenize(text)


class GrammarMatcher:
    """One session's grammar state. Not thread-safe: use from the engine's compute thread."""

    def __init__(self, tokenizer: GrammarTokenizer, spec: GrammarSpec) -> None:
        self.spec = spec
        self._n_vocab = tokenizer.n_vocab
        self._m = llguidance.LLMatcher(tokenizer.llguidance, _llguidance_grammar(spec), log_level=0)
        if self._m.is_error():
            raise InvalidRequestError(
                f"the grammar cannot be compiled: {self._m.get_error()}", param="grammar"
            )
        self._draft: list[int] = []
        self._depth = 0  # draft tokens consumed tentatively (see mask_for_draft)
        self.consumed = 0

    # -- state ----------------------------------------------------------------------------

    @property
    def is_accepting(self) -> bool:
        """The output so far is complete under the grammar (an EOG token may end it)."""
        return bool(self._m.is_accepting())

    @property
    def is_stopped(self) -> bool:
        """Nothing but an EOG token can follow."""
        return bool(self._m.is_stopped())

    def allowed(self) -> NDArray[np.bool_]:
        """Shape [n_vocab]: which tokens may come next."""
        bits = np.frombuffer(self._m.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[: self._n_vocab].astype(bool)

    def mask(self, logits: NDArray[np.float32]) -> NDArray[np.float32]:
        """``logits`` (shape [n_vocab], modified in place and returned) with every token the
        grammar forbids next set to ``-inf``."""
        logits[~self.allowed()] = -np.inf
        return logits

    def forced(self) -> list[int]:
        """The tokens the grammar forces from here (empty when there is a choice)."""
        return [int(t) for t in self._m.compute_ff_tokens()]

    def valid_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` the grammar accepts from the current state."""
        return int(self._m.validate_tokens(list(tokens))) if tokens else 0

    def consume(self, token: int) -> None:
        if not self._m.consume_token(token):
            raise InvalidRequestError(
                f"token {token} is not allowed by the grammar here: {self._m.get_error()}"
            )
        self.consumed += 1

    def rollback(self, n: int) -> None:
        if n <= 0:
            return
        if n > self.consumed or not self._m.rollback(n):
            raise InvalidRequestError(f"cannot roll the grammar back {n} tokens")
        self.consumed -= n

    # -- one Verify -----------------------------------------------------------------------

    def begin_draft(self, draft: Sequence[int]) -> int:
        """Start a Verify of ``draft``; returns the length of its grammatical prefix (the
        caller cuts the draft there)."""
        n = self.valid_prefix(draft)
        self._draft = list(draft[:n])
        self._depth = 0
        return n

    def mask_for_draft(self, i: int, logits: NDArray[np.float32]) -> NDArray[np.float32]:
        """Mask the row at draft position ``i`` (the state after ``draft[:i]``), in place."""
        if i < self._depth:
            self._m.rollback(self._depth - i)
            self.consumed -= self._depth - i
            self._depth = i
        while self._depth < i:
            self.consume(self._draft[self._depth])
            self._depth += 1
        return self.mask(logits)

    def settle(self, accepted: int, next_token: int) -> None:
        """End the Verify: keep ``draft[:accepted]`` and ``next_token``."""
        if self._depth > accepted:
            self.rollback(self._depth - accepted)
            self._depth = accepted
        while self._depth < accepted:
            self.consume(self._draft[self._depth])
            self._depth += 1
        self._draft, self._depth = [], 0
        self.consume(next_token)
