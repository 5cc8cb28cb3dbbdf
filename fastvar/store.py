"""Results on disk: one SQLite file per results folder, one row per finished run.

Each batch of replicas is committed in one transaction, so a kill loses at most the batch in flight
and never leaves half a batch. The folder's config is kept in `meta`; a study with another config is
refused rather than mixed in.
"""
import fcntl
import hashlib
import itertools
import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .errors import Param, StoreError

DB_NAME = "runs.sqlite"
# The layout of a folder's tables, in `meta` as 'schema'. 1: before it was recorded (fastvar 0.1);
# 2: threads and the seed repository's loss averages per row; 3: a language model's per-token test
# outputs; 4: `evals`, each run's scores and outputs on every further test set. A newer one is
# refused, never mixed in.
SCHEMA = 4
SHARD_PATTERN = "runs-shard-*-of-*.sqlite"
DEFINITION = "sweep.json"  # a sweep folder's definition, beside its points' folders


def db_name(shard=None):
    """runs.sqlite, or shard I of N's own file: no two processes ever write one SQLite file."""
    return DB_NAME if shard is None else f"runs-shard-{shard[0]}-of-{shard[1]}.sqlite"

COLUMNS = {
    "run_key": "TEXT PRIMARY KEY", "experiment": "TEXT NOT NULL", "run_index": "INTEGER NOT NULL",
    "init_seed": "INTEGER NOT NULL", "order_seed": "INTEGER NOT NULL", "aug_seed": "INTEGER", "config_hash": "TEXT NOT NULL",
    "test_acc": "REAL NOT NULL", "test_loss": "REAL NOT NULL", "train_loss_curve": "TEXT NOT NULL",
    "train_acc_curve": "TEXT NOT NULL", "test_logits": "BLOB NOT NULL", "n_test": "INTEGER NOT NULL",
    "strategy": "TEXT NOT NULL", "batch_models": "INTEGER NOT NULL", "precision": "TEXT NOT NULL",
    "wall_s": "REAL NOT NULL", "device": "TEXT NOT NULL", "created_at": "TEXT NOT NULL",
    "test_acc_curve": "TEXT", "test_loss_curve": "TEXT",  # per epoch, with --eval-every-epoch
    "dropout_seed": "INTEGER", "perturb_seed": "INTEGER", "kernels_nondeterministic": "INTEGER",
    "diverged": "INTEGER",  # 1: the loss or the logits stopped being finite; its run finished anyway
    # the hyperparameters a sweep varies, as trained (for a sweep's results)
    "lr": "REAL", "weight_decay": "REAL", "label_smoothing": "REAL", "epochs": "INTEGER", "width": "INTEGER",
    "batch_size": "INTEGER",
    "compiled": "INTEGER",  # 1: trained through torch.compile
    "conv": "TEXT",  # --conv: auto, gemm (fastvar.engine.vmap_layers) or native
    "threads": "INTEGER",  # torch's intra-op threads: on a CPU they change float32 rounding
    "cuda_graph": "INTEGER",  # 1: every step after the warm-up replayed as a CUDA graph
    # the seed repository's averages: means of per-batch mean losses (batches of 128 for the test set)
    "train_loss_batch_mean_curve": "TEXT", "test_loss_batch_mean": "REAL",
    # a language model's test outputs per position, n_test×T (its test_logits are empty)
    "test_token_logprob": "BLOB", "test_token_argmax": "BLOB",
    "clip_grad_norm": "REAL",  # a hyperparameter a sweep may vary (NULL: not clipped)
}
# A run's results on each further test set (an eval set), in `evals` keyed by run and set: the
# runs table's columns of the same names, for that set.
EVAL_COLUMNS = ("test_acc", "test_loss", "n_test", "test_logits", "test_token_logprob", "test_token_argmax")
TOKEN_DTYPES = {"test_token_logprob": np.float32, "test_token_argmax": np.int32}
# How a run was trained, beyond its config: rows that differ here round differently (float32 CPU
# convolutions round by thread count; vmap by its M), so a folder that mixes them mixes regimes.
HOW_COLUMNS = ("device", "strategy", "precision", "conv", "compiled", "cuda_graph", "threads", "batch_models")
JSON_COLUMNS = ("train_loss_curve", "train_acc_curve", "test_acc_curve", "test_loss_curve",
                "train_loss_batch_mean_curve")


def config_hash(config):
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def run_key(experiment, run_index):
    return f"{experiment}-{run_index:06d}"


