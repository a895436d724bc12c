"""Data pipeline: official sources, raw readers, `mmrec prepare`, datamodule and synthetic data."""
