"""Computing a folder's analysis: its metrics, how its runs were trained, a grid's variance components
and CKA between runs; `analyze` over folders."""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..augment import normalized
from ..data import IGNORE, TEST_SET, balanced_subset, load_dataset
from ..errors import AnalysisError, Param
from ..precisions import PRECISIONS
from ..recipes import Recipe
from ..store import HOW_COLUMNS, weights_path
from . import cka as cka_module
from .load import eval_results, on_test_set, read_runs, study_folders, test_labels
from .metrics import snapshot_ensembles, summarize, summarize_tokens
from .stats import runs_per_arm, variance_components


DIFFERENCES_PP = (0.05, 0.1, 0.2, 0.5)  # accuracy differences the power table plans for
# A language model's metrics that need its whole logits (kept with token_logits), over its scored tokens
WHOLE_DISTRIBUTION_KEYS = ("ensemble_acc", "ece", "spearman", "ensemble_gain", "ensembles")


@dataclass
class Analysis:
    folder: Path
    config: dict
    rows: list
    labels: np.ndarray
    metrics: dict
    components: list = field(default_factory=list)  # variance components, for a grid
    cka: dict = field(default_factory=dict)  # layer -> {"mean", "sd", "pairs"}, with --cka
    eval_sets: dict = field(default_factory=dict)  # eval set -> its metrics, as `metrics` has the test set's

    @property
    def name(self):
        return str(self.folder)

    def correct(self):
        """R×n: which test examples each run gets right (a language model's: R×tokens, its scored ones)."""
        if self.labels.ndim == 2:
            predictions, targets = scored_tokens(self.rows, self.labels, "test_token_argmax")
            return predictions == targets
        return np.stack([r["test_logits"].argmax(-1) for r in self.rows]) == self.labels

    def test_sets(self):
        """(name, metrics) of every test set: the test set, then the eval sets."""
        return [(TEST_SET, self.metrics), *self.eval_sets.items()]

    def labelled_test_sets(self, label):
        """test_sets(), each named for a table row or a plot's bar: `label` (the folder) for the test set,
        "label: NAME" for an eval set."""
        return [(label if name == TEST_SET else f"{label}: {name}", m) for name, m in self.test_sets()]

    def to_json(self):
        return {"folder": self.name, **self.metrics,
                "components": [{"name": c.name, "variance": c.variance, "low": c.low, "high": c.high}
                               for c in self.components], "cka": self.cka, "eval_sets": self.eval_sets}


def analyze_folder(folder, *, data_dir=None, with_cka=False, seed=0):
    stores, rows = read_runs(folder)
    store = stores[0]
    diverged = sum(bool(r["diverged"]) for r in rows)
    rows = [r for r in rows if not r["diverged"]]  # their spread is not the spread of training
    if not rows:
        raise AnalysisError(f"{folder}: every run diverged")
    labels = test_labels(store, rows, data_dir)
    metrics = summarize_study(rows, labels, seed)
    snapshots = {k: v for s in stores for k, v in s.snapshots().items()}
    if snapshots:
        metrics["snapshots"] = snapshot_ensembles(*snapshot_arrays(rows, snapshots, labels), seed)
    metrics["diverged"] = diverged
    metrics["mixed"] = {name: {str(value): runs for value, runs in by_value.items()}
                        for name, by_value in mixed_settings(rows).items()}
    metrics["runs_per_arm"] = planned_runs(metrics)
    evals = eval_results(stores)
    eval_sets = {name: summarize_study(on_test_set(rows, evals, folder, name), store.eval_labels()[name], seed)
                 for name in evals}
    for on_set in eval_sets.values():
        on_set["runs_per_arm"] = planned_runs(on_set)
    analysis = Analysis(Path(folder), store.config, rows, labels, metrics, eval_sets=eval_sets)
    if store.config["experiment"] == "grid":
        analysis.components = grid_components(store.config["grid"], rows, folder)
    if with_cka and labels.ndim == 2:
        raise AnalysisError(f"{folder} holds a language model's runs; CKA here compares image models on a probe "
                            f"of test images")
    if with_cka:
        analysis.cka = folder_cka(folder, store.config, rows, data_dir)
    return analysis


def snapshot_arrays(rows, snapshots, labels):
    """The runs' snapshot logits, runs × cycles × examples × classes, and their labels: a language
    model's over its scored test tokens (its logits kept whole, n × T·vocabulary each)."""
    stacked = np.stack([snapshots[r["run_key"]] for r in rows if r["run_key"] in snapshots])
    if labels.ndim == 1:
        return stacked, labels
    scored = labels != IGNORE
    return stacked.reshape(*stacked.shape[:2], *labels.shape, -1)[:, :, scored], labels[scored]


