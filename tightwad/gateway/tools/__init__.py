"""Tool calling: request values and checks, per-family call syntax, streaming deltas."""
