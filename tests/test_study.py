"""A study in a results folder: resume after SIGKILL, refusal of another config, padding."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from fastvar import cli
from fastvar.store import HOW_COLUMNS, Store
from conftest import ROOT
from test_failures import error_lines

RUNS = 8


def study_args(data_dir, out, epochs=3):
    return ["--experiment", "all-random", "--runs", str(RUNS), "--batch-models", "2", "--width", "4",
            "--epochs", str(epochs), "--strategy", "loop", "--data-dir", str(data_dir), "--out", str(out)]


def stored_rows(db):
    with sqlite3.connect(db) as conn:
        return {row[0]: row for row in conn.execute("SELECT * FROM runs")}


def count_rows(db):
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
            return conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0  # not created yet, or busy


def test_a_killed_study_resumes_without_losing_or_repeating_runs(synthetic_dir, tmp_path):
    out, db = tmp_path / "study", tmp_path / "study" / "runs.sqlite"
    command = [sys.executable, str(ROOT / "run.py"), *study_args(synthetic_dir, out)]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while count_rows(db) < 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = stored_rows(db)
    assert 2 <= len(before) < RUNS, "the kill should land mid-study"

    subprocess.run(command, cwd=tmp_path, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = stored_rows(db)
    assert sorted(row[2] for row in after.values()) == list(range(RUNS))  # each run exactly once
    assert all(after[key] == row for key, row in before.items())  # finished rows untouched
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # With the loop strategy a run is defined by its seeds alone: resumed runs, regrouped into other
    # batches, equal those of an uninterrupted study bit for bit.
    assert cli.main(study_args(synthetic_dir, tmp_path / "straight")) == 0
    straight = {r["run_key"]: r for r in Store(tmp_path / "straight").runs()}
    for r in Store(out).runs():
        assert (r["test_logits"] == straight[r["run_key"]]["test_logits"]).all()
        assert r["train_loss_curve"] == straight[r["run_key"]]["train_loss_curve"]


def test_another_config_is_refused_and_the_folder_left_as_it_was(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "study"
    args = study_args(synthetic_dir, out, epochs=1)
    args[args.index("--runs") + 1] = "3"
    assert cli.main(args) == 0
    before = (out / "runs.sqlite").read_bytes()
    capsys.readouterr()
    assert cli.main(study_args(synthetic_dir, out, epochs=2)) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "epochs 1 -> 2" in err[0]
    assert (out / "runs.sqlite").read_bytes() == before
    assert cli.main([*args[:args.index("--runs")], "--runs", "5", *args[args.index("--runs") + 2:]]) == 0
    assert len(Store(out).runs()) == 5  # a larger --runs extends the same study


@pytest.mark.parametrize("flag,value", [("--runs", "0"), ("--batch-models", "0"), ("--batch-models", "-2"),
                                        ("--width", "0")])
def test_impossible_flags_give_one_line_and_exit_2(synthetic_dir, tmp_path, capsys, flag, value):
    args = study_args(synthetic_dir, tmp_path / "study")
    args[args.index(flag) + 1] = value
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]
    assert not (tmp_path / "study").exists()


def test_study_api_trains_the_last_loop_batch_unpadded_and_stores_the_seeds(synthetic_dir, tmp_path):
    from fastvar import Study
    from fastvar.sources import run_seeds
    from fastvar import Execution
    study = Study(experiment="fixed-init", runs=3, epochs=1, width=4)
    rows = study.run(tmp_path / "api", execution=Execution(batch_models=2), data_dir=synthetic_dir).runs()
    assert [r["run_index"] for r in rows] == [0, 1, 2]
    assert [r["batch_models"] for r in rows] == [1, 1, 1]  # the loop trains one run at a time, pads nothing
    for r in rows:
        seeds = run_seeds("fixed-init", r["run_index"])
        assert (r["init_seed"], r["order_seed"]) == (seeds.init_seed, seeds.order_seed)
        assert r["aug_seed"] is None  # the seed recipe does not augment: no augmentation seed
        assert r["strategy"] == "loop" and r["precision"] == "float32"
        assert None not in [r[name] for name in HOW_COLUMNS]  # every how-column is recorded
        assert r["test_logits"].shape == (r["n_test"], 10) and 0 <= r["test_acc"] <= 1
        assert len(r["train_loss_curve"]) == len(r["train_acc_curve"]) == 1


def test_bf16_mixed_on_the_cpu_is_a_config_of_its_own(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "study"
    args = study_args(synthetic_dir, out, epochs=1)
    args[args.index("--runs") + 1] = "2"
    assert cli.main([*args, "--precision", "bf16-mixed", "--strategy", "vmap"]) == 0
    rows = Store(out).runs()
    assert [(r["precision"], r["strategy"], r["compiled"]) for r in rows] == [("bf16-mixed", "vmap", 0)] * 2
    assert all(0 <= r["test_acc"] <= 1 and not r["diverged"] for r in rows)
    capsys.readouterr()
    assert cli.main(args) == 2  # auto is float32 on the CPU: another config, refused in one line
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "precision bf16-mixed -> float32" in err[0]


def test_a_study_cannot_change_after_construction_and_a_copy_is_checked_again():
    import dataclasses
    import operator
    import fastvar
    study = fastvar.Study(experiment=None, vary=("order", "init"), overrides={"lr": 2e-3}, runs=2)
    assert study.experiment == "vary-init+order" and study.vary == ("init", "order")
    for change in (lambda: setattr(study, "runs", 3), lambda: operator.setitem(study.overrides, "lr", 1.0)):
        with pytest.raises((dataclasses.FrozenInstanceError, TypeError)):
            change()
    copy = dataclasses.replace(study, seed=1)  # its own name for what varies passes the check again
    assert copy.experiment == study.experiment and copy.config() != study.config()
    with pytest.raises(fastvar.ConfigError, match="^width sets"):
        fastvar.Study(model="linear", width=32)  # a model that takes no width: refused, not hashed


def test_a_sweep_on_arrays_of_ones_own_names_them_in_every_points_config(tmp_path):
    import numpy as np
    import fastvar
    from conftest import random_arrays
    data = fastvar.Dataset.from_arrays(**random_arrays(16, 10))
    sweep = fastvar.Sweep({"lr": [1e-3, 2e-3]}, runs_per_point=2, study={"width": 2, "epochs": 1})
    stores = sweep.run(tmp_path / "sweep", data=data, progress=False)
    assert {store.config["dataset"] for _, store in stores} == {data.name} and data.name.startswith("arrays-")
    assert sweep.studies[0][1].dataset == "cifar10"  # the sweep's own studies are left as they were
    with pytest.raises(AttributeError):  # a sweep, like a study, is what it was made as
        sweep.runs_per_point = 3
    assert np.isfinite([r["test_acc"] for _, s in stores for r in s.runs()]).all()
    rows = stores.runs()  # as a study's store gives them, and as fastvar.results reads the sweep's folder
    assert [(r["point"], r["run_index"]) for r in rows] == [(r["point"], r["run_index"]) for r in fastvar.results(stores.folder)]
    assert {r["point"]: r["lr"] for r in rows} == {"lr=0.001": 1e-3, "lr=0.002": 2e-3} and len(rows) == 4


def test_studies_that_differ_in_more_than_per_replica_hyperparameters_cannot_share_a_batch():
    import fastvar
    from conftest import random_arrays
    from fastvar.runner import train_runs
    data = fastvar.Dataset.from_arrays(**random_arrays(16, 10))
    short, long = (fastvar.Study(width=2, epochs=epochs, runs=1) for epochs in (1, 2))
    with pytest.raises(ValueError, match="cannot share a batch"):
        train_runs([(short, None, 0), (long, None, 1)], data, fastvar.Execution(batch_models=2, strategy="vmap"))


def test_a_study_resolves_once_per_device_and_its_rows_read_that(monkeypatch):
    """A user's model is built on the meta device for its digest: once per device, not once per row."""
    import torch
    import fastvar
    from fastvar import study as study_module
    from fastvar.store import config_hash
    digests = []
    real = study_module.architecture_digest
    monkeypatch.setattr(study_module, "architecture_digest", lambda model: digests.append(model) or real(model))
    own = fastvar.Study(model=lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10)), runs=3,
                        overrides={"lr": 3e-3})
    cpu = torch.device("cpu")
    resolved = own.resolve(cpu)
    rows = [own.row(own.seeds(i), {}, {"device": "cpu"}) for i in range(3)]
    assert own.resolve(cpu) is resolved and len(digests) == 1
    assert resolved.config_hash == config_hash(own.config(cpu)) and len(digests) == 2  # what it cached is current
    assert {r["config_hash"] for r in rows} == {resolved.config_hash} and {r["lr"] for r in rows} == {3e-3}
    swept = fastvar.Study(model=own.model, runs=3, overrides={"lr": 1e-2, "weight_decay": 0.1})
    assert swept.resolve(cpu).batch_settings == resolved.batch_settings  # lr and weight decay: held per replica
    assert swept.resolve(cpu).config_hash != resolved.config_hash
