"""bdcore benchmarks: standalone scripts printing JSON, and ``python -m bench`` for the full report."""
