"""Command-line entry points: tightwad (umbrella), tightwadctl."""
