"""The command line: `train` (the default subcommand), `sweep`, `plot`, `analyze`, `compare`, `merge`,
`export`, `download`. A thin layer over fastvar.Study, fastvar.Sweep and fastvar.analysis."""
from .launch import set_openmp_wait

set_openmp_wait()  # before torch loads (the imports below): the runtime reads it once

import argparse  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from . import shift  # noqa: E402
from .analysis.export import FORMATS, export  # noqa: E402
from .analysis.plots import plot_study  # noqa: E402
from .analysis.compare import compare, comparison_lines, sweep_sections, sweep_summary  # noqa: E402
from .analysis.compute import analyze  # noqa: E402
from .analysis.load import read_runs  # noqa: E402
from .analysis.report import json_line, notes, tables, write_report  # noqa: E402
from .data import DATASETS, TEST_SET, default_data_dir, load_arrays, load_dataset  # noqa: E402
from .engine.replicas import CONVS  # noqa: E402
from .errors import ConfigError, FastvarError, StoreError, writing  # noqa: E402
from .execution import Execution  # noqa: E402
from .models import MODELS, model_name  # noqa: E402
from .precisions import PRECISIONS  # noqa: E402
from .progress import ProgressBar, duration, per_hour  # noqa: E402
from .recipes import RECIPES, SETTABLE  # noqa: E402
from .sources import EPOCH_ORDERS, EXPERIMENTS, SOURCES  # noqa: E402
from .store import merge, stored_run_count  # noqa: E402
from .study import Study  # noqa: E402
from .sweep import SETTINGS, Sweep, parse_setting  # noqa: E402

COMMANDS = ("train", "sweep", "plot", "analyze", "compare", "merge", "export", "download")
MAIN_COMMAND = "--experiment fixed-init --batch-models 16"
# A study that finishes in minutes on a CPU: 8 runs at width 8 on 5,000 images for 5 epochs.
CPU_SIZED = "--runs 8 --batch-models 1 --width 8 --train-subset 5000 --epochs 5"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets the one line every other bad input gets (and exit status 2), and
    no abbreviations (`--batch 8` is not `--batch-models 8`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message):
        self.exit(2, f"fastvar: error: {message}\n")


def build_parser(prog):
    parser = OneLineParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Measure run-to-run variance of training. `train` is the default "
                                       f"subcommand: `{prog} --experiment X` is `{prog} train --experiment X`.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    train = commands.add_parser("train", help="train a study's runs into a results folder (resumable; the default)")
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
    plot.add_argument("--out", type=Path, help="default: FOLDER/plots (FOLDER/plots-NAME for --test-set NAME)")
    plot.add_argument("--test-set", default=TEST_SET, metavar="NAME",
                      help="plot the scores on this eval set (see --eval-shift, x_eval_NAME) instead of the test set")
    analyze = commands.add_parser("analyze", help="the spread metrics of results folders, and report.md")
    analyze.add_argument("folders", type=Path, nargs="+")
    analyze.add_argument("--json", action="store_true", help="print one JSON object per folder instead (writes nothing)")
    analyze.add_argument("--cka", action="store_true", help="linear CKA between runs with saved weights")
    analyze.add_argument("--report", type=Path, help="default: report.md in the first folder")
    analyze.add_argument("--data-dir", type=Path, help="CIFAR-10, for --cka and for folders without labels")
    compare = commands.add_parser("compare", help="is B's mean test accuracy different from A's?")
    compare.add_argument("folder_a", type=Path)
    compare.add_argument("folder_b", type=Path)
    compare.add_argument("--test-set", default=TEST_SET, metavar="NAME",
                         help="compare accuracy on this eval set (see --eval-shift, x_eval_NAME) instead of the test set")
    merge = commands.add_parser("merge", help="combine a folder's shard files into its runs.sqlite")
    merge.add_argument("folder", type=Path)
    export = commands.add_parser("export", help="write a folder's runs as numpy files")
    export.add_argument("folder", type=Path)
    export.add_argument("--format", choices=FORMATS, default="npz")
    export.add_argument("--out", type=Path, help="default: FOLDER/logits.npz or FOLDER/seed-npy/ (created if missing)")
    export.add_argument("--data-dir", type=Path, help="CIFAR-10, for folders without stored labels")
    download = commands.add_parser("download", help="fetch CIFAR-10 (MD5-checked) where fastvar looks for it")
    download.add_argument("--data-dir", type=Path, help="default: $FASTVAR_DATA, else ~/.cache/fastvar")
    parser.epilog = f"train, the default subcommand, takes:\n\n{train.format_help()}"
    return parser


