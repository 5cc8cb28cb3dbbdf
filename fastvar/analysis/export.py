"""A results folder in the layouts other tools read.

- `npz`: one file with `logits` (runs × n_test × 10, float16, the layout of Jordan's public 60k-run
  logits), `labels`, and the seeds table (`run_index`, `init_seed`, `order_seed`, `aug_seed` with -1
  where the recipe does not augment, `test_acc`, `test_loss`), plus the config as JSON text; for each
  eval set NAME, its `logits_NAME`, `labels_NAME`, `test_acc_NAME` and `test_loss_NAME` alike.
- `seed-npy`: the original study's four arrays, `test_accs.npy` and `train_acc_curves.npy` in %,
  `test_losses.npy`, `train_loss_curves.npy` (runs × epochs), its losses averaged as it averaged them:
  the mean of per-batch mean losses, each batch weighted alike (the last, partial one too), over
  training batches and over test batches of 128.
"""
import json
from pathlib import Path

import numpy as np

from ..errors import Param, writing
from .load import eval_results, on_test_set, read_runs, test_labels

FORMATS = ("npz", "seed-npy")
SEED_AVERAGING = ("losses are means of per-batch mean losses, the last partial batch weighted like a full one "
                  "(test batches of 128), as the seed repository averages them")


def export(folder, fmt, out=None, data_dir=None):
    """Write `folder`'s runs in format `fmt` to `out` (default: inside the folder; missing folders are
    created); return the paths written and a note on how they differ from fastvar's own columns."""
    stores, rows = read_runs(folder)
    store = stores[0]
    if fmt == "npz":
        evals = eval_results(stores)
        on_sets = {f"_{name}": set_arrays(on_test_set(rows, evals, folder, name), store.eval_labels()[name])
                   for name in evals}
        out = Path(out or Path(folder) / "logits.npz")
        with writing(out, "give {} in a writable place", Param("out", flag="--out PATH")):
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(out, **set_arrays(rows, test_labels(store, rows, data_dir)),
                     **{k: np.array([r[k] for r in rows], dtype=np.int64) for k in ("run_index", "init_seed", "order_seed")},
                     aug_seed=np.array([-1 if r["aug_seed"] is None else r["aug_seed"] for r in rows], dtype=np.int64),
                     config=np.array(json.dumps(store.config, sort_keys=True)),
                     **{key + suffix: value for suffix, arrays in on_sets.items() for key, value in arrays.items()})
        return [out], None
    out = Path(out or Path(folder) / "seed-npy")
    arrays, note = seed_arrays(rows)
    with writing(out, "give {} in a writable place", Param("out", flag="--out PATH")):
        out.mkdir(parents=True, exist_ok=True)
        for name, values in arrays.items():
            np.save(out / f"{name}.npy", np.array(values, dtype=np.float64))
    return [out / f"{name}.npy" for name in arrays], note


def set_arrays(rows, labels):
    """One test set's arrays in the npz: its logits (float16), labels, accuracies and losses."""
    return {"logits": np.stack([r["test_logits"] for r in rows]).astype(np.float16), "labels": labels,
            "test_acc": np.array([r["test_acc"] for r in rows]), "test_loss": np.array([r["test_loss"] for r in rows])}


def seed_arrays(rows):
    """The seed repository's four arrays from stored rows, and a note on their loss averaging. Rows
    from a fastvar that did not store the per-batch averages give the per-example means instead."""
    averaged = all(r["train_loss_batch_mean_curve"] is not None and r["test_loss_batch_mean"] is not None
                   for r in rows)
    train_loss, test_loss = (("train_loss_batch_mean_curve", "test_loss_batch_mean") if averaged
                             else ("train_loss_curve", "test_loss"))
    arrays = {"test_accs": [r["test_acc"] * 100 for r in rows], "test_losses": [r[test_loss] for r in rows],
              "train_loss_curves": [r[train_loss] for r in rows],
              "train_acc_curves": [np.array(r["train_acc_curve"]) * 100 for r in rows]}
    note = (f"seed-npy: {SEED_AVERAGING}" if averaged else
            "seed-npy: these runs were stored without per-batch loss averages, so the losses are means over "
            "examples (the seed repository's means of per-batch means differ where a batch is partial)")
    return arrays, note
