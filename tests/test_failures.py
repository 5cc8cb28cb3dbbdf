"""A study survives a diverging replica and an out-of-memory error without losing or changing runs."""
import math
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fastvar import Execution, Study, cli, runner as study_module
from fastvar.sources import run_seeds
from fastvar.store import Store
from fastvar.recipes import RECIPES
from fastvar.engine.train import train_replicas
from conftest import ROOT, random_dataset


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_a_diverging_replica_is_marked_and_leaves_the_others_alone(strategy):
    data = random_dataset(64, 20)
    recipe = RECIPES["seed"].replace(epochs=1, batch_size=16)
    seeds = [run_seeds("all-random", i) for i in range(3)]
    hyper = [recipe.per_replica() for _ in seeds]
    exploding = [dict(h) for h in hyper]
    exploding[1]["lr"] = 1e38  # replica 1 diverges within a step or two
    args = dict(width=4, strategy=strategy, dtype=torch.float32)
    with_it = train_replicas(data, recipe, seeds, hyper=exploding, **args)
    without = train_replicas(data, recipe, seeds[::2], hyper=hyper[::2], **args)
    assert [r["diverged"] for r in with_it] == [0, 1, 0]
    assert with_it[1]["test_loss"] == math.inf
    for kept, alone in zip(with_it[::2], without):
        assert torch.isfinite(kept["test_logits"]).all()
        if strategy == "loop":  # a lone replica's computation: exactly the same run
            assert torch.equal(kept["test_logits"], alone["test_logits"])


def test_diverged_runs_are_stored_and_left_out_of_the_analysis(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "--set", "lr=1e-3,1e38", "--runs-per-point", "2", "--batch-models", "4", "--width", "4",
                     "--epochs", "1", "--data-dir", str(synthetic_dir), "--out", str(out)]) == 0
    rows = Store(out / "lr=1e+38").runs()
    assert [r["diverged"] for r in rows] == [1, 1] and all(r["test_loss"] == math.inf for r in rows)
    assert [r["diverged"] for r in Store(out / "lr=0.001").runs()] == [0, 0]
    capsys.readouterr()
    assert cli.main(["analyze", str(out / "lr=1e+38")]) == 2
    assert "every run diverged" in capsys.readouterr().err


def test_out_of_memory_splits_the_batch_and_keeps_the_results(synthetic_dir, tmp_path, monkeypatch, capsys):
    kwargs, execution = dict(runs=4, width=4, epochs=1), Execution(batch_models=4, strategy="vmap")
    Study(**kwargs).run(tmp_path / "whole", execution=execution, data_dir=synthetic_dir)
    real, calls = study_module.train_replicas, []

    def out_of_memory_once(data, recipe, seeds, **rest):
        calls.append(len(seeds))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("injected by the test")
        return real(data, recipe, seeds, **rest)
    monkeypatch.setattr(study_module, "train_replicas", out_of_memory_once)
    Study(**kwargs).run(tmp_path / "split", execution=execution, data_dir=synthetic_dir)
    assert calls == [4, 2, 2] and "retrying in batches of 2" in capsys.readouterr().err
    whole, split = Store(tmp_path / "whole").runs(), Store(tmp_path / "split").runs()
    assert [r["batch_models"] for r in split] == [2, 2, 2, 2]  # the split is recorded
    for a, b in zip(whole, split):
        assert (a["test_logits"] == b["test_logits"]).all()


def rows_of(db):
    with sqlite3.connect(db, timeout=30) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name='runs'").fetchone():
            return {}  # killed between creating the file and its table
        return {row[0]: row for row in conn.execute("SELECT * FROM runs")}


def wait_for(condition, process, timeout=120):
    deadline = time.time() + timeout
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)


def test_six_kills_at_different_moments_lose_and_repeat_nothing(synthetic_dir, tmp_path):
    runs, out = 8, tmp_path / "study"
    db, journal = out / "runs.sqlite", out / "runs.sqlite-journal"
    flags = ["--runs", str(runs), "--batch-models", "1", "--width", "4", "--epochs", "1", "--data-dir",
             str(synthetic_dir), "--out", str(out)]
    command = [sys.executable, str(ROOT / "tests" / "slow_commits.py"), "0.5", *flags]  # commits long enough to kill in
    count = lambda: len(rows_of(db)) if db.is_file() else 0  # noqa: E731
    moments = [lambda: db.is_file(),  # the folder just created, nothing trained
               lambda: journal.is_file(),  # during the first commit
               lambda: count() >= 1,  # right after a commit
               lambda: journal.is_file() and count() >= 2,  # during a later commit
               lambda: False]  # mid-batch (after a moment)
    before = {}
    for kill_when in moments + [lambda: journal.is_file()]:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(kill_when, process, timeout=4 if kill_when is moments[4] else 120)
        process.send_signal(signal.SIGKILL)
        process.wait()
        now = rows_of(db) if db.is_file() else {}
        assert all(now[key] == row for key, row in before.items())  # finished rows untouched
        before = now
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = rows_of(db)
    assert sorted(row[2] for row in after.values()) == list(range(runs))  # each run exactly once
    assert all(after[key] == row for key, row in before.items())
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def folder_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