def short_usage(prog):
    return (f"usage: {prog} [train] [flags] | sweep | plot | analyze | compare | merge | export | download\n"
            f"  the seed study's main command (1000 runs, resumable; CIFAR-10 is fetched if absent):\n"
            f"    {prog} {MAIN_COMMAND}\n"
            f"  a study that finishes in minutes on a CPU:\n"
            f"    {prog} --experiment fixed-init {CPU_SIZED}\n"
            f"  every flag: {prog} --help")


def add_study_arguments(parser):
    """The flags that define a study, shared by `train` and `sweep`."""
    parser.add_argument("--experiment", choices=EXPERIMENTS, help="default: all-random (grid with --grid)")
    parser.add_argument("--vary", type=lambda text: tuple(text.split(",")), metavar="SOURCES",
                        help=f"vary these sources (comma-separated: {','.join(SOURCES)}) and fix the rest")
    parser.add_argument("--dropout", type=float, metavar="P", help="dropout before the classifier (a source: dropout)")
    parser.add_argument("--fixed-seed", type=int, default=0, help="the constant fixed sources draw from")
    parser.add_argument("--onset-epoch", type=int, metavar="K",
                        help="varied sources follow the fixed ones before epoch K (0-based), their own from K on")
    parser.add_argument("--epoch-order", choices=EPOCH_ORDERS, default="fresh",
                        help="fresh: a new permutation every epoch; same: each run's first permutation in every "
                             "epoch (with fixed-order, the seed study's exp2)")
    parser.add_argument("--grid", type=grid_shape, metavar="IxJ",
                        help="the grid experiment: I init seeds crossed with J order seeds, I×J runs")
    parser.add_argument("--recipe", default="seed", choices=RECIPES)
    parser.add_argument("--batch-models", type=int, default=16, help="replicas trained in one batched step")
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    for name, kind in (("lr", float), ("batch-size", int), ("weight-decay", float), ("label-smoothing", float)):
        parser.add_argument(f"--{name}", type=kind, help="default: the recipe's")
    parser.add_argument("--clip-grad-norm", type=float, metavar="N",
                        help="scale each run's gradient to at most this 2-norm each step, as "
                             "torch.nn.utils.clip_grad_norm_ does (default: the recipe's, none)")
    parser.add_argument("--model", metavar="NAME", help=f"default: the recipe's; one of {', '.join(MODELS)}, or an "
                                                         "import path package.module:factory (a callable that "
                                                         "returns an nn.Module)")
    parser.add_argument("--width", type=int, help="channels of the first stage (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="base seed every run's seeds derive from")
    parser.add_argument("--dataset", choices=DATASETS, help="cifar10 (the default), mnist (padded to 32x32), or pydoc-chars (Python's help text, "
                        "character windows, for language models: --recipe char)")
    parser.add_argument("--train-subset", type=int, help="a fixed class-balanced subset of N training images")
    parser.add_argument("--test-subset", type=int, help="a fixed class-balanced subset of N test images")
    parser.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                        help="auto: bf16-mixed (bfloat16 convolutions, float32 weights) on CUDA, float32 on the CPU")
    parser.add_argument("--strategy", default="auto", choices=("auto", "loop", "vmap"),
                        help="auto: loop on CPU, vmap on CUDA")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                        help="torch.compile the training step (auto: on CUDA only)")
    parser.add_argument("--conv", default="auto", choices=CONVS,
                        help="gemm: convolutions as im2col + one matrix product; native: the framework's; grouped, "
                             "implicit: under vmap all replicas at once, as one grouped channels-last convolution or as "
                             "Triton implicit GEMMs (CUDA), gemm for outputs of 2x2 pixels or less; auto: gemm under "
                             "vmap on CUDA, else for outputs of 2x2 pixels or less")
    parser.add_argument("--cuda-graphs", default="auto", choices=("auto", "on", "off"),
                        help="replay each training step as one CUDA graph (auto: on CUDA); results are the same")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch's CPU threads (default: torch's); on a CPU they change float32 rounding, "
                             "so every row records them")
    parser.add_argument("--shard", type=shard_spec, metavar="I/N",
                        help="train only runs with index %% N == I, into a shard file of their own (default: from "
                             "torchrun's RANK/WORLD_SIZE or a SLURM array's task id and count)")
    parser.add_argument("--data-dir", type=Path, help="default: $FASTVAR_DATA, else ~/.cache/fastvar")
    parser.add_argument("--data", type=Path, metavar="NPZ",
                        help="your own data instead: an npz with x_train, y_train, x_test, y_test (uint8 images "
                             "N×H×W×C or float features N×D, integer labels), and any further test sets as "
                             "x_eval_NAME, y_eval_NAME")
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                        help="fetch the official CIFAR-10 archive (MD5-checked) where none is found (default: on)")
    parser.add_argument("--save-weights", type=int, default=0, metavar="K",
                        help="keep the final weights of the first K runs in OUT/weights (for analyze --cka)")
    parser.add_argument("--eval-every-epoch", action="store_true",
                        help="store test accuracy and loss after every epoch (test_acc_curve, test_loss_curve)")
    parser.add_argument("--token-logits", action="store_true",
                        help="a language model's runs keep their whole test logits (n_test×T×vocabulary float16 "
                             "each), for the metrics of whole distributions (ensemble accuracy, ECE, Spearman ρ)")
    parser.add_argument("--eval-shift", action="store_true",
                        help="score every run on a shifted copy of the test images too (noise, blur, low contrast; "
                             "fixed, no download), stored as the eval set 'shift'")
    parser.add_argument("--snapshots", type=int, metavar="C",
                        help="cosine schedule restarted C times; test logits kept at the end of each cycle")


