"""Reading results folders back: a study's stores and runs on any of its test sets, its test labels, a
sweep's folder as its points' folders, and every run of a folder as plain rows."""
from pathlib import Path

import torch

from ..data import TEST_SET, load_dataset
from ..errors import AnalysisError, Param, StoreError
from ..store import DEFINITION, Store, folder_name, holds_runs, shard_stores, sweep_points, weights_path


def read_runs(folder, test_set=TEST_SET):
    """A folder's stores (its runs.sqlite, or its shard files if not merged yet: one study either way)
    and its runs, scored on `test_set` (the test set, or an eval set's name: on_test_set's); the first
    store holds the config and labels."""
    stores = [] if (Path(folder) / "runs.sqlite").is_file() else shard_stores(folder)
    stores = stores or [Store(folder)]
    rows = {r["run_key"]: r for s in stores for r in s.runs()}
    if not rows:
        raise StoreError(f"{folder} holds no finished runs yet")
    rows = sorted(rows.values(), key=lambda r: r["run_index"])
    return stores, rows if test_set == TEST_SET else on_test_set(rows, eval_results(stores), folder, test_set)


def eval_results(stores):
    """The stores' results on their eval sets: {name: {run_key: Store.evals()'s}}."""
    found = {}
    for store in stores:
        for name, by_run in store.evals().items():
            found.setdefault(name, {}).update(by_run)
    return found


def on_test_set(rows, evals, folder, name):
    """`rows` with their test scores and outputs those on the eval set `name` (`evals`: eval_results');
    what the folder keeps of the test set alone (per-epoch curves, the batch-mean loss) is None."""
    if name not in evals:
        raise AnalysisError(f"{folder} has no test set {name!r}; it holds {', '.join([TEST_SET, *evals])}")
    alone = dict.fromkeys(("test_acc_curve", "test_loss_curve", "test_loss_batch_mean"))
    return [{**row, **alone, **evals[name][row["run_key"]]} for row in rows]


def test_labels(store, rows, data_dir=None):
    """The test labels the rows' outputs are scored against (an eval set's: Store.eval_labels)."""
    labels = store.labels()
    if labels is None:  # a folder from before the labels were stored: read them from the data
        labels = load_dataset(store.config.get("dataset", "cifar10"), data_dir,
                              test_subset=store.config["test_subset"]).y_test.numpy()
    if len(labels) != rows[0]["n_test"]:
        raise StoreError(f"{store.folder}: {len(labels)} test labels for logits of {rows[0]['n_test']} examples")
    return labels


def weights(folder, run_index):
    """The final weights of run `run_index` of a study folder, as a state dict (kept with
    `save_weights`): what a fine-tuning factory loads."""
    store = Store(folder)
    path = weights_path(folder, store.config["experiment"], run_index)
    if not path.is_file():
        raise StoreError(f"{folder} keeps no weights of run {run_index}; train it with {{}} above {run_index}",
                         Param("save_weights", flag="--save-weights K"))
    return torch.load(path, weights_only=True)


def is_sweep_folder(folder):
    return (Path(folder) / DEFINITION).is_file() and not holds_runs(folder)


def study_folders(folders):
    """`folders` with each sweep's folder replaced by its points' folders that hold finished runs."""
    out = []
    for folder in folders:
        if not is_sweep_folder(folder):
            out.append(folder)
            continue
        points = [path for _, path in sweep_points(folder) if holds_runs(path)]
        if not points:
            raise AnalysisError(f"{folder}: no point of this sweep has finished runs yet")
        out += points
    return out


def results(folder, test_set=TEST_SET):
    """Every run of a study folder, or of every point of a sweep folder (with the point's values as
    columns), as a list of dicts whatever is installed (`pandas.DataFrame(results(folder))` makes a frame);
    its test columns scored on `test_set` (an eval set's name, or the test set)."""
    folder = Path(folder)
    if holds_runs(folder):
        rows = read_runs(folder, test_set)[1]
    else:
        rows = [{**row, **point, "point": folder_name(point)} for point, path in sweep_points(folder)
                if holds_runs(path) for row in read_runs(path, test_set)[1]]
    return rows
