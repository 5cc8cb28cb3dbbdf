"""The command line: `train` (the default subcommand), `sweep`, `plot`, `analyze`, `compare`, `export`.
A thin layer over fastvar.Study and fastvar.report."""
import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import native
from .data import DATASETS, DataError
from .export import FORMATS, export
from .models import MODELS
from .plots import plot_study
from .replicas import CONVS
from .report import (AnalysisError, analyze, compare_folders, comparison_lines, default_report_path, json_line,
                     pairwise_note, sweep_summary, tables, write_report)
from .sources import EXPERIMENTS, SOURCES
from .store import Store, StoreError, merge
from .study import PRECISIONS, ConfigError, Study
from .sweep import SETTINGS, Sweep, parse_setting
from .train import RECIPES

COMMANDS = ("train", "sweep", "plot", "analyze", "compare", "merge", "export")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets the one line every other bad input gets (and exit status 2)."""

    def error(self, message):
        self.exit(2, f"fastvar: error: {message}\n")


def build_parser():
    parser = OneLineParser(prog="run.py", description="Measure run-to-run variance of training.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    train = commands.add_parser("train", help="train a study's runs into a results folder (resumable)")
    add_study_arguments(train)
    train.add_argument("--list-recipes", action="store_true", help="print the recipes and exit")
    train.add_argument("--list-experiments", action="store_true",
                       help="print the presets with what they vary under --recipe, and exit")
    train.add_argument("--runs", type=int, help="default: 1000 (I×J for a grid)")
    train.add_argument("--out", type=Path, help="results folder (default: results/<experiment>)")
    train.add_argument("--plot", action="store_true", help="draw the study's plots into OUT/plots")
    sweep = commands.add_parser("sweep", help="one study per point of a hyperparameter grid, trained together")
    add_study_arguments(sweep)
    sweep.add_argument("--set", action="append", required=True, metavar="NAME=V1,V2,...",
                       help=f"a hyperparameter and its values (repeat for a grid): {', '.join(SETTINGS)}")
    sweep.add_argument("--runs-per-point", type=int, default=32)
    sweep.add_argument("--out", type=Path, default=Path("results/sweep"), help="the sweep folder")
    plot = commands.add_parser("plot", help="draw the plots of an existing results folder")
    plot.add_argument("folder", type=Path)
    analyze = commands.add_parser("analyze", help="the spread metrics of results folders, and report.md")
    analyze.add_argument("folders", type=Path, nargs="+")
    analyze.add_argument("--json", action="store_true", help="print one JSON object per folder instead")
    analyze.add_argument("--cka", action="store_true", help="linear CKA between runs with saved weights")
    analyze.add_argument("--report", type=Path, help="default: report.md in the folders' common parent")
    analyze.add_argument("--data-dir", type=Path, help="CIFAR-10, for --cka and for folders without labels")
    compare = commands.add_parser("compare", help="is B's mean test accuracy different from A's?")
    compare.add_argument("folder_a", type=Path)
    compare.add_argument("folder_b", type=Path)
    merge = commands.add_parser("merge", help="combine a folder's shard files into its runs.sqlite")
    merge.add_argument("folder", type=Path)
    export = commands.add_parser("export", help="write a folder's runs as numpy files")
    export.add_argument("folder", type=Path)
    export.add_argument("--format", choices=FORMATS, default="npz")
    export.add_argument("--out", type=Path, help="default: FOLDER/logits.npz or FOLDER/seed-npy/")
    export.add_argument("--data-dir", type=Path, help="CIFAR-10, for folders without stored labels")
    return parser


def add_study_arguments(parser):
    """The flags that define a study, shared by `train` and `sweep`."""
    parser.add_argument("--experiment", choices=EXPERIMENTS, help="default: all-random (grid with --grid)")
    parser.add_argument("--vary", type=lambda text: tuple(text.split(",")), metavar="SOURCES",
                        help=f"vary these sources (comma-separated: {','.join(SOURCES)}) and fix the rest")
    parser.add_argument("--dropout", type=float, metavar="P", help="dropout before the classifier (a source: dropout)")
    parser.add_argument("--fixed-seed", type=int, default=0, help="the constant fixed sources draw from")
    parser.add_argument("--onset-epoch", type=int, metavar="K",
                        help="varied sources follow the fixed ones before epoch K (0-based), their own from K on")
    parser.add_argument("--grid", type=grid_shape, metavar="IxJ",
                        help="the grid experiment: I init seeds crossed with J order seeds, I×J runs")
    parser.add_argument("--recipe", default="seed", choices=RECIPES)
    parser.add_argument("--batch-models", type=int, default=16, help="replicas trained in one batched step")
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--model", choices=MODELS, help="default: the recipe's")
    parser.add_argument("--width", type=int, help="channels of the first stage (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="base seed every run's seeds derive from")
    parser.add_argument("--dataset", default="cifar10", choices=DATASETS, help="cifar10, or mnist (padded to 32x32)")
    parser.add_argument("--train-subset", type=int, help="a fixed class-balanced subset of N training images")
    parser.add_argument("--test-subset", type=int, help="a fixed class-balanced subset of N test images")
    parser.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                        help="auto: bf16-mixed (bfloat16 convolutions, float32 weights) on CUDA, float32 on the CPU")
    parser.add_argument("--strategy", default="auto", choices=("auto", "loop", "vmap"),
                        help="auto: loop on CPU, vmap on CUDA")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                        help="torch.compile the training step (auto: on CUDA only)")
    parser.add_argument("--conv", default="auto", choices=CONVS,
                        help="gemm: convolutions as im2col + one matrix product; native: the framework's; auto: gemm "
                             "under vmap on CUDA, else for convolutions with outputs of 2x2 pixels or less")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--shard", type=shard_spec, metavar="I/N",
                        help="train only runs with index %% N == I, into a shard file of their own (default: from "
                             "torchrun's RANK/WORLD_SIZE or a SLURM array's task id and count)")
    parser.add_argument("--data-dir", type=Path, help="default: $FASTVAR_DATA, else ~/.cache/fastvar")
    parser.add_argument("--download", action="store_true", help="fetch the official CIFAR-10 archive if absent")
    parser.add_argument("--save-weights", type=int, default=0, metavar="K",
                        help="keep the final weights of the first K runs in OUT/weights (for analyze --cka)")
    parser.add_argument("--eval-every-epoch", action="store_true",
                        help="store test accuracy and loss after every epoch (test_acc_curve, test_loss_curve)")
    parser.add_argument("--snapshots", type=int, metavar="C",
                        help="cosine schedule restarted C times; test logits kept at the end of each cycle")


def study_arguments(args):
    """Study keyword arguments from the parsed flags of add_study_arguments."""
    experiment = args.experiment or ("grid" if args.grid else None if args.vary else "all-random")
    return dict(experiment=experiment, recipe=args.recipe, batch_models=args.batch_models, epochs=args.epochs,
                model=args.model, width=args.width, seed=args.seed, train_subset=args.train_subset,
                test_subset=args.test_subset, precision=args.precision, strategy=args.strategy, device=args.device,
                compile=args.compile, conv=args.conv,
                grid=args.grid, save_weights=args.save_weights, eval_every_epoch=args.eval_every_epoch,
                snapshots=args.snapshots, vary=args.vary, fixed_seed=args.fixed_seed, onset_epoch=args.onset_epoch,
                dropout=args.dropout, dataset=args.dataset, shard=args.shard or shard_from_environment())


def shard_spec(text):
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, such as 0/8, not {text!r}")
    return int(index), int(count)


def shard_from_environment(environ=os.environ):
    """(I, N) from torchrun (RANK, WORLD_SIZE) or a SLURM job array (task id less the array's first id,
    task count); None when started by neither."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return int(environ["RANK"]), int(environ["WORLD_SIZE"])
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        first = int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
        return int(environ["SLURM_ARRAY_TASK_ID"]) - first, int(environ["SLURM_ARRAY_TASK_COUNT"])
    return None


