"""The loop that trains a batch of replicas through a whole run, all at once, by a typed Recipe."""
import math
from dataclasses import asdict
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..augment import batch_inputs, normalized
from ..data import IGNORE, TEST_SET
from ..sources import DataOrder, DropoutMasks, perturb_one_ulp
from .graphs import GraphedStep
from .optim import OPTIMIZERS
from .replicas import Replicas
from .vmap_layers import at_least_float32

EVAL_BATCH = 1000
EVAL_TOKENS = 16_384  # a language model's evaluation chunk, in positions: its logits are M×chunk×vocabulary
SEED_TEST_BATCH = 128  # the seed repository's test loader, whose batch means it averaged


def make_optimizer(recipe, params, layout, **kwargs):
    """The recipe's batched optimizer over a flat [M, P] buffer of `layout`; `kwargs` as
    BatchedOptimizer takes them (lr and weight_decay: vectors that override the recipe's per replica)."""
    kwargs = {**asdict(recipe.optimizer), **kwargs}
    scale_1d = recipe.lr_scale_1d or 1.0  # biases and BatchNorm parameters: one dimension
    kwargs["spans"] = layout.spans(lambda n: scale_1d if len(layout.entries[n].shape) == 1 else 1.0)
    return OPTIMIZERS[recipe.optimizer.name](params, **kwargs)


def train_replicas(data, recipe, seeds, *, width, strategy, dtype, compute_dtype=None, compile=None, conv="auto",
                   on_step=None, keep_weights=(), eval_every_epoch=False, onset_epoch=0, fixed=None, hyper=None,
                   epoch_order="fresh", cuda_graphs=False, cuda_path=None, graph_class=GraphedStep, token_logits=False):
    """Train one replica per entry of `seeds` (RunSeeds) on `data` (already on its device) by `recipe`
    (a fastvar.Recipe); with an `onset_epoch`, every replica uses the `fixed` RunSeeds' order and
    augmentation before it; `hyper`, one dict per replica as Recipe.per_replica gives, sets each replica's
    own (default: the recipe's);
    `epoch_order` as fastvar.sources.DataOrder takes it.

    Returns one dict per replica: per-epoch training loss and accuracy (fit's curves), test logits,
    accuracy, loss,
    with `eval_every_epoch` per-epoch test accuracy and loss (else None), with a cyclic schedule the
    test logits at the end of each cycle (`snapshot_logits`), and for the replicas listed in
    `keep_weights` their final state dict (`weights`, on the CPU).
    `compute_dtype` (bfloat16 for mixed precision, or None), `compile` and `conv` as Replicas takes them;
    `cuda_graphs`: replay each step as a CUDA graph (a `graph_class`, fastvar.engine.graphs.GraphedStep; its
    `ran_as_graph` becomes each row's `cuda_graph`); `cuda_path` as fit takes it.
    `on_step(fraction)` is called after each step with the fraction of this batch's training done.
    `token_logits`: a language model's rows keep their whole test logits too (n_test×T×vocabulary).
    """
    replicas = Replicas(recipe.model, [s.init_seed for s in seeds], width=width, strategy=strategy,
                        dtype=dtype, device=data.x_train.device, dropout=recipe.dropout,
                        compute_dtype=compute_dtype, compile=compile, conv=conv, num_classes=data.num_classes,
                        input_shape=data.example_shape, pad_id=data.pad_id)
    test_scores, snapshots, latest = [], [], {}  # evaluation draws no randomness: it changes no result
    cuda_path = resolved_cuda_path(cuda_path, data.x_train.device)
    augment_backend = "triton" if cuda_path else "auto"
    snapshot_at = recipe.snapshot_epochs()
    keep = token_logits and data.token_targets  # a language model's whole logits, kept

    def on_epoch(epoch):
        if eval_every_epoch or epoch in snapshot_at:
            logits = evaluate(replicas, data, recipe, augment_backend, token_logits=keep and epoch in snapshot_at)
            latest.clear()  # only the latest evaluation can serve again, as the final one
            latest[epoch] = logits
            if eval_every_epoch:
                test_scores.append(scores(logits, data.y_test))
            if epoch in snapshot_at:
                snapshots.append((logits.logits if isinstance(logits, TokenOutputs) else logits).cpu())
    graphed = []

    def wrap_step(step):  # kept, to read whether its steps ran as a graph
        graphed.append(graph_class(step))
        return graphed[-1]
    wrap_step = wrap_step if cuda_graphs else None
    curves = fit(replicas, data, recipe, seeds, onset_epoch=onset_epoch, fixed=fixed, hyper=hyper,
                 on_step=on_step, on_epoch=on_epoch, epoch_order=epoch_order, cuda_path=cuda_path,
                 step_wrapper=wrap_step)
    final = recipe.epochs - 1  # evaluated already where every epoch is, or where the last cycle ends
    cached = latest.get(final)  # whole logits only where kept at a cycle's end
    usable = cached is not None and not (keep and cached.logits is None)
    logits = cached if usable else evaluate(replicas, data, recipe, augment_backend, token_logits=keep)
    results = [result(replica_outputs(logits, r), data.y_test, {name: c[r] for name, c in curves.items()})
               for r in range(replicas.size)]
    add_eval_sets(results, {name: evaluate(replicas, data, recipe, augment_backend, name, keep)
                            for name in data.eval_sets}, data)
    for r, row in enumerate(results):
        row["test_acc_curve"] = [acc[r].item() for acc, _ in test_scores] if eval_every_epoch else None
        row["test_loss_curve"] = [loss[r].item() for _, loss in test_scores] if eval_every_epoch else None
        row["snapshot_logits"] = [s[r] for s in snapshots]
        row["cuda_graph"] = int(bool(graphed) and graphed[0].ran_as_graph)
    for r in keep_weights:
        results[r]["weights"] = {n: t.cpu() for n, t in replicas.state_dict(r).items()}
    return results


