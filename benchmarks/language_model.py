"""Training tokens per second of a character-level language model (the `char` recipe's transformer by
default; `--model char-gru`, or `nn-gru`: an nn.GRU model, whose fused op vmap runs decomposed), side
by side in one process: fastvar's vmap and loop strategies against a plain PyTorch loop that trains
the same runs one at a time (torch.optim.AdamW, plain indexing, no fastvar code but the model).

    python benchmarks/language_model.py --runs 4 --windows 512 --repeats 3 [--model nn-gru]

Each contender trains `runs` runs for one epoch of `windows` 64-character windows of pydoc-chars;
the contenders take turns, `repeats` times, after one untimed warm-up each, and the best time of
each counts. Prints a table and one JSON line (tokens/s of each, and each one's ratio to the plain loop).
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvar.data import load_dataset  # noqa: E402
from fastvar.engine.replicas import Replicas  # noqa: E402
from fastvar.engine.train import fit  # noqa: E402
from fastvar.models import build_model  # noqa: E402
from fastvar.recipes import RECIPES  # noqa: E402
from fastvar.sources import run_seeds  # noqa: E402


class FusedGRU(nn.Module):
    """A language model a researcher writes with nn.GRU (its fused op): embedding, one layer, read-out."""

    def __init__(self, vocabulary, width):
        super().__init__()
        self.embed, self.gru, self.out = nn.Embedding(vocabulary, width), nn.GRU(width, width, batch_first=True), \
            nn.Linear(width, vocabulary)

    def forward(self, tokens):
        return self.out(self.gru(self.embed(tokens))[0])


def model_of(name, vocabulary, width):
    """What the recipe trains: a built-in name, or for nn-gru a factory of FusedGRU."""
    return (lambda: FusedGRU(vocabulary, width)) if name == "nn-gru" else name


def plain_loop(data, recipe, seeds, width):
    """The runs one at a time, as a researcher writes it without fastvar."""
    for s in seeds:
        model = build_model(recipe.model, init_seed=s.init_seed, width=width, num_classes=data.num_classes)
        opt = recipe.optimizer
        optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, betas=opt.betas, eps=opt.eps,
                                      weight_decay=opt.weight_decay)
        order = torch.Generator().manual_seed(s.order_seed)
        for batch in torch.randperm(len(data.y_train), generator=order).split(recipe.batch_size):
            logits = model(data.x_train[batch])
            loss = F.cross_entropy(logits.flatten(0, 1), data.y_train[batch].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def fastvar_fit(strategy):
    def train(data, recipe, seeds, width):
        replicas = Replicas(recipe.model, [s.init_seed for s in seeds], width=width, strategy=strategy,
                            num_classes=data.num_classes, input_shape=data.example_shape)
        fit(replicas, data, recipe, seeds)
    return train


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--windows", type=int, default=512)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="char-transformer", choices=("char-transformer", "char-gru", "nn-gru"))
    args = parser.parse_args()
    data = load_dataset("pydoc-chars", train_subset=args.windows, test_subset=1)
    recipe = RECIPES["char"].replace(epochs=1, model=model_of(args.model, data.vocabulary, args.width))
    seeds = [run_seeds("all-random", i) for i in range(args.runs)]
    contenders = {"plain loop": plain_loop, "fastvar loop": fastvar_fit("loop"), "fastvar vmap": fastvar_fit("vmap")}
    best = {}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name, train in contenders.items():
            started = time.perf_counter()
            train(data, recipe, seeds, args.width)
            elapsed = time.perf_counter() - started
            if repeat:
                best[name] = min(best.get(name, elapsed), elapsed)
    tokens = args.runs * args.windows * data.x_train.shape[1]
    rates = {name: tokens / seconds for name, seconds in best.items()}
    print(f"{args.runs} runs × {args.windows} windows of {data.x_train.shape[1]} characters, {args.model} at width "
          f"{args.width}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| contender | tokens/s | × plain loop |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / rates['plain loop']:.2f} |")
    print(json.dumps({"model": args.model, "runs": args.runs, "windows": args.windows, "width": args.width,
                      "tokens_per_s": rates, "ratio_to_plain": {k: v / rates["plain loop"] for k, v in rates.items()}}))


if __name__ == "__main__":
    main()
