"""Training images per second, side by side in one process, on the same data:

  baseline  the seed study's loop: nn.Module + torch.optim.Adam, a DataLoader over a Dataset that
            converts each sample as ToTensor + Normalize do, and a .item() per batch;
  loop      fastvar's loop strategy (resident uint8 data, batched optimizer), M replicas;
  vmap      fastvar's vmap strategy, M replicas.

    python benchmarks/throughput.py --width 64 --batch-models 1,4 --steps 6

Prints a table and ends with one JSON line (baseline_img_s, best_img_s, best_strategy, speedup,
flops_fraction, runs_per_hour). runs_per_hour projects the seed recipe: 10 epochs of 50,000 images a
run. flops_fraction is the loop strategy's training FLOP/s (counted with torch.utils.flop_counter)
over the float32 matmul peak measured in the same process.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.flop_counter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvar.data import DataError, Dataset, load_cifar10  # noqa: E402
from fastvar.models import build_model  # noqa: E402
from fastvar.replicas import Replicas  # noqa: E402
from fastvar.sources import run_seeds  # noqa: E402
from fastvar.train import RECIPES, fit  # noqa: E402

IMAGES_PER_RUN = 10 * 50_000
BATCH = RECIPES["seed"]["batch_size"]


class PerSampleCIFAR(torch.utils.data.Dataset):
    """What the original study's DataLoader did for each image: ToTensor, then Normalize(0.5, 0.5)."""

    def __init__(self, x, y):
        self.x, self.y = x.numpy(), y.numpy()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        image = torch.from_numpy(self.x[i]).permute(2, 0, 1).float().div(255)
        return (image - 0.5) / 0.5, int(self.y[i])


def baseline_img_s(data, width, warmup, steps):
    model = build_model("resnet18", init_seed=0, width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(PerSampleCIFAR(data.x_train, data.y_train), batch_size=BATCH, shuffle=True)
    for step, (x, y) in enumerate(loader):
        if step == warmup:
            started = time.perf_counter()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()
        if step == warmup + steps - 1:
            return steps * BATCH / (time.perf_counter() - started)


def fastvar_img_s(data, width, strategy, m, warmup, steps):
    """Steady-state images per second of fastvar's own training loop (fit) over M replicas."""
    seeds = [run_seeds("all-random", i) for i in range(m)]
    replicas = Replicas("resnet18", [s.init_seed for s in seeds], width=width, strategy=strategy)
    recipe = dict(RECIPES["seed"], epochs=1)

    def subset(n):
        return Dataset(data.x_train[:n * BATCH], data.y_train[:n * BATCH], data.x_test, data.y_test)
    fit(replicas, subset(warmup), recipe, seeds)
    started = time.perf_counter()
    fit(replicas, subset(steps), recipe, seeds)
    return steps * BATCH * m / (time.perf_counter() - started)


def train_flops_per_image(width):
    """FLOPs of one training step (forward and backward) of the seed model, per image."""
    model = build_model("resnet18", init_seed=0, width=width)
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / BATCH


def matmul_peak_flops(n=2048, repeats=5):
    """The float32 FLOP/s of a large matrix product on this machine, best of `repeats`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best


def benchmark_data(data_dir):
    try:
        return load_cifar10(data_dir, train_subset=10_000, test_subset=100), "CIFAR-10"
    except DataError:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (10_000, 32, 32, 3), dtype=torch.uint8, generator=g)
        return Dataset(x, torch.arange(10_000) % 10, x[:100], torch.arange(100) % 10), "random images"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-models", default="1,4")
    parser.add_argument("--strategies", default="loop,vmap")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    data, source = benchmark_data(args.data_dir)
    base = baseline_img_s(data, args.width, args.warmup, args.steps)
    rows = [("baseline", 1, base)]
    for strategy in args.strategies.split(","):
        for m in map(int, args.batch_models.split(",")):
            rows.append((strategy, m, fastvar_img_s(data, args.width, strategy, m, args.warmup, args.steps)))
    flops, peak = train_flops_per_image(args.width), matmul_peak_flops()
    print(f"seed model, width {args.width}, batch {BATCH}, {source}, {torch.get_num_threads()} threads, "
          f"{args.steps} timed steps after {args.warmup} warm-up; {flops / 1e9:.3f} GFLOP per training image, "
          f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'strategy':<10}{'M':>4}{'img/s':>10}{'runs/h':>9}{'x baseline':>12}{'of peak':>9}")
    for strategy, m, img_s in rows:
        print(f"{strategy:<10}{m:>4}{img_s:>10.1f}{img_s * 3600 / IMAGES_PER_RUN:>9.2f}{img_s / base:>12.2f}"
              f"{img_s * flops / peak:>9.2f}")
    best = max(rows[1:], key=lambda row: row[2])
    loop = max((row for row in rows if row[0] == "loop"), key=lambda row: row[2], default=best)
    print(json.dumps({"baseline_img_s": round(base, 1), "best_img_s": round(best[2], 1),
                      "best_strategy": f"{best[0]} M={best[1]}", "speedup": round(best[2] / base, 3),
                      "flops_fraction": round(loop[2] * flops / peak, 3),
                      "gflop_per_image": round(flops / 1e9, 4), "peak_gflop_s": round(peak / 1e9, 1),
                      "runs_per_hour": round(best[2] * 3600 / IMAGES_PER_RUN, 3),
                      "results": [{"strategy": s, "batch_models": m, "img_s": round(v, 1)} for s, m, v in rows]}))


if __name__ == "__main__":
    main()
