"""Recipes and the loop that trains a batch of replicas through a whole run, all at once."""
import math

import torch
import torch.nn.functional as F

from .augment import gather_batch, normalize_table
from .optim import OPTIMIZERS
from .replicas import Replicas
from .sources import DataOrder

# Each recipe is every hyperparameter of a run in one place (airbench's `hyp`).
RECIPES = {
    # The seed study: torchvision ResNet-18, Adam 1e-3, batch 128, 10 epochs, no augmentation.
    "seed": {
        "model": "resnet18",
        "epochs": 10,
        "batch_size": 128,
        "optimizer": {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
}

EVAL_BATCH = 1000


def make_optimizer(spec, params):
    kwargs = dict(spec)
    return OPTIMIZERS[kwargs.pop("name")](params, **kwargs)


def train_replicas(data, recipe, seeds, *, width, strategy, dtype, on_step=None):
    """Train one replica per entry of `seeds` (RunSeeds) on `data` (already on its device).

    Returns one dict per replica: per-epoch training loss and accuracy, test logits, accuracy, loss.
    `on_step(fraction)` is called after each step with the fraction of this batch's training done.
    """
    replicas = Replicas(recipe["model"], [s.init_seed for s in seeds], width=width,
                        strategy=strategy, dtype=dtype, device=data.x_train.device)
    loss_curves, acc_curves = fit(replicas, data, recipe, [s.order_seed for s in seeds], on_step)
    logits = evaluate(replicas, data, normalize_table(recipe["mean"], recipe["std"], dtype, data.x_train.device))
    return [result(logits[r], data.y_test, loss_curves[r], acc_curves[r]) for r in range(replicas.size)]


def fit(replicas, data, recipe, order_seeds, on_step=None):
    """Train `replicas` in place for the recipe's epochs; return per-replica loss and accuracy curves."""
    device = data.x_train.device
    optimizer = make_optimizer(recipe["optimizer"], replicas.params)
    orders = [DataOrder(s) for s in order_seeds]
    table = normalize_table(recipe["mean"], recipe["std"], next(iter(replicas.params.values())).dtype, device)
    n, batch, epochs = len(data.y_train), recipe["batch_size"], recipe["epochs"]
    steps_per_epoch = math.ceil(n / batch)
    loss_curves, acc_curves = [], []
    for epoch in range(epochs):
        order = torch.stack([o.epoch(n) for o in orders]).to(device)  # M×N
        loss_sum = torch.zeros(replicas.size, dtype=torch.float64, device=device)
        correct = torch.zeros(replicas.size, dtype=torch.int64, device=device)
        for step, start in enumerate(range(0, n, batch)):  # the last, partial batch is kept
            indices = order[:, start:start + batch]
            losses, hits, grads = replicas.train_step_grads(
                gather_batch(data.x_train, indices, table), data.y_train[indices])
            optimizer.step(grads)
            loss_sum += losses * indices.shape[1]
            correct += hits
            if on_step:
                on_step((epoch * steps_per_epoch + step + 1) / (epochs * steps_per_epoch))
        loss_curves.append((loss_sum / n).tolist())  # read once per epoch: no sync inside it
        acc_curves.append((correct / n).tolist())
    return [list(c) for c in zip(*loss_curves)], [list(c) for c in zip(*acc_curves)]


def evaluate(replicas, data, table):
    """Eval-mode test logits of all replicas, M×n_test×classes, one pass over the test set."""
    n = len(data.y_test)
    chunks = [replicas.logits(gather_batch(data.x_test, torch.arange(i, min(i + EVAL_BATCH, n), device=data.x_test.device), table))
              for i in range(0, n, EVAL_BATCH)]
    return torch.cat(chunks, dim=1)


def result(logits, labels, loss_curve, acc_curve):
    logits = logits.float()
    return {
        "test_acc": (logits.argmax(-1) == labels).double().mean().item(),
        "test_loss": F.cross_entropy(logits, labels).item(),
        "train_loss_curve": loss_curve,
        "train_acc_curve": acc_curve,
        "test_logits": logits.cpu(),
    }
