"""How OpenMP's idle threads wait, and what it costs fastvar's CPU step: idle, beside a busy core,
and beside a second trainer. Each measurement is its own process (the runtime reads its settings
once, when torch loads); settings and conditions are interleaved round by round.

    python benchmarks/openmp_wait.py --width 64 --steps 8 --rounds 2

Conditions: `idle` (nothing else runs), `busy core` (a pure-Python loop spins on one core, as another
job would), `two trainers` (two of these workers at once, each with the setting; the mean of both).
Prints a table of images/s (median over rounds) and one JSON line.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {  # name -> environment; "default" is the runtime's own (libgomp spins for a while)
    "default": {},
    "OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
    "GOMP_SPINCOUNT=100": {"GOMP_SPINCOUNT": "100"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
}
CONDITIONS = ("idle", "busy core", "two trainers")
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def worker(args):
    """Time the seed recipe's loop step (one replica) and print images/s."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    from fastvar.data import Dataset
    from fastvar.engine.replicas import Replicas
    from fastvar.sources import run_seeds
    from fastvar.recipes import RECIPES
    from fastvar.engine.train import fit
    recipe = RECIPES["seed"]
    batch = recipe.batch_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch * args.steps, 32, 32, 3), dtype=torch.uint8, generator=g)
    data = Dataset(x, torch.arange(len(x)) % 10, x[:10], torch.arange(10) % 10)
    seeds = [run_seeds("all-random", 0)]
    replicas = Replicas(recipe.model, [s.init_seed for s in seeds], width=args.width)
    warm = Dataset(x[:2 * batch], data.y_train[:2 * batch], data.x_test, data.y_test)
    fit(replicas, warm, recipe.replace(epochs=1), seeds)
    started = time.perf_counter()
    fit(replicas, data, recipe.replace(epochs=1), seeds)
    print(json.dumps({"img_s": len(x) / (time.perf_counter() - started)}))


def environment(setting):
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    return {**env, **SETTINGS[setting]}


def start_worker(setting, args):
    command = [sys.executable, __file__, "--worker", "--width", str(args.width), "--steps", str(args.steps)]
    return subprocess.Popen(command, env=environment(setting), stdout=subprocess.PIPE, text=True)


def images_per_second(process):
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"a worker failed (exit {process.returncode})")
    return json.loads(out.strip().splitlines()[-1])["img_s"]


def measure(setting, condition, args):
    if condition == "two trainers":
        pair = [start_worker(setting, args) for _ in range(2)]
        return statistics.mean(images_per_second(p) for p in pair)
    spinner = None
    if condition == "busy core":
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        return images_per_second(start_worker(setting, args))
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps of batch 128 per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    settings = args.settings.split(",")
    results = {s: {c: [] for c in CONDITIONS} for s in settings}
    for _ in range(args.rounds):
        for condition in CONDITIONS:
            for setting in settings:
                results[setting][condition].append(measure(setting, condition, args))
    medians = {s: {c: statistics.median(v) for c, v in by.items()} for s, by in results.items()}
    base = medians.get("default")
    print(f"seed model, width {args.width}, loop step, images/s (median of {args.rounds}); "
          f"{os.cpu_count()} CPUs; ratio to default in brackets")
    print(f"{'setting':<26}" + "".join(f"{c:>22}" for c in CONDITIONS))
    for s, by in medians.items():
        cells = [f"{by[c]:.0f}" + (f" ({by[c] / base[c]:.2f})" if base else "") for c in CONDITIONS]
        print(f"{s:<26}" + "".join(f"{cell:>22}" for cell in cells))
    print(json.dumps({"width": args.width, "steps": args.steps, "rounds": args.rounds, "median_img_s": medians,
                      "all_img_s": results}))


if __name__ == "__main__":
    main()
