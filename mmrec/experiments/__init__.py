"""Experiments: non-neural baselines and paired statistical comparison of variants."""