class Store:
    def __init__(self, folder, config=None, shard=None):
        """Open `folder`'s store (shard I of N's file, with `shard`). With `config`, create it if new
        and refuse a different config; without, open it read-only (a folder on a read-only file system
        reads as any other, and reading can change nothing)."""
        self.folder = Path(folder)
        self.path = self.folder / db_name(shard)
        self.lock_file = None
        if config is None and not self.path.is_file():
            raise StoreError(f"no results in {self.folder} (no {self.path.name})")
        try:
            if config is None:
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
                self.check_schema()
            else:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=30)
                self.db.execute("PRAGMA synchronous=FULL")
                self.check_schema()
                self._claim(config)
            self.config = json.loads(self.db.execute("SELECT value FROM meta WHERE key='config'").fetchone()[0])
        except (sqlite3.DatabaseError, OSError, TypeError) as e:
            raise StoreError(f"cannot use {self.path}: {e}") from None

    def _claim(self, config):
        with self.db:
            columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
            self.db.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
            for name in set(COLUMNS) - self._columns():  # a folder from an older fastvar: nullable ones only
                self.db.execute(f"ALTER TABLE runs ADD COLUMN {name} {COLUMNS[name]}")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS snapshots (run_key TEXT NOT NULL, cycle INTEGER NOT NULL, "
                            "test_logits BLOB NOT NULL, PRIMARY KEY (run_key, cycle))")
            self.db.execute("CREATE TABLE IF NOT EXISTS evals (run_key TEXT NOT NULL, name TEXT NOT NULL, "
                            "test_acc REAL NOT NULL, test_loss REAL NOT NULL, n_test INTEGER NOT NULL, "
                            "test_logits BLOB NOT NULL, test_token_logprob BLOB, test_token_argmax BLOB, "
                            "PRIMARY KEY (run_key, name))")
            if self.schema() != SCHEMA:  # new, or an older layout its columns were just added to
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
            row = self.db.execute("SELECT value FROM meta WHERE key='config'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('config', ?)", (json.dumps(config, sort_keys=True),))
                self.db.execute("INSERT INTO meta VALUES ('config_hash', ?)", (config_hash(config),))
                return
        stored = json.loads(row[0])
        if config_hash(stored) != config_hash(config):
            old, new = flatten(stored), flatten(config)
            changed = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}"
                                for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            raise StoreError(f"{self.folder} holds a study with another config ({changed}); "
                             f"choose another {{}} or repeat the stored settings", Param("out"))

    def schema(self):
        """The folder's schema version: 1 for a folder made before it was recorded, None for a new file."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone():
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        return 1 if row is None else int(row[0])

    def check_schema(self):
        if (self.schema() or 0) > SCHEMA:
            raise StoreError(f"{self.path} was made by a newer fastvar (schema {self.schema()}, this one reads up to "
                             f"{SCHEMA}); upgrade fastvar to use it")

    def lock(self):
        """Claim the store for this process until it exits: a second trainer on it is refused."""
        try:
            self.lock_file = open(self.path.with_name(self.path.name + ".lock"), "w")
        except OSError as e:
            raise StoreError(f"cannot write into {self.folder}: {e.strerror}") from None
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StoreError(f"another process is training into {self.path}; wait for it, or stop it") from None

    def check_labels(self, labels):
        """Keep the test labels the logits are scored against (a language model's: its target tokens);
        refuse data whose labels differ."""
        labels = torch.as_tensor(labels).tolist()
        stored = self.labels()
        if stored is None:
            with self.writing():
                self.db.execute("INSERT INTO meta VALUES ('test_labels', ?)", (json.dumps(labels),))
        elif stored.tolist() != labels:
            raise StoreError(f"{self.folder} was trained on a test set with other labels; is this the same data?")

    def labels(self):
        """The test labels, or None for a folder made before fastvar stored them."""
        row = self.db.execute("SELECT value FROM meta WHERE key='test_labels'").fetchone()
        return None if row is None else np.array(json.loads(row[0]), dtype=np.int64)

    def check_eval_labels(self, eval_sets):
        """check_labels' for the eval sets ({name: labels}): kept the first time, refused if they differ."""
        labels = {name: torch.as_tensor(y).tolist() for name, y in eval_sets.items()}
        stored = self.eval_labels()
        if not stored and labels:
            with self.writing():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('eval_labels', ?)", (json.dumps(labels),))
        elif {n: y.tolist() for n, y in stored.items()} != labels:
            raise StoreError(f"{self.folder} was trained with other eval sets ({', '.join(stored) or 'none'}); "
                             f"is this the same data?")

    def eval_labels(self):
        """{name: labels} of the eval sets (a folder without any, or older than them: {})."""
        row = self.db.execute("SELECT value FROM meta WHERE key='eval_labels'").fetchone()
        return {} if row is None else {n: np.array(y, dtype=np.int64) for n, y in json.loads(row[0]).items()}

    def finished_indices(self):
        return {i for (i,) in self.db.execute("SELECT run_index FROM runs")}

    def add_runs(self, rows):
        """Insert finished runs with their snapshots (`snapshot_logits`, one per cycle) and their results
        on the eval sets (`evals`, {name: EVAL_COLUMNS}), all or none."""
        names = list(COLUMNS)
        records = [tuple(encode(name, row.get(name)) for name in names) for row in rows]
        snapshots = [(row["run_key"], cycle, encode("test_logits", logits))
                     for row in rows for cycle, logits in enumerate(row.get("snapshot_logits", ()))]
        evals = [(row["run_key"], name, *(encode(c, result.get(c)) for c in EVAL_COLUMNS))
                 for row in rows for name, result in row.get("evals", {}).items()]
        with self.writing():
            self.db.executemany(f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                records)
            self.db.executemany("INSERT INTO snapshots VALUES (?, ?, ?)", snapshots)
            self.db.executemany(f"INSERT INTO evals (run_key, name, {', '.join(EVAL_COLUMNS)}) "
                                f"VALUES ({', '.join('?' * (2 + len(EVAL_COLUMNS)))})", evals)

    @contextmanager
    def writing(self):
        """One transaction; a folder that takes no writes (read-only, full) is a StoreError."""
        try:
            with self.db:
                yield
        except sqlite3.OperationalError as e:
            raise StoreError(f"cannot write {self.path}: {e}") from None

    def snapshots(self):
        """run_key -> cycles × n_test × classes float32 logits, for runs trained with snapshots."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name='snapshots'").fetchone():
            return {}  # a folder from an older fastvar
        found = {}
        for key, blob, n_test in self.db.execute(
                "SELECT s.run_key, s.test_logits, r.n_test FROM snapshots s JOIN runs r USING (run_key) "
                "ORDER BY s.run_key, s.cycle"):
            found.setdefault(key, []).append(decode("test_logits", blob, {"n_test": n_test}))
        return {key: np.stack(logits) for key, logits in found.items()}

    def evals(self):
        """{eval set: {run_key: its EVAL_COLUMNS, decoded as runs() decodes them}}, the sets in the data's
        order; {} for a folder without eval sets (or older than them)."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name='evals'").fetchone():
            return {}
        found = {}
        for key, name, *values in self.db.execute(f"SELECT run_key, name, {', '.join(EVAL_COLUMNS)} FROM evals "
                                                  f"ORDER BY name, run_key"):
            row = dict(zip(EVAL_COLUMNS, values))
            found.setdefault(name, {})[key] = {c: decode(c, v, row) for c, v in row.items()}
        return {name: found[name] for name in sorted(found, key=list(self.eval_labels()).index)}  # as the data gave them

    def _columns(self):
        return {row[1] for row in self.db.execute("PRAGMA table_info(runs)")}

    def runs(self):
        """Every finished run as a dict, in run order; logits decoded to float32 n_test×classes arrays.
        A column that a folder from an older fastvar lacks reads as None."""
        present = [name for name in COLUMNS if name in self._columns()]
        cursor = self.db.execute(f"SELECT {', '.join(present)} FROM runs ORDER BY run_index")
        rows = [{**dict.fromkeys(COLUMNS), **dict(zip(present, values))} for values in cursor]
        return [{name: decode(name, value, row) for name, value in row.items()} for row in rows]

    def unlock(self):
        """Let another trainer in: the store stays open for reading."""
        if self.lock_file:
            self.lock_file.close()  # releases the lock
            self.lock_file = None

    def close(self):
        self.db.close()
        self.unlock()


