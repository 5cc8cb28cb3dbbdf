"""fastvar: how much run-to-run variance each source of training randomness causes."""
from .data import load_cifar10, load_dataset
from .report import analyze, results
from .study import Study
from .sweep import Sweep

__all__ = ["Study", "Sweep", "analyze", "load_cifar10", "load_dataset", "results"]
