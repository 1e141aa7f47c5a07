"""fedsim: federated and over-the-air fine-tuning simulator."""

__version__ = "0.1.0"
