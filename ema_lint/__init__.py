"""ema-lint: find and fix running-statistics and autograd-history hazards in PyTorch code."""

__version__ = "0.1.0"
