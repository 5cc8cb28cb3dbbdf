"""fastvar: how much run-to-run variance each source of training randomness causes.

Names load on first use, so that the command line can set process-wide settings that the OpenMP
runtime reads when torch loads (fastvar.launch) before anything imports torch.
"""
import importlib

_EXPORTS = {
    "Study": "study", "Sweep": "sweep", "analyze": "analysis.report", "results": "analysis.report",
    "load_cifar10": "data", "load_dataset": "data",
    "FastvarError": "errors", "ConfigError": "errors", "DataError": "errors", "StoreError": "errors",
    "AnalysisError": "errors",
    "Recipe": "recipes", "Adam": "recipes", "SGD": "recipes", "Constant": "recipes", "Linear": "recipes",
    "Cosine": "recipes", "Augment": "recipes", "RECIPES": "recipes",
    "Dataset": "data", "register_model": "models", "Execution": "execution",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastvar' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
