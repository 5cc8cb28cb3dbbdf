"""The sources of randomness: each run's seeds, one per source, from (base seed, source, run index).

A varied source takes its seed from the run index, a fixed one from a constant, so fixing one source
never fixes another. Seeds do not depend on the experiment's name: run k draws the same init seed in
every experiment where init varies, which makes experiments paired and comparable run by run.
"""
import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import ConfigError, Param

SOURCES = ("init", "order", "aug", "dropout", "perturb", "kernels")
EVERYDAY = {"init", "order", "aug", "dropout", "kernels"}  # what an ordinary training run varies

# A preset's name says what is fixed (the rest of EVERYDAY varies) or what alone varies.
EXPERIMENTS = {
    "all-random": EVERYDAY,
    "fixed-init": EVERYDAY - {"init"},
    "fixed-order": EVERYDAY - {"order"},
    "fixed-aug": EVERYDAY - {"aug"},
    **{f"vary-{source}": {source} for source in ("init", "order", "aug", "dropout", "kernels")},
    "one-ulp": {"perturb"},  # everything fixed but one weight of the first layer, moved by one ulp
    "deterministic": set(),  # a self-check: every run must come out identical
    # I init seeds crossed with J order seeds (run i·J + j), everything else fixed: for a two-way
    # ANOVA of the variance due to each.
    "grid": {"init", "order"},
}

FIXED = "fixed"


def experiment_sources(name):
    """The sources experiment `name` varies: a preset's, or those of `vary-a+b` (from --vary a,b)."""
    if name in EXPERIMENTS:
        return EXPERIMENTS[name]
    named = set(name.removeprefix("vary-").split("+")) if name.startswith("vary-") else {None}
    if not named <= set(SOURCES):
        raise ConfigError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}, "
                          f"or {{}} a subset of {', '.join(SOURCES)}", Param("vary"))
    return named


