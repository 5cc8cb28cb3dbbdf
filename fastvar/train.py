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
    device = data.x_train.device
    replicas = Replicas(recipe["model"], [s.init_seed for s in seeds], width=width,
                        strategy=strategy, dtype=dtype, device=device)
    optimizer = make_optimizer(recipe["optimizer"], replicas.params)
    orders = [DataOrder(s.order_seed) for s in seeds]
    table = normalize_table(recipe["mean"], recipe["std"], dtype, device)
    n, batch = len(data.y_train), recipe["batch_size"]
    steps_per_epoch, epochs = math.ceil(n / batch), recipe["epochs"]
    loss_curves, acc_curves = [], []
    for epoch in range(epochs):
        order = torch.stack([o.epoch(n) for o in orders]).to(device)  # M×N
        loss_sum = torch.zeros(len(seeds), dtype=torch.float64, device=device)
        correct = torch.zeros(len(seeds), dtype=torch.int64, device=device)
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
    logits = evaluate(replicas, data, table)
    return [result(logits[r], data.y_test, [c[r] for c in loss_curves], [c[r] for c in acc_curves])
            for r in range(len(seeds))]


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
