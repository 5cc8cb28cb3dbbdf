"""Training the runs of studies: a checked plan for each batch of replicas, the engine's call, the
out-of-memory split, each batch's rows into its folders, and the weights kept for CKA. Study.run and
Sweep.run hand it (study, store, run index) entries; it reads the studies and writes the stores."""
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from .engine.train import train_replicas
from .recipes import PER_REPLICA, Recipe
from .precisions import COMPUTE_DTYPE, PRECISIONS
from .sources import RunSeeds, kernel_mode, run_seeds
from .store import weights_path


def train_runs(entries, data, execution, progress=None):
    """Train (study, store, run index) entries as `execution` says: under vmap its `batch_models` per
    batched step; under the loop strategy one run after another, each stored as it finishes (a loop run
    is the same bits alone as in a batch, so a batch would only hold finished runs back until its last
    one: Ctrl-C then lost them all). The studies of one call may differ only in the hyperparameters a
    batch can hold per replica (a sweep's points)."""
    if not entries:
        return
    if progress:
        progress(0, len(entries))  # training starts
    lead, device = entries[0][0], execution.resolved_device()
    size = execution.batch_models if execution.resolved_strategy(device) == "vmap" else 1
    data = data.to(device)
    with kernel_mode("kernels" in lead.varied(), device):
        for start in range(0, len(entries), size):
            chunk = entries[start:start + size]
            on_step = progress and (lambda fraction, start=start, n=len(chunk):
                                    progress(start + fraction * n, len(entries)))
            train_or_split(chunk, data, execution, device, on_step, size)


def train_or_split(chunk, data, execution, device, on_step, size):
    """Train `chunk` as one batch of `size` replicas; out of memory, as two halves, down to one replica."""
    try:
        train_chunk(chunk, data, execution, device, on_step, size)
    except torch.OutOfMemoryError:
        if size == 1:
            raise
        half = (size + 1) // 2
        print(f"fastvar: out of memory with {size} replicas in a batch; retrying in batches of {half}",
              file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for start in range(0, len(chunk), half):
            part = chunk[start:start + half]
            part_step = on_step and (lambda f, start=start, n=len(part): on_step((start + f * n) / len(chunk)))
            train_or_split(part, data, execution, device, part_step, half)


@dataclass(frozen=True)
class TrainingPlan:
    """One batch of replicas as the engine trains it: what they share (the lead study's, checked to be
    every other study's too) and each replica's own seeds and hyperparameters."""
    recipe: Recipe  # the lead's; its model as fastvar.models.model_spec takes it
    width: int | None
    precision: str
    eval_every_epoch: bool
    token_logits: bool
    onset_epoch: int
    fixed: RunSeeds  # the seeds a fixed source draws from (and every source before the onset)
    epoch_order: str
    seeds: list  # RunSeeds, one per replica
    hyper: list  # Recipe.per_replica, one per replica
    keep: list  # the replicas whose final weights are kept


def plan_batch(chunk, size, strategy, device):
    """The plan of `chunk`'s runs trained as one batch of `size` replicas. Under vmap the batch is
    padded with copies of its last run, trained and thrown away, so every batch has `size` replicas:
    static shapes, and a vmap result never depends on how full its batch was. A loop run does not
    depend on its batch, so the loop trains exactly the runs it has."""
    check_one_batch(chunk, device)
    lead, resolved = chunk[0][0], chunk[0][0].resolve(device)
    padded = chunk + [chunk[-1]] * (size - len(chunk)) if strategy == "vmap" else chunk
    return TrainingPlan(
        recipe=resolved.recipe, width=resolved.width, precision=resolved.precision,
        eval_every_epoch=lead.eval_every_epoch, token_logits=lead.token_logits,
        onset_epoch=lead.onset_epoch or 0, fixed=run_seeds(set(), 0, lead.seed, lead.fixed_seed),
        epoch_order=lead.epoch_order, seeds=[study.seeds(i) for study, _, i in padded],
        hyper=[study.resolve(device).recipe.per_replica() for study, _, _ in padded],
        keep=[r for r, (study, _, i) in enumerate(chunk) if i < study.save_weights])


def train_chunk(chunk, data, execution, device, on_step, size):
    """Train `chunk` as one batch of `size` replicas and store each run's row in its folder."""
    strategy, compile = execution.resolved_strategy(device), execution.resolved_compile(device)
    plan = plan_batch(chunk, size, strategy, device)
    started = time.perf_counter()
    results = train_replicas(data, plan.recipe, plan.seeds, width=plan.width, strategy=strategy,
                             dtype=PRECISIONS[plan.precision], compute_dtype=COMPUTE_DTYPE.get(plan.precision),
                             compile=compile, conv=execution.conv, cuda_graphs=execution.resolved_cuda_graphs(device),
                             on_step=on_step, keep_weights=plan.keep, eval_every_epoch=plan.eval_every_epoch,
                             onset_epoch=plan.onset_epoch, fixed=plan.fixed, epoch_order=plan.epoch_order,
                             hyper=plan.hyper, token_logits=plan.token_logits)
    wall_s = (time.perf_counter() - started) / len(plan.seeds)
    for r in plan.keep:  # before the rows: a stored run with saved weights always has its file
        study, store, i = chunk[r]
        save_weights(results[r].pop("weights"), weights_path(store.folder, study.experiment, i))
    how = {"strategy": strategy, "compiled": int(compile is not None), "conv": execution.conv, "wall_s": wall_s,
           "device": str(device), "n_test": len(data.y_test), "batch_models": len(plan.seeds),
           "threads": torch.get_num_threads(), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    by_store = {}
    for (study, store, _), seeds, result in zip(chunk, plan.seeds, results):
        by_store.setdefault(store, []).append(study.row(seeds, result, how))
    for store, rows in by_store.items():  # one transaction per folder
        store.add_runs(rows)


def check_one_batch(chunk, device):
    """Every study of a batch agrees on what a batch cannot hold per replica: its lead's settings are
    the batch's (Sweep.run groups its points so; this holds it)."""
    lead = chunk[0][0]
    others = {id(study): study for study, _, _ in chunk if study is not lead}.values()
    for study in others:
        if study.resolve(device).batch_settings != lead.resolve(device).batch_settings:
            raise ValueError(f"{study.experiment} and {lead.experiment} differ in more than the per-replica "
                             f"hyperparameters ({', '.join(PER_REPLICA)}): they cannot share a batch")


def save_weights(state_dict, path):
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(".part")
    torch.save(state_dict, partial)
    partial.replace(path)  # atomic: a kill never leaves a half-written file under the final name
