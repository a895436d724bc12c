"""Serving: recommendations from a checkpoint (`mmrec recommend`) and the prediction writer."""
