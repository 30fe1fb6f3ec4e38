"""dmdr: Distribution Matching Distillation meets Reinforcement Learning, as a command-line toolkit."""

__version__ = "0.1.0"
