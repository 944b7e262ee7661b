"""Tests of tightwad.agent."""
