"""thinktune: train reasoning language models with the Phi-4-reasoning recipes."""

__version__ = "0.1.0"