def add_eval_sets(results, outputs, data):
    """Each replica's test_result on each eval set (`outputs` by name, evaluate's), as its `evals`; a
    replica whose outputs on one stopped being finite is marked diverged."""
    for r, row in enumerate(results):
        row["evals"] = {name: test_result(replica_outputs(o, r), data.eval_sets[name][1]) for name, o in outputs.items()}
        if not all(torch.isfinite(as_tensor(replica_outputs(o, r))).all() for o in outputs.values()):
            row["diverged"] = 1


def fit(replicas, data, recipe, seeds, *, onset_epoch=0, fixed=None, hyper=None, on_step=None, on_epoch=None,
        epoch_order="fresh", cuda_path=None, step_wrapper=None):
    """Train `replicas` in place for the recipe's epochs. Returns per-epoch curves by name, each one
    list per replica: `train_loss_curve` (mean loss over the epoch's examples), `train_acc_curve`, and
    `train_loss_batch_mean_curve` (the mean of the batches' mean losses, the last partial batch weighted
    like a full one, as the seed repository averaged).

    Before `onset_epoch`, order and augmentation come from the `fixed` seeds; the one-ulp perturbation
    of the replicas with a perturb seed lands at its start (0: right after init). `hyper`: each
    replica's learning rate, weight decay, label smoothing and gradient-norm clip (default: the recipe's for all).
    `on_epoch(epoch)` is called after each epoch; `step_wrapper(step)` → what runs each training step
    in its place (fastvar.engine.graphs.GraphedStep: a CUDA graph).
    `cuda_path` (default: on CUDA): the kernels CUDA runs, on any device (the stacked update and the
    augmentation in Triton; on a CPU under TRITON_INTERPRET=1), so that a CPU can check CUDA's step."""
    device = data.x_train.device
    hyper = hyper or [recipe.per_replica()] * replicas.size
    vectors = {k: torch.tensor([h[k] or 0.0 for h in hyper], dtype=torch.float64) for k in hyper[0]}  # None: 0, off
    smoothing, clip = vectors.pop("label_smoothing"), vectors.pop("clip_grad_norm")
    smoothing = smoothing.to(device) if smoothing.any() else None
    clip = clip.to(device) if clip.any() else None
    # Replica by replica for the loop strategy (a lone run's operations) and on any uncompiled CPU
    # run (the C loops of fastvar.engine.optim_cpu); both orders give the same bits.
    cuda_path = resolved_cuda_path(cuda_path, device)
    by_replica = replicas.strategy == "loop" or (not cuda_path and device.type == "cpu" and not replicas.compile)
    n, batch, epochs = len(data.y_train), recipe.batch_size, recipe.epochs
    targets = data.targets("train")  # the examples, or a language model's target tokens
    steps_per_epoch = math.ceil(n / batch)
    total_steps = epochs * steps_per_epoch
    factors = [recipe.schedule.factor(step, steps_per_epoch, total_steps) for step in range(total_steps)]
    optimizer = make_optimizer(recipe, replicas.master, replicas.layout, lr_factors=factors, by_replica=by_replica,
                               low=replicas.low, triton=cuda_path and not by_replica, **vectors)
    # The dead taps get no gradient; weight decay alone moves them (the same update, its gradient 0)
    decay_only = None
    if vectors["weight_decay"].any() and replicas.dead.shape[1]:
        decay_only = make_optimizer(recipe, replicas.dead, replicas.dead_layout, lr_factors=factors,
                                    by_replica=by_replica, triton=cuda_path and not by_replica, **vectors)
        dead_grad = (torch.zeros_like(replicas.dead),)

    def train_step(x, y, dropout):  # no host reads: a CUDA graph can replay it
        losses, hits, grads = replicas.train_step_grads(x, y, dropout, smoothing)
        optimizer.step(grads if clip is None else clipped(grads, clip))
        if decay_only:
            decay_only.step(dead_grad)
        return losses, hits
    step_of = step_wrapper(train_step) if step_wrapper else train_step
    before = fixed if onset_epoch else None
    orders = [DataOrder(s.order_seed, before and before.order_seed, onset_epoch, epoch_order) for s in seeds]
    own_aug = torch.tensor([s.aug_seed for s in seeds], dtype=torch.int64, device=device)
    fixed_aug = torch.full_like(own_aug, before.aug_seed) if before else own_aug
    own_drop = torch.tensor([s.dropout_seed for s in seeds], dtype=torch.int64, device=device)
    fixed_drop = torch.full_like(own_drop, before.dropout_seed) if before else own_drop
    dtype, augment_backend = replicas.input_dtype(), "triton" if cuda_path else "auto"
    masks = None
    if recipe.dropout:
        example = normalized(data.x_train, torch.arange(1, device=device), recipe, dtype, augment_backend)
        masks = DropoutMasks([s.dropout_seed for s in seeds], recipe.dropout, replicas.classifier_input(example),
                             onset_epoch, before and before.dropout_seed)
    curves = {"train_loss_curve": [], "train_acc_curve": [], "train_loss_batch_mean_curve": []}
    for epoch in range(epochs):
        if epoch == onset_epoch:
            for r, s in enumerate(seeds):
                if s.perturb_seed is not None:
                    perturb_one_ulp(replicas.params, r, s.perturb_seed)
            replicas.weights_changed()
        aug_seeds = own_aug if epoch >= onset_epoch else fixed_aug
        drop_seeds = own_drop if epoch >= onset_epoch else fixed_drop
        order = host_to_device(torch.stack([o.epoch(n) for o in orders]), device)  # M×N
        loss_sum = torch.zeros(replicas.size, dtype=torch.float64, device=device)
        batch_mean_sum = torch.zeros_like(loss_sum)
        correct = torch.zeros(replicas.size, dtype=torch.int64, device=device)
        for step, start in enumerate(range(0, n, batch)):  # the last, partial batch is kept
            indices = order[:, start:start + batch]
            x = batch_inputs(data.x_train, indices, aug_seeds, epoch, recipe, dtype, augment_backend)
            # the booleans cross to the device, where they are scaled as on the CPU
            dropout = None if masks is None else masks.scaled(host_to_device(masks.keep(epoch, indices.shape[1]),
                                                                             device)).to(dtype)
            y = data.y_train[indices]
            done = epoch * steps_per_epoch + step
            if replicas.dropout_seeds:  # outside the step: a graph replays reading the buffers as set
                replicas.set_dropout(drop_seeds, done)
            losses, hits = step_of(x, y, dropout)
            loss_sum += losses * (indices.shape[1] if y.dim() == 2 else (y != IGNORE).flatten(1).sum(1))
            batch_mean_sum += losses
            correct += hits
            if on_step:
                on_step((done + 1) / total_steps)
        for name, value in (("train_loss_curve", loss_sum / targets), ("train_acc_curve", correct / targets),
                            ("train_loss_batch_mean_curve", batch_mean_sum / steps_per_epoch)):
            curves[name].append(value.tolist())  # read once per epoch: no sync inside it
        if on_epoch:
            on_epoch(epoch)
    return {name: [list(c) for c in zip(*by_epoch)] for name, by_epoch in curves.items()}


