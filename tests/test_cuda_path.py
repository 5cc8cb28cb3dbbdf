"""The step CUDA runs, checked on a CPU (issue 21, parts 1-2): vmap, the stacked update in Triton and
the Triton augmentation (TRITON_INTERPRET=1), the loss and accuracy bookkeeping, dropout masks,
schedules, snapshots and the onset, traced under a dispatch mode.

A CUDA graph replays what its capture recorded, so a step must (1) read nothing on the host (on CUDA a
read is a sync, inside a capture an error) and (2) issue the same ops with the same non-tensor
arguments every time (a host number that changes between steps would be frozen at its first value).
Only the first step of a study (warm-up, as graphs.WARMUP) and the first of each epoch (the epoch's
order and counters, made once per epoch, outside the graphed step) may differ.

The CPU's own path keeps its host reads: its by-replica update (the C loops, fastvar.engine.optim_cpu)
reads each replica's coefficients as Python numbers, which is free on a CPU and never runs on CUDA.
"""
import warnings

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import needs_triton, random_dataset
from fastvar.engine.graphs import first_cause
from fastvar.engine.train import train_replicas
from fastvar.errors import ConfigError, first_line
from fastvar.execution import Execution
from fastvar.recipes import RECIPES, Adam, Cosine
from fastvar.sources import run_seeds

HOST_READ = torch.ops.aten._local_scalar_dense.default
STEP = "step"


class OpLog(TorchDispatchMode):
    """Every op dispatched, with its non-tensor arguments (tensors as their shape and dtype)."""

    def __init__(self):
        super().__init__()
        self.events = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.events.append((str(func), signature(args), signature(tuple(sorted(kwargs.items())))))
        return func(*args, **kwargs)

    def steps(self):
        """The ops between one step's end (on_step) and the next's: a step each, the first with the setup."""
        segments, current = [], []
        for event in self.events:
            if event == STEP:
                segments.append(current)
                current = []
            else:
                current.append(event)
        return segments


def signature(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, (torch.UntypedStorage, torch.TypedStorage)):  # the Triton interpreter's copies
        return ("storage", value.nbytes())
    if isinstance(value, (list, tuple)):
        return tuple(signature(v) for v in value)
    return value


