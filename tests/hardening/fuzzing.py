"""Hostile-input generation for the gateway fuzzers, driven by the gateway's OpenAPI document.

``from_schema`` turns a JSON Schema of ``/openapi.json`` into a hypothesis strategy of values
that conform to it; ``mutated_bodies`` then breaks them: wrong types, unknown fields, missing
required fields, hostile strings (lone surrogates, NULs, RTL marks, 1 MB strings), huge
numbers, nesting. ``raw_requests`` builds requests below JSON: invalid UTF-8, truncated and
deeply nested documents, wrong content types, wrong methods, odd paths. ``check_response``
asserts the contract: never a 5xx, every error an OpenAI ``{"error": {...}}`` body.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

HOSTILE_CHARS = [
    "\x00",
    "\ud800",  # lone high surrogate
    "\udfff",  # lone low surrogate
    "\u202e",  # RTL override
    "\u200f",  # RTL mark
    "\u200b",  # zero width space
    "\ufeff",  # BOM
    "\uffff",
    "\U0001f600",
    "\\",
    '"',
    "\n",
    "%00",
    "{{",
    "<|im_start|>",
    "</s>",
]
MEGABYTE = "A" * (1024 * 1024)

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from([c for c in HOSTILE_CHARS if len(c) == 1]), max_size=20),
    st.lists(st.sampled_from(HOSTILE_CHARS) | st.text(max_size=5), max_size=10).map("".join),
    st.just(MEGABYTE),
    st.just("\ud800" * 1000),
)
huge_numbers = st.sampled_from(
    [2**63, -(2**63) - 1, 2**64, 10**30, -1, 0, 1e308, -1e308, 5e-324, 2**53 + 1]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_numbers,
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.sampled_from(HOSTILE_CHARS), children, max_size=4
        )
    ),
    max_leaves=12,
)


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


def from_schema(schema: dict[str, Any], doc: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that conform to a (small subset of) JSON Schema."""
    schema = _resolve(schema, doc)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s, doc) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        lo = schema.get("minimum")
        hi = schema.get("maximum", None if lo is None else lo + 64)
        return st.integers(min_value=lo, max_value=hi)
    if kind == "number":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -10))
        hi = schema.get("maximum", lo + 10)
        return st.floats(min_value=lo, max_value=hi, exclude_min="exclusiveMinimum" in schema)
    if kind == "string":
        return st.text(max_size=30)
    if kind == "array":
        items = from_schema(schema.get("items", {"type": "string"}), doc)
        return st.lists(
            items, min_size=schema.get("minItems", 0), max_size=schema.get("maxItems", 3)
        )
    if kind == "object":
        props = schema.get("properties", {})
        required = schema.get("required", [])
        req = st.fixed_dictionaries({k: from_schema(props[k], doc) for k in required})
        optional = st.fixed_dictionaries(
            {}, optional={k: from_schema(v, doc) for k, v in props.items() if k not in required}
        )
        return st.builds(lambda a, b: {**b, **a}, req, optional)
    return json_values


def mutated_bodies(schema: dict[str, Any], doc: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Bodies that conform to ``schema``, then (usually) broken in a few places."""
    return _mutated(from_schema(schema, doc), tuple(_resolve(schema, doc).get("properties", {})))


@st.composite
def _mutated(draw: st.DrawFn, conforming: st.SearchStrategy[Any], props: tuple[str, ...]) -> Any:
    body = draw(conforming)
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["retype", "unknown", "drop", "hostile_nested"]))
        if action == "retype":
            body[draw(st.sampled_from(props))] = draw(json_values)
        elif action == "unknown":
            body[draw(st.text(max_size=12) | st.sampled_from(HOSTILE_CHARS))] = draw(json_values)
        elif action == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif action == "hostile_nested":
            text = draw(hostile_text)
            if isinstance(body.get("messages"), list) and body["messages"]:
                body["messages"][0] = {"role": "user", "content": text}
            elif "prompt" in body:
                body["prompt"] = text
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not even an object
    return body


def encode(value: Any, *, raw_unicode: bool) -> bytes:
    """JSON bytes; ``raw_unicode`` writes lone surrogates as (invalid) UTF-8 bytes."""
    text = json.dumps(value, ensure_ascii=not raw_unicode)
    return text.encode("utf-8", "surrogatepass")


def nested(depth: int, opener: str = "[") -> bytes:
    closer = "]" if opener == "[" else "}"
    if opener == "{":
        return ('{"a":' * depth + "1" + closer * depth).encode()
    return (opener * depth + closer * depth).encode()


@dataclass(frozen=True)
class RawRequest:
    method: str
    path: str
    body: bytes
    content_type: str | None


GENERATION_PATHS = ["/v1/chat/completions", "/v1/completions"]
GET_PATHS = [
    "/v1/models",
    "/v1/models/fake",
    "/v1/tightwad/status",
    "/metrics",
    "/healthz",
    "/readyz",
    "/openapi.json",
]
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.just(b"\xff\xfe\xfd"),
    st.just(b'{"model": "fake\xc3\x28", "prompt": "x"}'),  # invalid UTF-8 inside a string
    st.just(b'{"model": "fake", "prompt": "\xed\xa0\x80"}'),  # CESU surrogate bytes
    st.just(b"\xef\xbb\xbf" + b'{"model": "fake", "prompt": "x"}'),  # UTF-8 BOM
    st.just(b'{"model": "fake", "prompt": "x"'),  # truncated
    st.just(b'{"model": "fake", "model": 3, "prompt": "x"}'),  # duplicate key
    st.just(b'{"model": "fake", "prompt": "x", "max_tokens": 1e999999}'),
    st.just(b'{"model": "fake", "prompt": "x", "max_tokens": NaN}'),
    st.just(b'{"model": "fake", "prompt": "x", "seed": 123456789012345678901234567890}'),
    st.just(b"null"),
    st.just(b""),
    st.integers(1, 400).map(nested),
    st.integers(1, 400).map(lambda d: nested(d, "{")),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        None,
    ]
)
odd_paths = st.one_of(
    st.sampled_from([*GENERATION_PATHS, *GET_PATHS]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(
        lambda t: "/" + t.replace("?", "").replace("#", "")
    ),
    st.sampled_from(
        [
            "/v1/models/%00",
            "/v1/models/%ED%A0%80",
            "/v1/models/" + "a" * 4000,
            "/v1/models/..%2F..%2Fetc%2Fpasswd",
            "/v1/chat/completions/",
            "/V1/CHAT/COMPLETIONS",
            "/v1//completions",
            "/v1/models/%E2%80%AE",
        ]
    ),
)
raw_requests = st.builds(
    RawRequest,
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=odd_paths,
    body=raw_bodies,
    content_type=content_types,
)


def send(
    port: int,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    timeout: float = 30.0,
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def check_error_body(payload: Any) -> None:
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)


def check_response(status: int, content_type: str, body: bytes, *, method: str = "GET") -> None:
    """The gateway's contract for any request: no 5xx; errors are OpenAI bodies."""
    assert status < 500, (status, body[:300])
    if method == "HEAD":
        return
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, body[:200])
        check_error_body(json.loads(body))
    elif content_type.startswith("text/event-stream"):
        events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
        assert events, body[:200]
        assert events[-1] == "[DONE]", body[-300:]
        for event in events[:-1]:
            assert "error" not in json.loads(event), event
    elif content_type.startswith("application/json"):
        assert isinstance(json.loads(body), dict)
