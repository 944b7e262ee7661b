"""Engines for inference servers we do not own, behind the same Engine service.

- :mod:`.llama_server` — a stock ``llama-server``: tokenizer, template, plain generation and
  greedy drafting over its HTTP API; it cannot score a draft in one pass (no prompt logprobs),
  so it reports ``can_verify=false``.
- :mod:`.ollama` — Ollama's ``/api/generate`` in raw mode: a plain target only (text in and
  out; its tokens are UTF-8 bytes, as Ollama shows no token ids).
- :mod:`.openai_compat` — an OpenAI-compatible ``/v1/completions`` server; verifies greedy
  drafts through ``echo`` + prompt logprobs where the server returns them (vLLM does).

All three speak HTTP through the one client of :mod:`._http` (under the cluster file's
``upstreams`` URL policy, :mod:`tightwad.url_policy`, when one is given) and share the session
machinery of :mod:`._base`. :mod:`.protocol` defines what the Engine service needs of any engine.
"""
