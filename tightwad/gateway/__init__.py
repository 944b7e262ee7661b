"""The OpenAI-compatible HTTP gateway and its speculative loop (tightwad-gateway)."""