def study_arguments(args):
    """Study keyword arguments from the parsed flags of add_study_arguments."""
    if args.model and ":" in args.model and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # an import path names the user's module, as `python -m` would find it
    if args.data is not None:  # the user's arrays as they are: these flags choose among the built-in datasets
        ignored = [f"--{name.replace('_', '-')}" for name in ("dataset", "data_dir", "train_subset", "test_subset")
                   if getattr(args, name) is not None]
        if ignored:
            raise ConfigError(f"--data brings its own arrays; {', '.join(ignored)} choose from the built-in datasets "
                              f"and would be ignored: give one or the other")
    experiment = args.experiment or ("grid" if args.grid else None if args.vary else "all-random")
    return dict(experiment=experiment, recipe=args.recipe, epochs=args.epochs, model=args.model, width=args.width,
                seed=args.seed, train_subset=args.train_subset, test_subset=args.test_subset,
                precision=args.precision, epoch_order=args.epoch_order, grid=args.grid, save_weights=args.save_weights,
                eval_every_epoch=args.eval_every_epoch, snapshots=args.snapshots, vary=args.vary,
                fixed_seed=args.fixed_seed, onset_epoch=args.onset_epoch, dropout=args.dropout,
                dataset=args.dataset or "cifar10", overrides=recipe_overrides(args), eval_shift=args.eval_shift,
                token_logits=args.token_logits)


def recipe_overrides(args):
    """The recipe's hyperparameters the flags replace (--lr, --batch-size, ...), or None."""
    given = {name: getattr(args, name) for name in SETTABLE if getattr(args, name, None) is not None}
    return given or None


def execution_of(args):
    """The Execution the parsed flags of add_study_arguments ask for."""
    return Execution(device=args.device, strategy=args.strategy, batch_models=args.batch_models, compile=args.compile,
                     conv=args.conv, threads=args.threads, shard=args.shard or shard_from_environment(),
                     cuda_graphs=args.cuda_graphs, retain_freed_memory=True)


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


