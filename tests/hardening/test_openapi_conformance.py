"""The published ``/openapi.json`` against the gateway that serves it: a real one-host stack
(``tightwad up``: Qwen2.5-Coder-0.5B, whose chat template renders tools, n-gram drafting) in its
own process.

Proves: the served document is valid OpenAPI 3.1 (its schemas valid JSON Schema 2020-12) and
carries this gateway's own limits; a bounded schemathesis run with every check (positive and
negative data, documented status codes, content types and headers, response and SSE event
schemas, 405 with ``Allow``, auth) passes over every documented operation, the examples,
coverage and fuzzing phases with a fixed seed (``TIGHTWAD_ST_SEED`` picks another) and a few
examples each, so it stays bounded; the stack is alive afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jsonschema
import pytest
import pytest_asyncio

from tightwad.engine.model_facts import read_model_facts
from tightwad.fetch_models import ensure_model

from .support import UpProcess, start_up

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

API_KEY = "sk-openapi-conformance-31c7"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "qwen2.5-coder-0.5b"
CTX = 4096
MAX_TOKENS_CAP = 8  # every generation stays short: each case is a real inference
MAX_EXAMPLES = int(os.environ.get("TIGHTWAD_ST_MAX_EXAMPLES", "60"))
SEED = int(os.environ.get("TIGHTWAD_ST_SEED", "20261203"))
HERE = Path(__file__).resolve().parent


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def up(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[UpProcess]:
    stack = await start_up(
        tmp_path_factory.mktemp("up"),
        target=ensure_model(MODEL),
        api_key=API_KEY,
        ctx_size=CTX,
        max_sessions=16,  # n choices hold n sessions, and a finished request's close late
        max_tokens_cap=MAX_TOKENS_CAP,
    )
    yield stack
    output = await stack.stop()
    # Any traceback in the gateway's output is a failure (aiohttp's refusal of a malformed
    # request, a NUL in a header, is one log line: tightwad.gateway.api).
    unexpected = _tracebacks(output)
    assert not unexpected, "\n\n".join(unexpected)[-6000:]


def _tracebacks(output: str) -> list[str]:
    """Each traceback block of ``output``, up to and including its exception's class name."""
    blocks = []
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last):"):
            continue
        j = i + 1
        while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
            j += 1
        last = lines[j] if j < len(lines) else ""
        blocks.append("\n".join([*lines[i:j], last.split(":", 1)[0]]))
    return blocks


async def _document(up: UpProcess) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{up.url}/openapi.json", headers=AUTH) as resp,
    ):
        assert resp.status == 200 and resp.content_type == "application/json"
        doc = await resp.json()
    assert isinstance(doc, dict)
    return doc


def _openapi_31_errors(doc: dict[str, Any]) -> list[str]:
    """The document checked against the OpenAPI 3.1 schema: openapi-spec-validator's when it
    is installed, else the one schemathesis loads documents with."""
    try:
        from openapi_spec_validator import OpenAPIV31SpecValidator
    except ImportError:
        from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

        return [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    return [str(e) for e in OpenAPIV31SpecValidator(doc).iter_errors()]


async def test_served_document_is_valid_openapi_31_with_this_gateways_limits(
    up: UpProcess,
) -> None:
    doc = await _document(up)
    assert doc["openapi"] == "3.1.0"
    assert _openapi_31_errors(doc) == []
    for name, schema in doc["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            pytest.fail(f"components.schemas.{name}: {exc.message}")
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["max_tokens"]["anyOf"][0]["maximum"] == MAX_TOKENS_CAP
    unavailable = doc["components"]["responses"]["E503"]
    assert "Retry-After" in unavailable["headers"]


def _schemathesis(up: UpProcess, workdir: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{up.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {API_KEY}",
        "--checks",
        "all",
        "--mode",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--no-shrink",
        "--request-timeout",
        "300",
        # Speed is the benchmarks' business: no response-time check here.
        "--max-response-time",
        "300",
        "--suppress-health-check",
        "all",
        "--output-truncate",
        "true",
        "--report",
        "ndjson",
        "--report-dir",
        str(workdir),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "TIGHTWAD_ST_MODEL": up.model,
        "TIGHTWAD_ST_CTX": str(CTX),
        "TIGHTWAD_ST_VOCAB": str(read_model_facts(ensure_model(MODEL)).n_vocab),
    }
    return subprocess.run(
        argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=1500, check=False
    )


def _answers(report_dir: Path) -> Counter[tuple[str, str, int]]:
    """(method, path, status) of every recorded interaction of the run's NDJSON report."""
    seen: Counter[tuple[str, str, int]] = Counter()
    for path in report_dir.glob("*.ndjson"):
        for line in path.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            finished = event.get("ScenarioFinished") if isinstance(event, dict) else None
            recorder = (finished or {}).get("recorder") or {}
            for interaction in (recorder.get("interactions") or {}).values():
                request, response = interaction.get("request"), interaction.get("response")
                if request and response:
                    where = urlsplit(request["uri"]).path
                    seen[(request["method"], where, response["status_code"])] += 1
    return seen


async def test_schemathesis_all_checks_pass_against_the_live_gateway(
    up: UpProcess, tmp_path: Path
) -> None:
    proc = await asyncio.to_thread(_schemathesis, up, tmp_path)
    output = proc.stdout + proc.stderr
    answers = _answers(tmp_path)
    generations = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
    served = {p: answers[("POST", p, 200)] for p in generations}
    print(output[-1500:])
    print(
        f"schemathesis (seed {SEED}, {MAX_EXAMPLES} examples): {sum(answers.values())} "
        f"recorded requests against {up.model}; generations served: {served}"
    )
    assert proc.returncode == 0, output[-12000:]
    # The run reached the model, not only the validator: each generation route served.
    assert all(n >= 3 for n in served.values()), (served, output[-4000:])
    assert up.proc.returncode is None, "the gateway died under the run"