def planned_runs(metrics):
    """Runs per arm to detect each of DIFFERENCES_PP at the measured accuracy SD (None below 2 runs)."""
    return {f"{d:g}": runs_per_arm(metrics["acc_sd"], d / 100) if metrics["n"] > 1 else None for d in DIFFERENCES_PP}


def summarize_study(rows, labels, seed):
    """summarize's metrics of the runs' rows; a language model's (target tokens, labels n×T) over its
    scored test tokens."""
    acc, loss = [r["test_acc"] for r in rows], [r["test_loss"] for r in rows]
    if labels.ndim == 1:
        return summarize(acc, loss, np.stack([r["test_logits"] for r in rows]), labels, seed=seed)
    logprob, targets = scored_tokens(rows, labels, "test_token_logprob")
    predictions, _ = scored_tokens(rows, labels, "test_token_argmax")
    vocabulary = int(max(labels.max(), predictions.max())) + 1
    metrics = summarize_tokens(acc, loss, logprob, predictions, targets, vocabulary, seed=seed)
    if all(r["test_logits"].size for r in rows):  # whole logits kept (token_logits): what needs them too
        scored = labels != IGNORE
        logits = np.stack([r["test_logits"].reshape(*labels.shape, -1)[scored] for r in rows])
        whole = summarize(acc, loss, logits, targets, seed=seed)
        metrics.update({key: whole[key] for key in WHOLE_DISTRIBUTION_KEYS})
    return metrics


def scored_tokens(rows, labels, column):
    """A language model's runs' `column` (R×N) at the N scored test positions (target not IGNORE), and
    those targets (N)."""
    scored = labels != IGNORE
    return np.stack([r[column][scored] for r in rows]), labels[scored]


def analyze(*folders, data_dir=None, cka=False, seed=0):
    """The analysis of each results folder, as `python run.py analyze` computes it; a sweep's folder
    stands for its points that have finished runs."""
    return [analyze_folder(f, data_dir=data_dir, with_cka=cka, seed=seed) for f in study_folders(folders)]


def grid_components(shape, rows, folder):
    """Variance components of test accuracy over an init × order grid, in accuracy² (fraction)."""
    rows_n, columns = shape
    if len(rows) != rows_n * columns:
        raise AnalysisError(f"{folder}: the {rows_n}x{columns} grid is not finished ({len(rows)} runs); "
                         f"run its training command again to complete it")
    table = np.array([r["test_acc"] for r in sorted(rows, key=lambda r: r["run_index"])])
    return variance_components(table.reshape(rows_n, columns))


def folder_cka(folder, config, rows, data_dir):
    paths = [weights_path(folder, config["experiment"], r["run_index"]) for r in rows]
    paths = [p for p in paths if p.is_file()]
    if len(paths) < 2:
        raise AnalysisError(f"{folder} keeps the weights of {len(paths)} runs; CKA needs 2 "
                            f"(train with {{}})", Param("save_weights", flag="--save-weights K"))
    data = load_dataset(config.get("dataset", "cifar10"), data_dir)
    x, _ = balanced_subset(data.x_test.numpy(), data.y_test.numpy(), cka_module.PROBE_SIZE, "test")
    recipe = Recipe.from_dict(config["hyperparameters"])
    dtype = PRECISIONS[config["precision"]]
    images = normalized(torch.from_numpy(x), torch.arange(len(x)), recipe, dtype).contiguous()
    grams = [cka_module.layer_grams(recipe.model, config["width"], torch.load(p, weights_only=True), images,
                                    recipe.dropout) for p in paths]
    return cka_module.cka_by_layer(grams)


def trained_with(row):
    """The row's training regime: threads count on the CPU only, graphs on CUDA only, M under vmap only."""
    regime = {k: row.get(k) for k in HOW_COLUMNS}
    if not str(regime["device"]).startswith("cpu"):
        regime["threads"] = None
    if not str(regime["device"]).startswith("cuda"):
        regime["cuda_graph"] = None
    if regime["strategy"] != "vmap":
        regime["batch_models"] = None
    return regime


def mixed_settings(rows):
    """{setting: {value: run indices}} for each HOW_COLUMNS setting whose value differs between rows
    (an older folder's unrecorded value is None); empty when every run was trained alike."""
    mixed = {}
    for name in HOW_COLUMNS:
        by_value = {}
        for row in rows:
            by_value.setdefault(trained_with(row)[name], []).append(row["run_index"])
        if len(by_value) > 1:
            mixed[name] = by_value
    return mixed