class OwnNet(nn.Module):
    """A model of a user's own: BatchNorm, a residual add, global average pooling, two heads' worth of Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.body = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.head(x.mean((2, 3)))


# (recipe, changes, model, what the case adds); 3 steps an epoch, 2 epochs.
CASES = {
    "seed-adam-bf16": ("seed", {}, None, {"compute_dtype": torch.bfloat16}),
    "summers-sgd-decay-warmup": ("summers", {}, None, {}),
    "jordan-sgd-decay-cutout": ("jordan", {}, None, {"compute_dtype": torch.bfloat16}),
    "cifar-sgd-cycles-dropout-onset": ("resnet18-cifar",
                                       {"schedule": Cosine(cycles=2), "dropout": 0.25, "weight_decay": 0.0},
                                       None, {"onset_epoch": 1, "smoothing": True}),
    "own-model-adamw": ("seed", {"optimizer": Adam(lr=1e-3, weight_decay=0.05, decoupled=True)},
                        OwnNet, {"eval_every_epoch": True, "clip": True}),
}


def trace_study(recipe_name, changes, model, options):
    """The study's ops, cut at each step's end, and the ops of each call of the step a graph would
    capture (fit's train_step, which GraphedStep wraps on CUDA; here a stand-in class that records it)."""
    recipe = RECIPES[recipe_name].replace(**changes, epochs=2, batch_size=8, **{"model": model} if model else {})
    seeds = [run_seeds("all-random", i) for i in range(2)]
    # each replica its own label smoothing or gradient-norm clip, a vector on the device
    own = {"smoothing": ("label_smoothing", (0.0, 0.1)), "clip": ("clip_grad_norm", (0.0, 0.5))}
    per_replica = [{name: values[r] for key, (name, values) in own.items() if options.get(key)} for r in range(2)]
    hyper = [recipe.replace(**changes).per_replica() for changes in per_replica] if any(per_replica) else None
    log, captured = OpLog(), []

    class RecordedStep:  # what GraphedStep would capture, call by call
        ran_as_graph = True

        def __init__(self, step):
            self.step = step

        def __call__(self, *inputs):
            start = len(log.events)
            outputs = self.step(*inputs)
            captured.append(log.events[start:])
            return outputs
    with log:
        results = train_replicas(random_dataset(24, 10), recipe, seeds, width=2, strategy="vmap", dtype=torch.float32,
                                 compute_dtype=options.get("compute_dtype"),
                                 eval_every_epoch=options.get("eval_every_epoch", False),
                                 onset_epoch=options.get("onset_epoch", 0), fixed=run_seeds(set(), 0), hyper=hyper,
                                 on_step=lambda fraction: log.events.append(STEP), cuda_path=True, cuda_graphs=True,
                                 graph_class=RecordedStep)
    return log.steps(), captured, results


@pytest.mark.parametrize("case", CASES)
def test_the_cuda_step_reads_nothing_on_the_host_and_repeats_its_ops(case):
    needs_triton()
    recipe_name, changes, model, options = CASES[case]
    steps, captured, results = trace_study(recipe_name, changes, model, options)
    assert len(steps) == len(captured) == 6  # 3 steps an epoch, 2 epochs
    for k, ops in enumerate(steps[1:], start=1):  # the whole loop, epoch ends included
        reads = sum(op == str(HOST_READ) for op, _, _ in ops)
        assert reads == 0, f"step {k} read the host {reads} times"
    for k in range(2, len(captured)):  # the first is warm-up (SGD's first step starts its momentum)
        assert captured[k] == captured[k - 1], f"step {k} issued other ops than step {k - 1}"
    assert len(captured[1]) > 100  # forward, backward and update were seen
    if options.get("onset_epoch") or "cycles" in changes.get("schedule", {}):
        assert len(results[0]["snapshot_logits"]) == 2
    assert all(r["cuda_graph"] == 1 for r in results)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a synchronisation exists only on CUDA")
def test_no_step_of_a_dropout_study_waits_for_the_gpu():
    """What a host-read trace cannot see: a copy from pageable host memory (each step's dropout masks
    once were one) synchronises the stream. Counted by torch's sync debug mode over 3 steps and 9."""
    def synchronisations(examples):
        recipe = RECIPES["seed"].replace(epochs=1, batch_size=8, dropout=0.25)
        data = random_dataset(examples, 10).to(torch.device("cuda"))
        seeds = [run_seeds("all-random", i) for i in range(2)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_replicas(data, recipe, seeds, width=2, strategy="vmap", dtype=torch.float32)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    assert synchronisations(72) == synchronisations(24)


def test_a_step_that_reads_the_host_is_caught():
    """The check above can fail: a 0-dim index (what the optimizer used to do) is a host read."""
    log = OpLog()
    table, index = torch.arange(4.0), torch.zeros((), dtype=torch.int64)
    with log:
        table[index]
        table.index_select(0, index.view(1))
    reads = [k for k, (op, _, _) in enumerate(log.events) if op == str(HOST_READ)]
    assert len(reads) >= 1 and max(reads) < len(log.events) - 1  # the 0-dim index reads; index_select does not


def test_steps_that_pass_changing_host_numbers_differ_in_their_signature():
    log = OpLog()
    x = torch.ones(3)
    with log:
        for factor in (0.5, 0.25):
            x.mul(factor)
            log.events.append(STEP)
    first, second = log.steps()
    assert first != second


def test_the_loop_strategy_never_graphs():
    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    assert not Execution(strategy="loop").resolved_cuda_graphs(cuda)
    assert Execution(strategy="vmap").resolved_cuda_graphs(cuda)
    assert not Execution(strategy="vmap", cuda_graphs="off").resolved_cuda_graphs(cuda)
    assert not Execution().resolved_cuda_graphs(torch.device("cpu"))
    with pytest.raises(ConfigError, match="needs the vmap strategy"):
        Execution(strategy="loop", cuda_graphs="on")


def test_a_failed_capture_names_its_first_cause():
    try:
        try:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")
        except RuntimeError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as later:
        assert first_line(first_cause(later)) == \
            "RuntimeError: CUDA error: operation not permitted when stream is capturing"
