"""The command line: `train` (the default subcommand) and `plot`. A thin layer over fastvar.Study."""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data import DataError
from .models import MODELS
from .plots import plot_study
from .sources import EXPERIMENTS
from .store import Store, StoreError
from .study import PRECISIONS, ConfigError, Study
from .train import RECIPES

COMMANDS = ("train", "plot")


def build_parser():
    parser = argparse.ArgumentParser(prog="run.py", description="Measure run-to-run variance of training.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a study's runs into a results folder (resumable)")
    train.add_argument("--experiment", default="all-random", choices=EXPERIMENTS)
    train.add_argument("--recipe", default="seed", choices=RECIPES)
    train.add_argument("--list-recipes", action="store_true", help="print the recipes and exit")
    train.add_argument("--runs", type=int, default=1000)
    train.add_argument("--batch-models", type=int, default=16, help="replicas trained in one batched step")
    train.add_argument("--epochs", type=int, help="default: the recipe's")
    train.add_argument("--model", choices=MODELS, help="default: the recipe's")
    train.add_argument("--width", type=int, help="channels of the first stage (default: the model's)")
    train.add_argument("--seed", type=int, default=0, help="base seed every run's seeds derive from")
    train.add_argument("--train-subset", type=int, help="a fixed class-balanced subset of N training images")
    train.add_argument("--test-subset", type=int, help="a fixed class-balanced subset of N test images")
    train.add_argument("--precision", default="float32", choices=PRECISIONS)
    train.add_argument("--strategy", default="auto", choices=("auto", "loop", "vmap"),
                       help="auto: loop on CPU, vmap on CUDA")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    train.add_argument("--out", type=Path, help="results folder (default: results/<experiment>)")
    train.add_argument("--data-dir", type=Path, help="default: $FASTVAR_DATA, else ~/.cache/fastvar")
    train.add_argument("--download", action="store_true", help="fetch the official CIFAR-10 archive if absent")
    train.add_argument("--plot", action="store_true", help="draw the study's plots into OUT/plots")
    plot = commands.add_parser("plot", help="draw the plots of an existing results folder")
    plot.add_argument("folder", type=Path)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv.insert(0, "train")  # `run.py --experiment X` means `run.py train --experiment X`
    args = build_parser().parse_args(argv)
    try:
        return {"train": train, "plot": plot}[args.command](args)
    except (DataError, StoreError, ConfigError) as e:
        print(f"fastvar: error: {e}", file=sys.stderr)
        return 2


def train(args):
    if args.list_recipes:
        print(recipe_table())
        return 0
    study = Study(experiment=args.experiment, recipe=args.recipe, runs=args.runs, batch_models=args.batch_models,
                  epochs=args.epochs, model=args.model, width=args.width, seed=args.seed,
                  train_subset=args.train_subset, test_subset=args.test_subset, precision=args.precision,
                  strategy=args.strategy, device=args.device)
    out = args.out or Path("results") / args.experiment
    bar = ProgressBar(study.runs)
    try:
        store = study.run(out, data_dir=args.data_dir, download=args.download, progress=bar.update)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: finished runs are kept in {out}; the same command carries on", file=sys.stderr)
        return 130
    bar.close()
    rows = store.runs()
    if args.plot:
        plot_study(rows, out / "plots")
    print(summary_line(rows, out))
    return 0


def plot(args):
    rows = Store(args.folder).runs()
    paths = plot_study(rows, args.folder / "plots")
    print(f"{len(paths)} plots of {len(rows)} runs in {args.folder / 'plots'}")
    return 0


def recipe_table():
    lines = []
    for name, r in RECIPES.items():
        opt = r["optimizer"]
        augment = ", ".join(f"{k} {v}" for k, v in r["augment"].items()) or "none"
        lines.append(f"{name:<15} {r['model']:<15} {opt['name']} lr {opt['lr']:g} ({r['schedule']['name']}), "
                     f"batch {r['batch_size']}, {r['epochs']} epochs, augmentation: {augment}")
    return "\n".join(lines)


def summary_line(rows, out):
    acc = np.array([r["test_acc"] for r in rows]) * 100
    sd = acc.std(ddof=1) if len(acc) > 1 else float("nan")
    return f"{len(rows)} runs in {out}: test accuracy {acc.mean():.2f} % ± {sd:.2f} % (mean ± SD)"


class ProgressBar:
    """Runs in the folder of the study's total, runs per hour and ETA; created on the first report."""

    def __init__(self, total):
        self.total, self.bar, self.started = total, None, time.perf_counter()

    def update(self, done, todo):
        if self.bar is None:
            self.bar = tqdm(total=self.total, initial=self.total - todo, unit="run", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.1f}/{total} runs [{elapsed}<{remaining}{postfix}]")
        self.bar.update(self.total - todo + done - self.bar.n)
        self.bar.set_postfix_str(f"{done / (time.perf_counter() - self.started) * 3600:.1f} runs/h", refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()
