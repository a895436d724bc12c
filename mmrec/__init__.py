"""mmrec: multimodal, time-aware sequential recommendation on Amazon reviews."""

__version__ = "0.1.0"
