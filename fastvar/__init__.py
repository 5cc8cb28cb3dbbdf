"""fastvar: how much run-to-run variance each source of training randomness causes."""
from .data import load_cifar10, load_dataset
from .report import analyze
from .study import Study

__all__ = ["Study", "analyze", "load_cifar10", "load_dataset"]