BAD_INPUTS = {  # the README's table, as (flags, what the line says); {name}: a place the test makes
    "missing data folder": (["--data-dir", "{missing}", "--no-download"], "no CIFAR-10"),
    "no data, and the download fails": (["--data-dir", "{missing}"], "could not download"),
    "corrupt archive": (["--data-dir", "{corrupt}"], "corrupt"),
    "corrupt npz": (["--data-dir", "{corrupt_npz}"], "corrupt"),
    "unknown source in --vary": (["--vary", "init,bogus"], "unknown source 'bogus'"),
    "--threads 0": (["--threads", "0"], "--threads"),
    "wrong-shape data": (["--data-dir", "{wrong_shape}"], "malformed"),
    "unknown experiment": (["--experiment", "nope"], "--experiment"),
    "unknown recipe": (["--recipe", "nope"], "--recipe"),
    "unknown model": (["--model", "nope"], "--model"),
    "--runs 0": (["--runs", "0"], "--runs"),
    "--batch-models 0": (["--batch-models", "0"], "--batch-models"),
    "--batch-models -4": (["--batch-models", "-4"], "--batch-models"),
    "malformed --shard": (["--shard", "3/2"], "--shard"),
    "unwritable output folder": (["--out", "{file}/study"], "cannot use"),
    "a folder made by another config": (["--epochs", "2"], "another config"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_every_bad_input_gives_one_line_exit_2_and_damages_nothing(synthetic_dir, tmp_path, capsys, case):
    out = tmp_path / "study"
    good = ["--runs", "2", "--batch-models", "2", "--width", "4", "--epochs", "1", "--data-dir", str(synthetic_dir),
            "--out", str(out)]
    assert cli.main(good) == 0
    stored = folder_bytes(out)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "cifar-10-python.tar.gz").write_bytes(b"not a tar archive")
    (tmp_path / "wrong_shape").mkdir()
    np.savez(tmp_path / "wrong_shape" / "cifar10.npz", x_train=np.zeros((4, 28, 28), np.uint8), y_train=np.zeros(4),
             x_test=np.zeros((4, 28, 28), np.uint8), y_test=np.zeros(4))
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "corrupt_npz").mkdir()
    (tmp_path / "corrupt_npz" / "cifar10.npz").write_bytes(b"PK\x03\x04 a zip in name only")
    places = {"missing": tmp_path / "missing", "corrupt": tmp_path / "corrupt", "wrong_shape": tmp_path / "wrong_shape",
              "file": tmp_path / "file", "corrupt_npz": tmp_path / "corrupt_npz"}
    flags, message = BAD_INPUTS[case]
    flags = [f.format(**places) for f in flags]
    capsys.readouterr()
    try:
        code = cli.main([*good, *flags])
    except SystemExit as e:  # argparse's own checks
        code = e.code
    err = error_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert folder_bytes(out) == stored


STATUS = ("fastvar: loading ", "fastvar: no CIFAR-10 in ")  # what fastvar says it is doing before it fails


def error_lines(stderr):
    """stderr's lines but the status lines, checked to come before the one error line."""
    lines = stderr.strip().splitlines()
    assert all(line.startswith(STATUS) for line in lines[:-1]), lines
    return [line for line in lines if not line.startswith(STATUS)]


def test_ctrl_c_under_the_loop_keeps_each_finished_run_and_says_how_many(synthetic_dir, tmp_path, monkeypatch, capsys):
    """The loop strategy at the default M = 16 trains one run at a time, each stored as it finishes:
    Ctrl-C during the third run keeps two, the closing line says so, and the same command then adds
    the rest, the same bits as an uninterrupted study."""
    args = ["--model", "linear", "--runs", "4", "--epochs", "1", "--strategy", "loop", "--data-dir",
            str(synthetic_dir), "--no-download"]
    assert cli.main([*args, "--out", str(tmp_path / "whole")]) == 0
    real, calls = study_module.train_replicas, []

    def interrupted_in_the_third(data, recipe, seeds, **rest):
        calls.append(len(seeds))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(data, recipe, seeds, **rest)
    monkeypatch.setattr(study_module, "train_replicas", interrupted_in_the_third)
    out = tmp_path / "cut"
    capsys.readouterr()
    assert cli.main([*args, "--out", str(out)]) == 130
    assert calls == [1, 1, 1] and len(Store(out).runs()) == 2
    assert f"interrupted: 2 finished runs stored in {out}; the same command carries on" in capsys.readouterr().err
    monkeypatch.setattr(study_module, "train_replicas", real)
    assert cli.main([*args, "--out", str(out)]) == 0
    for a, b in zip(Store(tmp_path / "whole").runs(), Store(out).runs()):
        assert a["run_index"] == b["run_index"] and np.array_equal(a["test_logits"], b["test_logits"])
    assert cli.stored_runs(tmp_path / "nothing-here") == "no finished run is stored"
