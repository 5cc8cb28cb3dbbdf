"""The sources of randomness: each run's seeds, one per source, from (base seed, source, run index).

A varied source takes its seed from the run index, a fixed one from a constant, so fixing one source
never fixes another. Seeds do not depend on the experiment's name: run k draws the same init seed in
every experiment where init varies, which makes experiments paired and comparable run by run.
"""
import hashlib
from dataclasses import dataclass

import torch

SOURCES = ("init", "order", "aug")

# A preset's name says what is fixed; every other source varies (augmentation only where the recipe
# augments: without it, its seed changes nothing).
EXPERIMENTS = {
    "all-random": {"init", "order", "aug"},
    "fixed-order": {"init", "aug"},
    "fixed-init": {"order", "aug"},
    # I init seeds crossed with J order seeds (run i·J + j), everything else fixed: for a two-way
    # ANOVA of the variance due to each.
    "grid": {"init", "order"},
}

FIXED = "fixed"


def derive_seed(base_seed, source, key):
    """A 63-bit seed that is a stable hash of its inputs (same on every machine and Python)."""
    digest = hashlib.blake2b(f"fastvar/{base_seed}/{source}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class RunSeeds:
    run_index: int
    init_seed: int
    order_seed: int
    aug_seed: int


def seed_keys(experiment, run_index, grid_columns=None):
    """What each source's seed derives from: the run index if varied, FIXED if not; in a grid, the
    row (init) and column (order) of the run, so row i shares its init seed with run i elsewhere."""
    if experiment == "grid":
        row, column = divmod(run_index, grid_columns)
        return {"init": row, "order": column, "aug": FIXED}
    return {source: run_index if source in EXPERIMENTS[experiment] else FIXED for source in SOURCES}


def run_seeds(experiment, run_index, base_seed=0, grid_columns=None):
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}")
    if (experiment == "grid") != (grid_columns is not None):
        raise ValueError("the grid experiment, and only it, needs the grid's number of columns")
    seeds = {source: derive_seed(base_seed, source, key)
             for source, key in seed_keys(experiment, run_index, grid_columns).items()}
    return RunSeeds(run_index, seeds["init"], seeds["order"], seeds["aug"])


class DataOrder:
    """A run's data order: a fresh permutation each epoch from its own generator, like a shuffling
    DataLoader. Drawn on the CPU so that a run sees the same order on every device."""

    def __init__(self, order_seed):
        self.generator = torch.Generator().manual_seed(order_seed)

    def epoch(self, n):
        return torch.randperm(n, generator=self.generator)
