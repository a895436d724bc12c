"""Synthetic data generators that serve the tests and the benchmarks: Amazon-like dataset folders
with planted sequential, seasonal and content structure, and raw review and metadata files in
each release's real format. Nothing else in mmrec imports them."""
