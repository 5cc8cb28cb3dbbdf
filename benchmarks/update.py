"""The optimizer step alone, side by side in one process: every parameter in the update (dense, as
before live parameters) against the live entries only (fastvar.engine.live), for the seed model.

    python benchmarks/update.py --width 64 --rounds 20

On a CPU the update runs by replica (the C loop); on CUDA over the whole stack (the Triton kernel).
The two forms are stepped alternately, so that a machine's drift falls on both. Prints a table and
one JSON line (dense_ms, live_ms, speedup, the entries each updates).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvar.engine.replicas import Replicas  # noqa: E402
from fastvar.engine.train import make_optimizer  # noqa: E402
from fastvar.recipes import RECIPES  # noqa: E402
from throughput import Timer  # noqa: E402


def optimizer_of(live_only, args, device):
    """The seed recipe's optimizer over one stack, with a random gradient to step with."""
    replicas = Replicas("resnet18", list(range(args.batch_models)), width=args.width, device=device,
                        live_only=live_only)
    by_replica = device.type == "cpu"
    optimizer = make_optimizer(RECIPES["seed"], replicas.master, replicas.layout, by_replica=by_replica,
                               lr_factors=[1.0] * (args.rounds + 1))
    grad = torch.randn(replicas.master.shape, device=device, generator=torch.Generator(device).manual_seed(0))
    return optimizer, (grad,), sum(e.size for e in replicas.layout.entries.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-models", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    forms = {name: optimizer_of(live_only, args, device) for name, live_only in (("dense", False), ("live", True))}
    times = {name: [] for name in forms}
    for name, (optimizer, grads, _) in forms.items():
        optimizer.step(grads)  # untimed: first touches
    for _ in range(args.rounds):
        for name, (optimizer, grads, _) in forms.items():
            with Timer(device) as t:
                optimizer.step(grads)
            times[name].append(t.seconds)
    median = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}
    print(f"{'form':<8}{'entries':>12}{'ms (median)':>14}   "
          f"{time.strftime('%Y-%m-%d')}, {device}, M={args.batch_models}")
    for name, (_, _, entries) in forms.items():
        print(f"{name:<8}{entries:>12,}{median[name]:>14.2f}")
    print(json.dumps({"dense_ms": round(median["dense"], 3), "live_ms": round(median["live"], 3),
                      "speedup": round(median["dense"] / median["live"], 3), "dense_entries": forms["dense"][2],
                      "live_entries": forms["live"][2], "device": str(device), "width": args.width,
                      "batch_models": args.batch_models}))


if __name__ == "__main__":
    main()