def main(argv=None, prog="fastvar"):
    """Run the command line on `argv` (default: sys.argv[1:]); `prog` is how it was called, for the
    usage line and the reports. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a bare call explains itself instead of starting a 1000-run study
        print(short_usage(prog), file=sys.stderr)
        return 2
    if argv[0] not in COMMANDS + ("-h", "--help"):
        argv.insert(0, "train")  # `run.py --experiment X` means `run.py train --experiment X`
    args = build_parser(prog).parse_args(argv)
    args.prog, args.command_line = prog, f"{prog} {shlex.join(argv)}"  # recorded in what it writes
    try:
        return {"train": train, "sweep": sweep_command, "plot": plot, "analyze": analyze_command,
                "compare": compare_command, "merge": merge_command, "export": export_command,
                "download": download_command}[args.command](args)
    except FastvarError as e:
        print(f"fastvar: error: {e.on_command_line()}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fastvar analyze A B | head -1`: the reader left; end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout must not fail again
        return 0


def train(args):
    if args.list_recipes:
        print(recipe_table())
        return 0
    if args.list_experiments:
        print(experiment_table(args.recipe))
        return 0
    study, execution = Study(**study_arguments(args), runs=args.runs), execution_of(args)
    for note in study.notes(execution.resolved_device()):
        print(f"fastvar: note: {note}", file=sys.stderr)
    out = args.out or Path("results") / study.experiment
    store = run_with_progress(study, study, execution, study.runs, out, args, small_command(args.prog, study))
    if store is None:
        return 130
    rows = store.runs()
    if args.plot:
        with writing(out / "plots"):
            paths = plot_study(rows, out / "plots", f"{study.experiment}, {out}")
        print(f"{len(paths)} plots of {len(rows)} runs in {out / 'plots'}")
    print(summary_line(rows, out))
    return 0


def stored_runs(out):
    """What an interrupted study or sweep left in `out`, in words: how many finished runs it holds."""
    count = stored_run_count(out)
    return "no finished run is stored" if not count else f"{count} finished run{'s' * (count != 1)} stored"


def run_with_progress(target, lead, execution, total, out, args, small=None):
    """Train a Study or a Sweep (`target`, whose first study is `lead`) into `out` as `execution` says,
    with a progress bar of `total` runs; return what its run returns, or None after Ctrl-C (its finished
    runs are kept). Says what it loads, then what it trains, then (after a few seconds of steps) the projected time,
    with `small`, a command sized for a CPU, where that projects beyond a day there."""
    where, name = (args.data, "data") if args.data else (args.data_dir or default_data_dir(), DATASETS[lead.dataset])
    print(f"fastvar: loading {name} from {where} ...", file=sys.stderr, flush=True)
    data = load_arrays(args.data) if args.data else lead.load_data(args.data_dir, args.download)
    device = execution.resolved_device()
    swept = getattr(target, "settings", {})
    bar = ProgressBar(total, lambda todo: plan_line(lead, execution, total, todo, out, data, swept),
                      lambda todo, rate: projection_lines(todo, rate, device.type, small))
    try:
        result = target.run(out, execution=execution, data=data, progress=bar.update)
    except KeyboardInterrupt:
        result = None
    finally:
        bar.close()
    if result is None:
        print(f"interrupted: {stored_runs(out)} in {out}; the same command carries on", file=sys.stderr)
    return result


def plan_line(study, execution, total, todo, out, data, swept=None):
    """One line naming what will run, and how; with `swept`, a sweep's settings, the values it sweeps."""
    device = execution.resolved_device()
    threads = f" with {torch.get_num_threads()} threads" if device.type == "cpu" else ""  # set by Study.run
    swept, recipe, width = swept or {}, study.resolved_recipe(), study.resolved_width()
    width = f" at width {width}" if width is not None and "width" not in swept else ""
    epochs = recipe.epochs
    length = "epochs" if "epochs" in swept else f"{epochs} epoch{'s' * (epochs != 1)}"
    changed = [f"{name.replace('_', ' ')} {value:g}" for name, value in (study.overrides or {}).items()
               if name not in swept]
    changed += [f"{name.replace('_', ' ')} swept over {', '.join(f'{v:g}' for v in values)}"
                for name, values in swept.items()]
    named = f"the {study.recipe_name()} recipe" + (f" with {', '.join(changed)}" if changed else "")
    return (f"fastvar: training {todo} of {total} runs of {study.experiment} into {out} "
            f"({total - todo} there already): {named}, {model_name(recipe.model)}{width}, "
            f"{length} of {len(data.y_train):,} {'sequences' if data.kind == 'tokens' else 'examples'} "
            f"({data_identity(data)}), "
            f"{scored_on(data, study)}"
            f"on {device}{threads}, "
            f"{strategy_words(execution, device)}, "
            f"{study.resolved_precision(device)}")


def strategy_words(execution, device):
    """The plan line's words for the strategy: vmap's M, or the loop's one run at a time."""
    if execution.resolved_strategy(device) == "vmap":
        return f"vmap strategy, M = {execution.batch_models}"
    return "loop strategy (one run at a time, each stored as it finishes)"


def data_identity(data):
    """What the plan line names of the data: the dataset (or the arrays' digest) and its subsets."""
    subsets = [f"{split} subset {size:,}" for split, size in (("train", data.train_subset), ("test", data.test_subset))
               if size is not None]
    return ", ".join([data.name, *subsets])


def scored_on(data, study):
    """What the plan line says of the eval sets every run is scored on too, if any."""
    names = [*data.eval_sets, *[shift.NAME] * study.eval_shift]  # the shifted set is added as the study starts
    return f"scored on the test set and {', '.join(names)}, " if names else ""


