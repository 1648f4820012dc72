"""Benchmarks run by ``make bench-*``: each prints one JSON line of measured figures."""

__all__: list[str] = []
