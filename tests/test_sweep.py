"""Sweeps: per-replica hyperparameters in one batch equal lone runs; the sweep command, its folder,
its resume after a kill, its summary; the README's API example runs as written."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

import fastvar
from fastvar import cli
from fastvar.engine.replicas import Replicas
from fastvar.sources import run_seeds
from fastvar.store import Store
from fastvar.recipes import RECIPES, SGD
from fastvar.engine.train import fit
from conftest import ROOT, random_dataset

SGD_RECIPE = RECIPES["seed"].replace(epochs=1, batch_size=16, optimizer=SGD(lr=0.05, momentum=0.9, weight_decay=5e-4))


def recipe_with(name, value):
    return SGD_RECIPE.replace(**{name: value})


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("name,values", [("lr", [0.01, 0.05, 0.2]), ("weight_decay", [0.0, 1e-3, 5e-2]),
                                         ("label_smoothing", [0.0, 0.1, 0.4]), ("clip_grad_norm", [0.0, 0.05, 0.5])])
def test_replicas_with_their_own_hyperparameters_train_as_lone_runs(strategy, name, values):
    data = random_dataset(80, 10)  # 5 steps of 16
    seeds = [run_seeds("all-random", i) for i in range(3)]
    batch = Replicas("resnet14", [s.init_seed for s in seeds], width=4, strategy=strategy, dtype=torch.float64)
    fit(batch, data, recipe_with(name, values[0]), seeds,
        hyper=[recipe_with(name, v).per_replica() for v in values])
    for r, (s, value) in enumerate(zip(seeds, values)):
        alone = Replicas("resnet14", [s.init_seed], width=4, strategy=strategy, dtype=torch.float64)
        fit(alone, data, recipe_with(name, value), [s])
        for key, p in alone.params.items():
            assert torch.allclose(batch.params[key][r], p[0], rtol=0, atol=1e-10), (key, value)
    assert not torch.equal(batch.params["fc.weight"][0], batch.params["fc.weight"][2])


SWEEP = ["sweep", "--set", "lr=1e-3,2e-3", "--set", "wd=0,1e-4", "--runs-per-point", "3", "--batch-models", "4",
         "--width", "4", "--epochs", "1", "--strategy", "loop"]


def test_sweep_folder_summary_and_results(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli.main([*SWEEP, "--data-dir", str(synthetic_dir), "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert "lr swept over 0.001, 0.002, weight decay swept over 0, 0.0001" in err  # the start line
    assert printed.count("| lr=") == 4 and "| best |" in printed and "not distinguishable from the best" in printed
    rows = fastvar.results(out)
    assert isinstance(rows, list) and isinstance(rows[0], dict)  # one type, whatever is installed
    assert len(rows) == 12 and {r["point"] for r in rows} == {"lr=0.001,weight_decay=0", "lr=0.001,weight_decay=0.0001",
                                                              "lr=0.002,weight_decay=0", "lr=0.002,weight_decay=0.0001"}
    for r in rows:
        assert r["weight_decay"] in (0, 1e-4) and r["lr"] in (1e-3, 2e-3)
        same_run = [o for o in rows if o["run_index"] == r["run_index"]]
        assert {(o["init_seed"], o["order_seed"]) for o in same_run} == {(r["init_seed"], r["order_seed"])}  # paired
    # every point is an ordinary study: analyze reads it, and a lone study of the same point equals it
    point = out / "lr=0.002,weight_decay=0.0001"
    assert Store(point).config["hyperparameters"]["optimizer"]["lr"] == 2e-3
    lone = fastvar.Study(runs=3, width=4, epochs=1, overrides={"lr": 2e-3, "weight_decay": 1e-4}).run(
        tmp_path / "lone", execution=fastvar.Execution(batch_models=1, strategy="loop"), data_dir=synthetic_dir)
    for a, b in zip(Store(point).runs(), lone.runs()):
        assert (a["test_logits"] == b["test_logits"]).all()  # trained in a mixed batch of 4, or alone
    # analyze on the sweep's folder analyses its points, under the sweep's own table, into its report
    assert [a.folder.name for a in fastvar.analyze(out)] == sorted(p.name for p in out.iterdir() if p.is_dir())
    capsys.readouterr()
    assert cli.main(["analyze", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.index("each point against the best") < printed.index("Spread of test accuracy")
    assert printed.count(f"| {out}/lr=") == 3 * 4 and (out / "report.md").read_text().count("| lr=") == 4
    assert cli.main([*SWEEP[:2], "lr=5e-3", *SWEEP[3:], "--data-dir", str(synthetic_dir), "--out", str(out)]) == 2
    assert "another sweep" in capsys.readouterr().err


@pytest.mark.parametrize("bad,message", [(["--set", "momentum=0.5"], "--set takes"), (["--set", "lr=fast"], "numbers"),
                                         (["--set", "lr=1e-3", "--runs-per-point", "1"], "at least 2"),
                                         (["--set", "label_smoothing=1.5"], "label_smoothing")])
def test_bad_sweeps_give_one_line_and_exit_2(synthetic_dir, tmp_path, capsys, bad, message):
    assert cli.main(["sweep", *bad, "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "s").exists()


def count_rows(folder):
    total = 0
    for db in folder.glob("*/runs.sqlite"):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
                total += conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        except sqlite3.Error:
            pass
    return total


def test_a_killed_sweep_resumes(synthetic_dir, tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, str(ROOT / "run.py"), *SWEEP, "--set", "label_smoothing=0,0.1", "--batch-models", "2",
               "--data-dir", str(synthetic_dir), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while count_rows(out) < 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {p.name: {r["run_key"]: r["train_loss_curve"] for r in Store(p).runs()}
              for p in out.iterdir() if (p / "runs.sqlite").is_file()}
    assert 2 <= sum(map(len, before.values())) < 24, "the kill should land mid-sweep"
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    points = [p for p in out.iterdir() if p.is_dir()]
    assert len(points) == 8 and all(len(Store(p).runs()) == 3 for p in points)
    for name, rows in before.items():
        after = {r["run_key"]: r["train_loss_curve"] for r in Store(out / name).runs()}
        assert all(after[k] == v for k, v in rows.items())


def test_the_readme_api_example_runs_as_written(real_data_dir, tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTVAR_DATA", str(real_data_dir))
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "results" / "lr-sweep" / "sweep.json").is_file()
    assert "lr" in capsys.readouterr().out


def test_a_sweep_over_training_length_trains_each_length_in_its_own_batches(synthetic_dir, tmp_path):
    out = tmp_path / "epochs"
    assert cli.main(["sweep", "--set", "epochs=1,2", "--set", "lr=1e-3,2e-3", "--runs-per-point", "2",
                     "--batch-models", "4", "--width", "4", "--data-dir", str(synthetic_dir), "--out", str(out)]) == 0
    rows = fastvar.results(out)
    assert len(rows) == 8
    for r in rows:
        assert r["epochs"] == len(r["train_loss_curve"]) and r["point"].startswith(f"epochs={r['epochs']},")
