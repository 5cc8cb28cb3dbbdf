"""A study survives a diverging replica and an out-of-memory error without losing or changing runs."""
import math

import pytest
import torch

from fastvar import Study, cli, study as study_module
from fastvar.sources import run_seeds
from fastvar.store import Store
from fastvar.train import RECIPES, replica_hyperparameters, train_replicas
from conftest import random_dataset


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_a_diverging_replica_is_marked_and_leaves_the_others_alone(strategy):
    data = random_dataset(64, 20)
    recipe = dict(RECIPES["seed"], epochs=1, batch_size=16)
    seeds = [run_seeds("all-random", i) for i in range(3)]
    hyper = [replica_hyperparameters(recipe) for _ in seeds]
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
    kwargs = dict(runs=4, batch_models=4, width=4, epochs=1, strategy="loop")
    Study(**kwargs).run(tmp_path / "whole", data_dir=synthetic_dir)
    real, calls = study_module.train_replicas, []

    def out_of_memory_once(data, recipe, seeds, **rest):
        calls.append(len(seeds))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("injected by the test")
        return real(data, recipe, seeds, **rest)
    monkeypatch.setattr(study_module, "train_replicas", out_of_memory_once)
    Study(**kwargs).run(tmp_path / "split", data_dir=synthetic_dir)
    assert calls == [4, 2, 2] and "retrying in batches of 2" in capsys.readouterr().err
    whole, split = Store(tmp_path / "whole").runs(), Store(tmp_path / "split").runs()
    assert [r["batch_models"] for r in split] == [2, 2, 2, 2]  # the split is recorded
    for a, b in zip(whole, split):
        assert (a["test_logits"] == b["test_logits"]).all()
