"""Tracing, metrics and logging adapters."""
