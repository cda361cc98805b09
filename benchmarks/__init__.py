"""Benchmarks: figures, never pass/fail timings (see benchmarks/README.md)."""
