"""Cluster state, placement and orchestration (tightwad-controller)."""
