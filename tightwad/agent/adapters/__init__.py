"""Engines for inference servers we do not own, behind the same Engine service.

- :mod:`.llama_server` — a stock ``llama-server``: tokenizer, template, plain generation and
  greedy drafting over its HTTP API; it cannot score a draft in one pass (no prompt logprobs),
  so it reports ``can_verify=false``.
- :mod:`.ollama` — Ollama's ``/api/generate`` in raw mode: a plain target only.
- :mod:`.openai_compat` — an OpenAI-compatible ``/v1/completions`` server; verifies greedy
  drafts through ``echo`` + prompt logprobs where the server returns them (vLLM does).

All three speak HTTP through the one client of :mod:`._http` and share the session machinery
of :mod:`._base`. :mod:`.protocol` defines what the Engine service needs of any engine.
"""