def derive_seed(base_seed, source, key):
    """A 63-bit seed that is a stable hash of its inputs (same on every machine and Python)."""
    digest = hashlib.blake2b(f"fastvar/{base_seed}/{source}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def fixed_key(fixed_seed):
    # Constant 0 keeps the key that folders made before --fixed-seed existed used.
    return FIXED if fixed_seed == 0 else f"{FIXED}/{fixed_seed}"


@dataclass(frozen=True)
class RunSeeds:
    run_index: int
    init_seed: int
    order_seed: int
    aug_seed: int
    dropout_seed: int
    perturb_seed: int | None  # None: no perturbation (the source is fixed)
    kernels_nondeterministic: int  # 1: fast nondeterministic GPU kernels allowed; 0: deterministic ones


def seed_keys(varied, run_index, fixed_seed=0, grid_columns=None):
    """What each source's seed derives from: the run index if varied, the fixed key if not; in a grid,
    the row (init) and column (order) of the run, so row i shares its init seed with run i elsewhere."""
    keys = {source: run_index if source in varied else fixed_key(fixed_seed) for source in SOURCES}
    if grid_columns is not None:
        keys["init"], keys["order"] = divmod(run_index, grid_columns)
    return keys


def run_seeds(varied, run_index, base_seed=0, fixed_seed=0, grid_columns=None):
    """Run `run_index`'s seeds when the sources in `varied` (a preset's name or a set) vary."""
    if isinstance(varied, str):
        if (varied == "grid") != (grid_columns is not None):
            raise ValueError("the grid experiment, and only it, needs the grid's number of columns")
        varied = experiment_sources(varied)
    keys = seed_keys(varied, run_index, fixed_seed, grid_columns)
    seeds = {source: derive_seed(base_seed, source, keys[source]) for source in SOURCES}
    return RunSeeds(run_index, seeds["init"], seeds["order"], seeds["aug"], seeds["dropout"],
                    seeds["perturb"] if "perturb" in varied else None, int("kernels" in varied))


EPOCH_ORDERS = ("fresh", "same")


class DataOrder:
    """A run's data order: epoch e is the e-th `torch.randperm` of its own generator, like a shuffling
    DataLoader (`fresh`), or its first permutation in every epoch (`same`: the seed repository's exp2,
    which shuffles once and then reads that order every epoch). Drawn on the CPU so that a run sees the
    same order on every device. With an onset, epochs before it come from the fixed order's generator
    instead, and the run's own from it on."""

    def __init__(self, order_seed, fixed_order_seed=None, onset_epoch=0, epoch_order="fresh"):
        if epoch_order not in EPOCH_ORDERS:
            raise ValueError(f"unknown epoch order {epoch_order!r}; choose from {', '.join(EPOCH_ORDERS)}")
        self.generator = torch.Generator().manual_seed(order_seed)
        self.before_onset = onset_epoch and torch.Generator().manual_seed(fixed_order_seed)
        self.onset_epoch, self.epochs_drawn, self.same = onset_epoch, 0, epoch_order == "same"
        self.first = {}  # generator -> its first permutation, for `same`

    def epoch(self, n):
        generator = self.before_onset if self.epochs_drawn < self.onset_epoch else self.generator
        self.epochs_drawn += 1
        if not self.same:
            return torch.randperm(n, generator=generator)
        if generator not in self.first:
            self.first[generator] = torch.randperm(n, generator=generator)
        return self.first[generator]


class DropoutMasks:
    """Each run's dropout masks, drawn on the CPU from its own generator (its dropout seed) so a run
    sees the same masks on every device; before the onset, every run draws from the fixed seed's."""

    def __init__(self, dropout_seeds, p, shape, onset_epoch=0, fixed_dropout_seed=None):
        """`shape`: one example's input to the classifier (features, or positions × features)."""
        self.own = [torch.Generator().manual_seed(s) for s in dropout_seeds]
        self.before_onset = onset_epoch and torch.Generator().manual_seed(fixed_dropout_seed)
        self.p, self.shape, self.onset_epoch = p, tuple(shape), onset_epoch

    def keep(self, epoch, batch):
        """M×batch×shape booleans, on the CPU: True where an element is kept."""
        if epoch < self.onset_epoch:
            keep = torch.rand(batch, *self.shape, generator=self.before_onset) >= self.p
            return keep.expand(len(self.own), *[-1] * (1 + len(self.shape)))
        return torch.stack([torch.rand(batch, *self.shape, generator=g) >= self.p for g in self.own])

    def scaled(self, keep):
        """The masks of `keep` (on any device): 0 where dropped, 1/(1-p) where kept, in float64."""
        return keep.double() / (1 - self.p)

    def draw(self, epoch, batch):
        """M×batch×shape float64 masks, on the CPU."""
        return self.scaled(self.keep(epoch, batch))


def first_weight_name(params):
    """The first layer's weight: the first parameter of two or more dimensions (besides the replicas')."""
    return next(name for name, p in params.items() if p.dim() > 2)


@torch.no_grad()
def perturb_one_ulp(params, replica, perturb_seed):
    """Move one element of replica `replica`'s first-layer weight to the adjacent representable value
    (up or down), both chosen by `perturb_seed`, as numpy.nextafter would. Returns (name, index)."""
    name = first_weight_name(params)
    weight = params[name][replica]
    generator = torch.Generator().manual_seed(perturb_seed)
    index = int(torch.randint(weight.numel(), (1,), generator=generator))
    upward = bool(torch.randint(2, (1,), generator=generator))
    target = torch.tensor(float("inf") if upward else float("-inf"), dtype=weight.dtype, device=weight.device)
    element = tuple(int(i) for i in torch.unravel_index(torch.tensor(index), weight.shape))  # any memory layout
    weight[element] = torch.nextafter(weight[element], target)
    return name, index


@contextmanager
def kernel_mode(nondeterministic, device):
    """The kernels source. On CUDA, varied: cuDNN autotuning on and nondeterministic algorithms allowed;
    fixed: deterministic algorithms only. CPU kernels are deterministic either way."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    torch.backends.cudnn.benchmark = nondeterministic
    torch.use_deterministic_algorithms(not nondeterministic)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.use_deterministic_algorithms(saved[1])