def grid_shape(text):
    rows, sep, columns = text.lower().partition("x")
    if not (sep and rows.isdigit() and columns.isdigit()):
        raise argparse.ArgumentTypeError(f"expected IxJ such as 16x16, not {text!r}")
    return int(rows), int(columns)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv.insert(0, "train")  # `run.py --experiment X` means `run.py train --experiment X`
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in what it writes
    native.retain_freed_memory()
    try:
        return {"train": train, "sweep": sweep_command, "plot": plot, "analyze": analyze_command,
                "compare": compare_command, "merge": merge_command, "export": export_command}[args.command](args)
    except (DataError, StoreError, ConfigError, AnalysisError) as e:
        print(f"fastvar: error: {e}", file=sys.stderr)
        return 2


def train(args):
    if args.list_recipes:
        print(recipe_table())
        return 0
    if args.list_experiments:
        print(experiment_table(args.recipe))
        return 0
    study = Study(**study_arguments(args), runs=args.runs)
    for note in study.notes():
        print(f"fastvar: note: {note}", file=sys.stderr)
    out = args.out or Path("results") / study.experiment
    store = run_with_progress(study, study.runs, out, args)
    if store is None:
        return 130
    rows = store.runs()
    if args.plot:
        plot_study(rows, out / "plots")
    print(summary_line(rows, out))
    return 0


