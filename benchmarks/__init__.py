"""Benchmark scripts (speed, scale, result tables); run them as `python -m benchmarks.<name>`."""
