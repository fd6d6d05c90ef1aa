"""trainer: a Hydra-configured PyTorch training harness built around exact LR schedules."""

__version__ = "0.1.0"
