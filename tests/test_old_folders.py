"""A results folder made by an earlier fastvar keeps opening, resuming and analysing.

tests/fixtures/v0.1-fixed-init was made by fastvar 0.1.0 at commit f1c1661 with
    Study(experiment="fixed-init", runs=2, batch_models=2, width=4, epochs=2, eval_every_epoch=True)
        .run(folder, data=random_dataset(320, 100))
(batch_models was then a Study field; it is Execution's now)
"""
import shutil
import sqlite3
from pathlib import Path

import pytest

import fastvar
from fastvar.store import SCHEMA, Store
from conftest import random_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "v0.1-fixed-init"


def stored_rows(folder):
    with sqlite3.connect(folder / "runs.sqlite") as db:
        return db.execute("SELECT * FROM runs ORDER BY run_index").fetchall()


def test_an_old_folder_opens_resumes_and_analyses(tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(FIXTURE, folder)
    before = stored_rows(folder)
    assert len(before) == 2
    study = fastvar.Study(experiment="fixed-init", runs=3, width=4, epochs=2, eval_every_epoch=True)
    study.run(folder, data=random_dataset(320, 100), execution=fastvar.Execution(batch_models=2))
    rows = Store(folder).runs()
    assert [r["run_index"] for r in rows] == [0, 1, 2]
    assert stored_rows(folder)[:2] == [tuple(r) + (None,) * (len(stored_rows(folder)[0]) - len(r)) for r in before]
    assert rows[2]["init_seed"] == rows[0]["init_seed"]  # fixed-init: the new run has the old runs' init
    (analysis,) = fastvar.analyze(folder)
    assert analysis.metrics["n"] == 3 and 0 <= analysis.metrics["acc_mean"] <= 1
    assert Store(folder).schema() == SCHEMA  # resumed, its layout is today's
    assert analysis.eval_sets == {} and Store(folder).evals() == {}  # one test set, as it was trained


def test_an_old_folder_reads_as_one_test_set_without_being_touched(tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(FIXTURE, folder)
    before = (folder / "runs.sqlite").read_bytes()
    (analysis,) = fastvar.analyze(folder)
    assert analysis.eval_sets == {} and len(fastvar.results(folder, "test")) == 2
    with pytest.raises(fastvar.AnalysisError, match="has no test set 'shift'; it holds test$"):
        fastvar.results(folder, "shift")
    assert (folder / "runs.sqlite").read_bytes() == before


def test_a_folder_from_a_newer_fastvar_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "newer"
    shutil.copytree(FIXTURE, folder)
    with sqlite3.connect(folder / "runs.sqlite") as db:
        db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA + 1),))
    before = (folder / "runs.sqlite").read_bytes()
    with pytest.raises(fastvar.StoreError, match="newer fastvar"):
        Store(folder)
    with pytest.raises(fastvar.StoreError, match="newer fastvar"):
        fastvar.Study(experiment="fixed-init", runs=3, width=4, epochs=2, eval_every_epoch=True).run(
            folder, data=random_dataset(320, 100))
    assert (folder / "runs.sqlite").read_bytes() == before