def projection_lines(todo, runs_per_hour, device_type, small=None):
    """The projected time of `todo` runs at `runs_per_hour`; beyond a day on a CPU, a word and `small`."""
    hours = todo / runs_per_hour
    lines = [f"fastvar: projected: {todo:g} runs in about {duration(hours)} ({per_hour(runs_per_hour)} so far)"]
    if device_type == "cpu" and hours > 24:
        lines.append("fastvar: that is more than a day on this CPU; "
                     + (f"a study sized for it finishes in minutes: {small}" if small else
                        "fewer runs, a smaller --width or a --train-subset finish in minutes"))
    return lines


def small_command(prog, study):
    """`prog` train for this study's experiment at the CPU_SIZED size."""
    what = f"--vary {','.join(study.vary)}" if study.vary else f"--experiment {study.experiment}"
    recipe = f" --recipe {study.recipe_name()}" if study.recipe_name() != "seed" else ""
    return f"{prog} {what}{recipe} {CPU_SIZED} --out results/{study.experiment}-cpu"


def sweep_command(args):
    sweep = Sweep(dict(parse_setting(text) for text in args.set), runs_per_point=args.runs_per_point,
                  study=study_arguments(args))
    total = len(sweep.studies) * sweep.runs_per_point
    if run_with_progress(sweep, sweep.studies[0][1], execution_of(args), total, args.out, args) is None:
        return 130
    table, verdict = sweep_summary(args.out)
    print(f"{table}\n{verdict}")
    return 0


def plot(args):
    rows = read_runs(args.folder, args.test_set)[1]
    on = "" if args.test_set == TEST_SET else f"-{args.test_set}"
    out = args.out or args.folder / f"plots{on}"
    with writing(out, "give --out DIR in a writable place"):
        paths = plot_study(rows, out, f"{rows[0]['experiment']}, {args.folder}{f', on {args.test_set}' * bool(on)}")
    print(f"{len(paths)} plots of {len(rows)} runs in {out}")
    return 0


def analyze_command(args):
    path, remedy = args.report or args.folders[0] / "report.md", "give --report PATH in a writable place, or --json"
    if not args.json:
        check_writable(path, remedy)
    analyses = analyze(*args.folders, data_dir=args.data_dir, cka=args.cka)  # a sweep's: its points
    if args.json:  # a machine's reading: it prints, and writes nothing
        print("\n".join(json_line(a) for a in analyses))
        return 0
    sections = sweep_sections(args.folders)
    print(notes(analyses))
    for title, table in [*sections, *tables(analyses)]:
        print(f"\n{title}\n\n{table}")
    with writing(path, remedy):
        write_report(analyses, path, args.command_line, sections)
    print(f"report: {path}", file=sys.stderr)
    return 0


def check_writable(path, remedy):
    """Before any work: `path` can be written (its folder exists and takes a file; it is left as it was)."""
    path = Path(path)
    if not path.parent.is_dir():  # no folder there: the analysis names what is missing first
        return
    if path.is_dir() or not os.access(path if path.exists() else path.parent, os.W_OK):
        raise StoreError(f"cannot write {path}: {'a folder is there' if path.is_dir() else 'not writable'}; {remedy}")


def compare_command(args):
    acc_a, acc_b, results = compare(args.folder_a, args.folder_b, args.test_set)
    print("\n".join(comparison_lines(args.folder_a, args.folder_b, acc_a, acc_b, results, args.test_set)))
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
    paths, note = export(args.folder, args.format, args.out, args.data_dir)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    if note:
        print(f"fastvar: note: {note}", file=sys.stderr)
    return 0


def download_command(args):
    data = load_dataset("cifar10", args.data_dir, download=True)
    print(f"CIFAR-10 ready in {args.data_dir or default_data_dir()}: {len(data.y_train):,} training and "
          f"{len(data.y_test):,} test images")
    return 0


def recipe_table():
    lines = []
    for name, r in ((name, recipe.to_dict()) for name, recipe in RECIPES.items()):
        opt = r["optimizer"]
        augment = ", ".join(f"{k} {v}" for k, v in r["augment"].items()) or "none"
        lines.append(f"{name:<15} {r['model']:<17} {opt['name']} lr {opt['lr']:g} ({r['schedule']['name']}), "
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
    if len(acc) == 1:
        return f"1 run in {out}: test accuracy {acc[0]:.2f} % (one run: no spread yet)"
    return f"{len(rows)} runs in {out}: test accuracy {acc.mean():.2f} % ± {acc.std(ddof=1):.2f} % (mean ± SD)"
