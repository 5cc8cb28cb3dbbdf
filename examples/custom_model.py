"""A model and data of your own: how much does a small GroupNorm ResNet's test accuracy move with the
seed alone, and does fixing the initialisation change that? On a CPU in under a minute.

    python examples/custom_model.py [OUT]
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fastvar


class TinyResNet(nn.Module):
    """Any nn.Module of ordinary layers: here GroupNorm, a residual block and a head called `head`."""

    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        return self.head(F.adaptive_avg_pool2d(x, 4).flatten(1))  # 4×4 keeps where the bar is


def make_net():  # built under each run's init seed: torch.manual_seed(init_seed); make_net()
    return TinyResNet()


def bars(n, seed):
    """16×16 grey images of a bright bar at one of four places (the label), under noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = rng.integers(0, 200, (n, 16, 16, 1))
    for i, label in enumerate(labels):
        images[i, 4 * label:4 * label + 3, :, 0] += 30
    return images.astype(np.uint8), labels


def main(out="results/custom-model"):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    (x_train, y_train), (x_test, y_test) = bars(512, 0), bars(256, 1)
    data = fastvar.Dataset.from_arrays(x_train, y_train, x_test, y_test)
    recipe = fastvar.Recipe(model=make_net, epochs=4, batch_size=64,
                            optimizer=fastvar.Adam(lr=3e-3),
                            schedule=fastvar.Cosine(), augment=fastvar.Augment(flip=True, pad=2))
    for experiment in ("all-random", "fixed-init"):
        study = fastvar.Study(experiment=experiment, recipe=recipe, runs=8)
        study.run(f"{out}/{experiment}", data=data, execution=fastvar.Execution(batch_models=8))
    for analysis in fastvar.analyze(f"{out}/all-random", f"{out}/fixed-init"):
        m = analysis.metrics
        print(f"{analysis.name}: {m['n']} runs, test accuracy {m['acc_mean'] * 100:.2f} % "
              f"± {m['acc_sd'] * 100:.2f} pp, disagreement {m['disagreement'] * 100:.1f} %")


if __name__ == "__main__":
    main(*sys.argv[1:])