def clipped(grads, max_norm):
    """Each replica's gradient (stacked parts M×P) scaled as torch.nn.utils.clip_grad_norm_ scales a
    model's: by max_norm / (its 2-norm + 1e-6) where that is below 1; a replica whose max_norm is 0 is
    left as it is. The norm is the flat buffer's per replica (its alignment gaps hold zeros), on the
    device: no host read."""
    squares = [g.to(torch.promote_types(g.dtype, torch.float32)).square().sum(1) for g in grads]
    norm = torch.stack(squares).sum(0).sqrt()
    bound = max_norm.to(norm.dtype)
    scale = torch.where(bound > 0, (bound / (norm + 1e-6)).clamp(max=1), torch.ones_like(norm))
    return tuple(g * scale[:, None].to(g.dtype) for g in grads)


def host_to_device(tensor, device):
    """A tensor made on the host, on `device` without waiting for it: a CUDA copy from pinned memory
    need not synchronise the stream, as one from pageable memory does on every call."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.contiguous().pin_memory().to(device, non_blocking=True)


def resolved_cuda_path(cuda_path, device):
    return device.type == "cuda" if cuda_path is None else cuda_path


class TokenOutputs(NamedTuple):
    """A language model's test outputs, per test position (...×n×T): what every metric but those of
    whole distributions needs, at a vocabulary's fraction of the logits' size."""
    target_logprob: torch.Tensor  # log-probability of the target token (0 where IGNORE), float32 or float64
    argmax: torch.Tensor  # int32 most probable token
    logits: torch.Tensor | None = None  # ...×n×T×vocabulary, kept only where asked (token_logits)


def evaluate(replicas, data, recipe, augment_backend="auto", test_set=TEST_SET, token_logits=False):
    """Eval-mode outputs of all replicas, one pass over the test set or the eval set `test_set`
    (`augment_backend` as fastvar.augment.augment takes it, for the normalisation): logits
    M×n_test×classes, or for target tokens their TokenOutputs, M×n_test×T (with `token_logits`, the
    whole logits too)."""
    dtype = replicas.input_dtype()
    x, y = data.test_sets()[test_set]
    n, device, tokens = len(y), x.device, data.token_targets
    size = max(1, EVAL_TOKENS // y.shape[1]) if tokens else EVAL_BATCH
    chunks = []
    for start in range(0, n, size):
        indices = torch.arange(start, min(start + size, n), device=device)
        logits = replicas.logits(normalized(x, indices, recipe, dtype, augment_backend))
        chunks.append(token_outputs(logits, y[indices], token_logits) if tokens else logits)
    if tokens:
        return TokenOutputs(*(None if parts[0] is None else torch.cat(parts, dim=1) for parts in zip(*chunks)))
    return torch.cat(chunks, dim=1)


def token_outputs(logits, targets, keep_logits=False):
    """TokenOutputs of logits ...×n×T×V against target tokens n×T (the logits kept with `keep_logits`)."""
    log_p = F.log_softmax(at_least_float32(logits), dim=-1)
    index = targets.clamp(min=0).expand(log_p.shape[:-1]).unsqueeze(-1)
    target = log_p.gather(-1, index).squeeze(-1).masked_fill(targets == IGNORE, 0)
    return TokenOutputs(target, logits.argmax(-1).int(), at_least_float32(logits) if keep_logits else None)


def replica_outputs(outputs, r):
    if isinstance(outputs, TokenOutputs):
        return TokenOutputs(*(None if t is None else t[r] for t in outputs))
    return outputs[r]


def scores(outputs, labels):
    """Test accuracy and mean cross-entropy of each replica's logits (...×n×classes), or per target
    token of its TokenOutputs (...×n×T), as float64."""
    if isinstance(outputs, TokenOutputs):
        valid = labels != IGNORE
        count = valid.sum()
        accuracy = ((outputs.argmax == labels) & valid).flatten(-2).sum(-1).double() / count
        return accuracy, -(outputs.target_logprob.double() * valid).flatten(-2).sum(-1) / count
    logits = outputs.float()
    accuracy = (logits.argmax(-1) == labels).double().mean(-1)
    loss = F.cross_entropy(logits.flatten(0, -2), labels.expand(logits.shape[:-1]).flatten(), reduction="none")
    return accuracy, loss.view(logits.shape[:-1]).double().mean(-1)


def batch_mean_loss(logits, labels, batch=SEED_TEST_BATCH):
    """The mean over consecutive batches of `batch` test examples of each batch's mean cross-entropy,
    the last partial batch weighted like a full one (the seed repository's test loss), as float64."""
    losses = F.cross_entropy(logits.float(), labels, reduction="none").double()
    return torch.stack([chunk.mean() for chunk in losses.split(batch)]).mean()


def result(outputs, labels, curves):
    """A replica's results, with its training `curves` (fit's, for this replica); `diverged` if its
    training loss or test outputs stopped being finite (its test losses are then stored as infinity:
    SQLite keeps no NaN)."""
    scored = test_result(outputs, labels)
    tokens = isinstance(outputs, TokenOutputs)
    batch_mean = None if tokens else finite_or_inf(batch_mean_loss(outputs.float(), labels).item())
    return {"diverged": diverged(curves, as_tensor(outputs)), **scored, "test_loss_batch_mean": batch_mean, **curves}


def test_result(outputs, labels):
    """A replica's scores and outputs on one test set, as stored (fastvar.store.EVAL_COLUMNS): its
    logits, or a language model's TokenOutputs (its logits only where kept, n×T×V)."""
    accuracy, loss = scores(outputs, labels)
    if isinstance(outputs, TokenOutputs):
        whole = torch.empty(len(labels), 0) if outputs.logits is None else outputs.logits.float().cpu()
        kept = {"test_logits": whole, "test_token_logprob": outputs.target_logprob.cpu(),
                "test_token_argmax": outputs.argmax.cpu()}
    else:
        kept = {"test_logits": outputs.float().cpu()}
    return {"test_acc": accuracy.item(), "test_loss": finite_or_inf(loss.item()), "n_test": len(labels), **kept}


def as_tensor(outputs):
    """The outputs' floating-point tensor: logits, or the target tokens' log-probabilities."""
    return outputs.target_logprob if isinstance(outputs, TokenOutputs) else outputs


def diverged(curves, test_outputs):
    """1 if the training loss or the test outputs stopped being finite, else 0."""
    return int(not (all(map(math.isfinite, curves["train_loss_curve"])) and torch.isfinite(test_outputs).all().item()))


def finite_or_inf(value):
    return value if math.isfinite(value) else math.inf
