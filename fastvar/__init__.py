"""fastvar: how much run-to-run variance each source of training randomness causes.

Names load on first use, so that the command line can set process-wide settings that the OpenMP
runtime reads when torch loads (fastvar.launch) before anything imports torch.
"""
import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Study": "study", "Sweep": "sweep", "SweepStores": "sweep", "Execution": "execution",
    "analyze": "analysis.compute", "results": "analysis.load", "weights": "analysis.load", "compare": "analysis.compare",
    "sweep_summary": "analysis.compare", "Analysis": "analysis.compute", "Store": "store",
    "load_dataset": "data",
    "FastvarError": "errors", "ConfigError": "errors", "DataError": "errors", "StoreError": "errors",
    "AnalysisError": "errors",
    "Recipe": "recipes", "Adam": "recipes", "SGD": "recipes", "Constant": "recipes", "LinearDecay": "recipes",
    "Cosine": "recipes", "Augment": "recipes", "RECIPES": "recipes",
    "Dataset": "data", "register_model": "models",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # what editors and type checkers see of the names loaded on first use
    from .analysis.compare import compare, sweep_summary
    from .analysis.compute import Analysis, analyze
    from .analysis.load import results, weights
    from .data import Dataset, load_dataset
    from .errors import AnalysisError, ConfigError, DataError, FastvarError, StoreError
    from .execution import Execution
    from .models import register_model
    from .recipes import RECIPES, SGD, Adam, Augment, Constant, Cosine, LinearDecay, Recipe
    from .store import Store
    from .study import Study
    from .sweep import Sweep, SweepStores


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastvar' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