def weights_path(folder, experiment, run_index):
    """Where a run's kept final weights lie in its folder."""
    return Path(folder) / "weights" / f"{run_key(experiment, run_index)}.pt"


def holds_runs(folder):
    """Whether `folder` holds a study's results: its runs.sqlite, or shard files not merged yet."""
    return (Path(folder) / DB_NAME).is_file() or any(Path(folder).glob(SHARD_PATTERN))


def stored_run_count(folder):
    """How many finished runs `folder` holds, a sweep's points included: each results file's (its
    runs.sqlite, and shard files not merged yet), read-only; a file that cannot be read counts none."""
    count = 0
    for path in [*Path(folder).glob(f"**/{DB_NAME}"), *Path(folder).glob(f"**/{SHARD_PATTERN}")]:
        try:
            store = Store(path.parent, shard=None if path.name == DB_NAME else shard_of(path))
        except (StoreError, sqlite3.Error):
            continue
        count += len(store.finished_indices())
        store.close()
    return count


def shard_stores(folder):
    return [Store(folder, shard=shard_of(path)) for path in sorted(Path(folder).glob(SHARD_PATTERN))]


def shard_of(path):
    _, _, index, _, count = path.stem.split("-")
    return int(index), int(count)


def with_evals(row, evals):
    """`row` with its results on the eval sets (`Store.evals()`'s) as add_runs takes them."""
    return {**row, "evals": {name: by_run[row["run_key"]] for name, by_run in evals.items() if row["run_key"] in by_run}}


