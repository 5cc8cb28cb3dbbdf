"""Experiment semantics: what each experiment fixes and varies, seen in the replicas themselves."""
import torch

from fastvar.engine.replicas import Replicas
from fastvar.sources import EXPERIMENTS, FIXED, DataOrder, derive_seed, run_seeds


def inits_and_orders(experiment, runs=3):
    seeds = [run_seeds(experiment, i) for i in range(runs)]
    conv = Replicas("resnet18", [s.init_seed for s in seeds], width=4).params["conv1.weight"]
    orders = [torch.cat([o.epoch(100) for o in [DataOrder(s.order_seed)] for _ in range(2)]) for s in seeds]
    same_init = all(torch.equal(conv[0], conv[r]) for r in range(1, runs))
    same_order = all(torch.equal(orders[0], orders[r]) for r in range(1, runs))
    return same_init, same_order, orders


def test_fixed_init_starts_identical_and_shuffles_differently():
    assert inits_and_orders("fixed-init")[:2] == (True, False)


def test_fixed_order_sees_identical_orders_from_different_inits():
    same_init, same_order, orders = inits_and_orders("fixed-order")
    assert (same_init, same_order) == (False, True)
    assert not torch.equal(orders[0][:100], orders[0][100:])  # a fresh permutation each epoch


def test_all_random_varies_both():
    assert inits_and_orders("all-random")[:2] == (False, False)


def test_seeds_are_paired_across_experiments_and_follow_the_base_seed():
    for i in range(5):
        every = run_seeds("all-random", i)
        assert run_seeds("fixed-order", i).init_seed == every.init_seed
        assert run_seeds("fixed-init", i).order_seed == every.order_seed
        assert run_seeds("all-random", i, base_seed=1) != run_seeds("all-random", i)
        assert run_seeds("fixed-init", i).aug_seed == run_seeds("fixed-order", i).aug_seed == every.aug_seed
    assert {"all-random", "fixed-order", "fixed-init"} <= set(EXPERIMENTS)
    assert run_seeds("fixed-init", 0).aug_seed != run_seeds("fixed-init", 1).aug_seed  # aug varies in all three


def test_a_grid_crosses_init_rows_with_order_columns():
    rows, columns = 3, 4
    seeds = [run_seeds("grid", i, grid_columns=columns) for i in range(rows * columns)]
    for i in range(rows):
        for j in range(columns):
            s = seeds[i * columns + j]
            assert s.init_seed == run_seeds("all-random", i).init_seed  # row i: init seed of run i
            assert s.order_seed == run_seeds("all-random", j).order_seed  # column j: order seed of run j
            assert s.aug_seed == derive_seed(0, "aug", FIXED)  # every other source fixed
    assert len({s.init_seed for s in seeds}) == rows and len({s.order_seed for s in seeds}) == columns
