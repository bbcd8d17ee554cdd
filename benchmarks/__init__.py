"""Benchmark scripts; each writes benchmarks/results/<name>.json, report.py renders RESULTS.md."""