def same_run(a, b):
    """Two rows of one run key that hold the same result (when and how fast they trained aside), their
    eval sets' too, compared as stored, so a diverged run's NaN curves equal themselves."""
    skip = {"created_at", "wall_s", "device", "batch_models", "evals"}
    evals_a, evals_b = a.get("evals", {}), b.get("evals", {})
    same_evals = evals_a.keys() == evals_b.keys() and all(
        encode(c, evals_a[n][c]) == encode(c, evals_b[n][c]) for n in evals_a for c in EVAL_COLUMNS)
    return same_evals and all(encode(k, a[k]) == encode(k, b[k]) for k in a if k not in skip)


def merge(folder):
    """Combine `folder`'s shard files into its runs.sqlite: one copy of identical duplicates, conflicting
    duplicates left out and reported. Returns (runs added, identical duplicates, conflicting run keys)."""
    shards = shard_stores(folder)
    if not shards:
        raise StoreError(f"no shard files ({SHARD_PATTERN}) in {folder}")
    config = shards[0].config
    for shard in shards[1:]:
        if config_hash(shard.config) != config_hash(config):
            raise StoreError(f"{shard.path.name} was made with another config than {shards[0].path.name}; not merged")
    target = Store(folder, config)
    for shard in shards:
        target.check_labels(shard.labels())
        target.check_eval_labels(shard.eval_labels())
    stored_evals = target.evals()
    chosen = {r["run_key"]: with_evals(r, stored_evals) for r in target.runs()}
    new, snapshots, identical, conflicts = [], {}, 0, set()
    for shard in shards:
        snapshots.update(shard.snapshots())
        evals = shard.evals()
        for row in shard.runs():
            key, row = row["run_key"], with_evals(row, evals)
            if key not in chosen:
                chosen[key] = row
                new.append(key)
            elif same_run(chosen[key], row):
                identical += 1
            else:
                conflicts.add(key)
    added = [dict(chosen[k], snapshot_logits=list(snapshots.get(k, ()))) for k in new if k not in conflicts]
    target.add_runs(added)
    return len(added), identical, sorted(conflicts)


def flatten(config, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}, to name exactly which settings differ."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def encode(name, value):
    if value is None:
        return None
    if name in JSON_COLUMNS:
        return json.dumps(value)
    if name == "test_logits":
        return torch.as_tensor(value).to(torch.float16).numpy().tobytes()
    if name in TOKEN_DTYPES:
        return torch.as_tensor(value).numpy().astype(TOKEN_DTYPES[name]).tobytes()
    return value


def decode(name, value, row):
    if value is None:
        return None
    if name in JSON_COLUMNS:
        return json.loads(value)
    if name == "test_logits":
        return np.frombuffer(value, dtype=np.float16).reshape(row["n_test"], -1).astype(np.float32)
    if name in TOKEN_DTYPES:
        return np.frombuffer(value, dtype=TOKEN_DTYPES[name]).reshape(row["n_test"], -1)
    return value


def grid_points(settings):
    """Every combination of the settings' values, as dicts, in the order the settings were given."""
    names = list(settings)
    return [dict(zip(names, values)) for values in itertools.product(*settings.values())]


def folder_name(point):
    """`lr=0.001,weight_decay=0`: the point's values, by name, so the order of --set does not matter."""
    return ",".join(f"{k}={point[k]:g}" for k in sorted(point))


def sweep_points(folder):
    """The points of the sweep in `folder` with their subfolders: [(point, path)]."""
    path = Path(folder) / DEFINITION
    if not path.is_file():
        raise StoreError(f"{folder} is not a sweep folder (no {DEFINITION})")
    return [(point, Path(folder) / folder_name(point)) for point in grid_points(json.loads(path.read_text())["settings"])]
