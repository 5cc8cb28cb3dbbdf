"""Small models, where one run is too small to fill the machine: R runs of a user's own MLP and small
CNN, trained side by side in one process by a plain PyTorch loop (the runs one after another,
torch.optim.Adam, plain indexing, no fastvar code but the model), fastvar's loop strategy and fastvar's
vmap strategy with M = R. The goals of issue 34: vmap ≥ 5× the plain loop for the MLP at R = 64, ≥ 3×
for the CNN at R = 16.

    python benchmarks/small_models.py [--runs 16 64] [--repeats 3] [--epochs 1]

The MLP: 54 → 64 → 64 → 7 on 20,000 rows of float features; the CNN: 1 → 8 → 16 channels (3×3,
stride 2) and a linear read-out on 2,000 28×28 images; batch 128, Adam 1e-3, one epoch. The
contenders take turns, `repeats` times after one untimed warm-up each; the best time counts. Prints
a table and one JSON line (examples/s of each, its ratio to the plain loop, and each goal met or its gap).
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvar.data import Dataset  # noqa: E402
from fastvar.engine.replicas import Replicas  # noqa: E402
from fastvar.engine.train import fit  # noqa: E402
from fastvar.models import build_model  # noqa: E402
from fastvar.recipes import Adam, Recipe  # noqa: E402
from fastvar.sources import run_seeds  # noqa: E402

GOALS = {("mlp", 64): 5.0, ("cnn", 16): 3.0}  # vmap's ratio to the plain loop, issue 34


class SmallMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(54, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 7)

    def forward(self, x):
        return self.head(self.body(x))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        return self.head(self.body(x))


def datasets(rows, images):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 54)).astype(np.float32)
    features = Dataset.from_arrays(x, (x[:, :7].argmax(1)), x[:8], x[:8, :7].argmax(1))
    pixels = rng.integers(0, 256, (images, 28, 28, 1), dtype=np.uint8)
    labels = pixels[:, 10:18, 10:18, 0].mean((1, 2)).astype(np.int64) * 10 // 256
    return {"mlp": (SmallMLP, features), "cnn": (SmallCNN, Dataset.from_arrays(pixels, labels, pixels[:8], labels[:8]))}


def plain_loop(factory, data, recipe, seeds):
    """The runs one at a time, as a researcher writes it without fastvar (images scaled as fastvar does)."""
    x = data.x_train
    if x.dtype == torch.uint8:
        x = (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    for s in seeds:
        model = build_model(factory, init_seed=s.init_seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.optimizer.lr)
        order = torch.Generator().manual_seed(s.order_seed)
        for _ in range(recipe.epochs):
            for batch in torch.randperm(len(data.y_train), generator=order).split(recipe.batch_size):
                loss = F.cross_entropy(model(x[batch]), data.y_train[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()


def fastvar_fit(strategy):
    def train(factory, data, recipe, seeds):
        replicas = Replicas(factory, [s.init_seed for s in seeds], strategy=strategy,
                            num_classes=data.num_classes, input_shape=data.example_shape)
        fit(replicas, data, recipe, seeds)
    return train


def timed(contenders, args_of, repeats):
    best = {}
    for repeat in range(repeats + 1):  # the first round warms up
        for name, train in contenders.items():
            started = time.perf_counter()
            train(*args_of)
            elapsed = time.perf_counter() - started
            if repeat:
                best[name] = min(best.get(name, elapsed), elapsed)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=2_000)
    args = parser.parse_args()
    contenders = {"plain loop": plain_loop, "fastvar loop": fastvar_fit("loop"), "fastvar vmap": fastvar_fit("vmap")}
    print(f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| model | R | contender | examples/s | × plain loop |\n|---|---|---|---|---|")
    results = []
    for name, (factory, data) in datasets(args.rows, args.images).items():
        recipe = Recipe(model=factory, epochs=args.epochs, batch_size=128, optimizer=Adam(lr=1e-3))
        for runs in args.runs:
            seeds = [run_seeds("all-random", i) for i in range(runs)]
            best = timed(contenders, (factory, data, recipe, seeds), args.repeats)
            examples = runs * args.epochs * len(data.y_train)
            rates = {k: examples / v for k, v in best.items()}
            for contender, rate in rates.items():
                print(f"| {name} | {runs} | {contender} | {rate:,.0f} | {rate / rates['plain loop']:.2f} |")
            ratio = rates["fastvar vmap"] / rates["plain loop"]
            goal = GOALS.get((name, runs))
            results.append({"model": name, "runs": runs, "examples_per_s": rates,
                            "ratio_to_plain": {k: v / rates["plain loop"] for k, v in rates.items()},
                            "goal": goal, "goal_met": None if goal is None else ratio >= goal})
    print(json.dumps({"benchmark": "small_models", "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