def run_with_progress(target, total, out, args):
    """Train a Study or a Sweep into `out` with a progress bar of `total` runs; return what its run
    returns, or None after Ctrl-C (its finished runs are kept)."""
    bar = ProgressBar(total)
    try:
        result = target.run(out, data_dir=args.data_dir, download=args.download, progress=bar.update)
    except KeyboardInterrupt:
        result = None
    bar.close()
    if result is None:
        print(f"interrupted: finished runs are kept in {out}; the same command carries on", file=sys.stderr)
    return result


def sweep_command(args):
    sweep = Sweep(dict(parse_setting(text) for text in args.set), runs_per_point=args.runs_per_point,
                  study=study_arguments(args))
    if run_with_progress(sweep, len(sweep.studies) * sweep.runs_per_point, args.out, args) is None:
        return 130
    table, verdict = sweep_summary(args.out)
    print(f"{table}\n{verdict}")
    return 0


def plot(args):
    rows = Store(args.folder).runs()
    paths = plot_study(rows, args.folder / "plots")
    print(f"{len(paths)} plots of {len(rows)} runs in {args.folder / 'plots'}")
    return 0


def analyze_command(args):
    analyses = analyze(*args.folders, data_dir=args.data_dir, cka=args.cka)
    if args.json:
        print("\n".join(json_line(a) for a in analyses))
    else:
        print(pairwise_note(analyses))
        for title, table in tables(analyses):
            print(f"\n{title}\n\n{table}")
    path = write_report(analyses, args.report or default_report_path(args.folders),
                        "python run.py " + shlex.join(args.argv))
    print(f"report: {path}", file=sys.stderr)
    return 0


def compare_command(args):
    acc_a, acc_b, results = compare_folders(args.folder_a, args.folder_b)
    print("\n".join(comparison_lines(args.folder_a, args.folder_b, acc_a, acc_b, results)))
    return 0


def merge_command(args):
    added, identical, conflicts = merge(args.folder)
    print(f"merged {added} runs into {args.folder / 'runs.sqlite'}; {identical} identical duplicates kept once")
    if conflicts:
        print(f"fastvar: {len(conflicts)} runs differ between shards and were left out: {', '.join(conflicts)}",
              file=sys.stderr)
        return 1
    return 0


def export_command(args):
    paths = export(args.folder, args.format, args.out, args.data_dir)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def recipe_table():
    lines = []
    for name, r in RECIPES.items():
        opt = r["optimizer"]
        augment = ", ".join(f"{k} {v}" for k, v in r["augment"].items()) or "none"
        lines.append(f"{name:<15} {r['model']:<15} {opt['name']} lr {opt['lr']:g} ({r['schedule']['name']}), "
                     f"batch {r['batch_size']}, {r['epochs']} epochs, augmentation: {augment}")
    return "\n".join(lines)


def experiment_table(recipe):
    present = Study(recipe=recipe).present_sources()
    lines = [f"sources of the {recipe} recipe: {', '.join(s for s in SOURCES if s in present)}"]
    for name, varied in EXPERIMENTS.items():
        varies = ", ".join(s for s in SOURCES if s in varied & present) or "nothing"
        if varied and not varied & present:
            varies = f"(not with this recipe: it has no {', '.join(sorted(varied))})"
        fixed = ", ".join(s for s in SOURCES if s in present - varied) or "nothing"
        lines.append(f"{name:<15} varies: {varies:<44} fixed: {fixed}")
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
