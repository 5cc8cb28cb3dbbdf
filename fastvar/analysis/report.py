"""Reading studies back: each results folder's metrics, the tables `analyze` prints, `compare`, and
report.md with its plots."""
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..augment import normalized
from ..data import balanced_subset, load_dataset
from ..errors import AnalysisError, Param, StoreError
from ..precisions import PRECISIONS
from ..sources import experiment_sources
from ..store import (DEFINITION, HOW_COLUMNS, Store, flatten, folder_name, holds_runs, shard_stores, sweep_points,
                     weights_path)
from . import cka as cka_module
from .metrics import snapshot_ensembles, summarize
from .plots import analysis_figures, save_figures
from .stats import paired, runs_per_arm, variance_components, welch

DIFFERENCES_PP = (0.05, 0.1, 0.2, 0.5)  # accuracy differences the power table plans for


@dataclass
class Analysis:
    folder: Path
    config: dict
    rows: list
    labels: np.ndarray
    metrics: dict
    components: list = field(default_factory=list)  # variance components, for a grid
    cka: dict = field(default_factory=dict)  # layer -> {"mean", "sd", "pairs"}, with --cka

    @property
    def name(self):
        return str(self.folder)

    def correct(self):
        """R×n: which test examples each run gets right."""
        return np.stack([r["test_logits"].argmax(-1) for r in self.rows]) == self.labels

    def to_json(self):
        return {"folder": self.name, **self.metrics,
                "components": [{"name": c.name, "variance": c.variance, "low": c.low, "high": c.high}
                               for c in self.components], "cka": self.cka}


def read_runs(folder):
    """A folder's stores (its runs.sqlite, or its shard files if not merged yet: one study either way)
    and its runs; the first store holds the config and labels."""
    stores = [] if (Path(folder) / "runs.sqlite").is_file() else shard_stores(folder)
    stores = stores or [Store(folder)]
    rows = {r["run_key"]: r for s in stores for r in s.runs()}
    if not rows:
        raise StoreError(f"{folder} holds no finished runs yet")
    return stores, sorted(rows.values(), key=lambda r: r["run_index"])


def test_labels(store, rows, data_dir=None):
    labels = store.labels()
    if labels is None:  # a folder from before the labels were stored: read them from the data
        labels = load_dataset(store.config.get("dataset", "cifar10"), data_dir,
                              test_subset=store.config["test_subset"]).y_test.numpy()
    if len(labels) != rows[0]["n_test"]:
        raise StoreError(f"{store.folder}: {len(labels)} test labels for logits of {rows[0]['n_test']} examples")
    return labels


def analyze_folder(folder, *, data_dir=None, with_cka=False, seed=0):
    stores, rows = read_runs(folder)
    store = stores[0]
    diverged = sum(bool(r["diverged"]) for r in rows)
    rows = [r for r in rows if not r["diverged"]]  # their spread is not the spread of training
    if not rows:
        raise AnalysisError(f"{folder}: every run diverged")
    labels = test_labels(store, rows, data_dir)
    metrics = summarize([r["test_acc"] for r in rows], [r["test_loss"] for r in rows],
                        np.stack([r["test_logits"] for r in rows]), labels, seed=seed)
    snapshots = {k: v for s in stores for k, v in s.snapshots().items()}
    if snapshots:
        metrics["snapshots"] = snapshot_ensembles(
            np.stack([snapshots[r["run_key"]] for r in rows if r["run_key"] in snapshots]), labels, seed)
    metrics["diverged"] = diverged
    metrics["mixed"] = {name: {str(value): runs for value, runs in by_value.items()}
                        for name, by_value in mixed_settings(rows).items()}
    metrics["runs_per_arm"] = {f"{d:g}": runs_per_arm(metrics["acc_sd"], d / 100) if metrics["n"] > 1 else None
                               for d in DIFFERENCES_PP}
    analysis = Analysis(Path(folder), store.config, rows, labels, metrics)
    if store.config["experiment"] == "grid":
        analysis.components = grid_components(store.config["grid"], rows, folder)
    if with_cka:
        analysis.cka = folder_cka(folder, store.config, rows, data_dir)
    return analysis


def analyze(*folders, data_dir=None, cka=False, seed=0):
    """The analysis of each results folder, as `python run.py analyze` computes it; a sweep's folder
    stands for its points that have finished runs."""
    return [analyze_folder(f, data_dir=data_dir, with_cka=cka, seed=seed) for f in study_folders(folders)]


def is_sweep_folder(folder):
    return (Path(folder) / DEFINITION).is_file() and not holds_runs(folder)


def study_folders(folders):
    """`folders` with each sweep's folder replaced by its points' folders that hold finished runs."""
    out = []
    for folder in folders:
        if not is_sweep_folder(folder):
            out.append(folder)
            continue
        points = [path for _, path in sweep_points(folder) if holds_runs(path)]
        if not points:
            raise AnalysisError(f"{folder}: no point of this sweep has finished runs yet")
        out += points
    return out


def sweep_sections(folders):
    """For each sweep's folder among `folders`: (title, its points' table and verdict) for `analyze`."""
    return [(f"Sweep {folder}: each point against the best", "\n\n".join(sweep_summary(folder)))
            for folder in folders if is_sweep_folder(folder)]


def grid_components(shape, rows, folder):
    """Variance components of test accuracy over an init × order grid, in accuracy² (fraction)."""
    rows_n, columns = shape
    if len(rows) != rows_n * columns:
        raise AnalysisError(f"{folder}: the {rows_n}x{columns} grid is not finished ({len(rows)} runs); "
                         f"run its training command again to complete it")
    table = np.array([r["test_acc"] for r in sorted(rows, key=lambda r: r["run_index"])])
    return variance_components(table.reshape(rows_n, columns))


def folder_cka(folder, config, rows, data_dir):
    paths = [weights_path(folder, config["experiment"], r["run_index"]) for r in rows]
    paths = [p for p in paths if p.is_file()]
    if len(paths) < 2:
        raise AnalysisError(f"{folder} keeps the weights of {len(paths)} runs; CKA needs 2 "
                            f"(train with {{}})", Param("save_weights", flag="--save-weights K"))
    data = load_dataset(config.get("dataset", "cifar10"), data_dir)
    x, _ = balanced_subset(data.x_test.numpy(), data.y_test.numpy(), cka_module.PROBE_SIZE, "test")
    hyp = config["hyperparameters"]
    dtype = PRECISIONS[config["precision"]]
    images = normalized(torch.from_numpy(x), torch.arange(len(x)), hyp, dtype).contiguous()
    grams = [cka_module.layer_grams(hyp["model"], config["width"], torch.load(p, weights_only=True), images,
                                    hyp.get("dropout")) for p in paths]
    return cka_module.cka_by_layer(grams)


def fmt(value, scale=1.0, digits=2, style="f"):
    """A table cell: `digits` decimals (style f) or significant digits (style g); – for a missing value."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "–" if missing else f"{value * scale:.{digits}{style}}"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def spread_table(analyses):
    header = ["folder", "runs", "acc. mean (%)", "acc. SD (pp)", "CE mean", "CE SD", "disagreement (%)",
              "Spearman ρ", "ens. gain (pp)", "binomial SD (pp)", "distribution SD (pp) [95 %]",
              "ensemble acc. (%)", "ECE"]
    rows = []
    for a in analyses:
        m = a.metrics
        distribution = (f"{fmt(m['distribution_sd'], 100)} [{fmt(m['distribution_sd_low'], 100)}, "
                        f"{fmt(m['distribution_sd_high'], 100)}]")
        rows.append([a.name, m["n"], fmt(m["acc_mean"], 100), f"{fmt(m['acc_sd'], 100)} ± {fmt(m['acc_sd_err'], 100)}",
                     fmt(m["ce_mean"], digits=3), f"{fmt(m['ce_sd'], digits=3, style='g')} ± {fmt(m['ce_sd_err'], digits=2, style='g')}",
                     fmt(m["disagreement"], 100), fmt(m["spearman"], digits=3), fmt(m["ensemble_gain"], 100),
                     fmt(m["binomial_sd"], 100), distribution, fmt(m["ensemble_acc"], 100), fmt(m["ece"], digits=3)])
    return markdown_table(header, rows)


def power_table(analyses):
    header = ["folder", "acc. SD (pp)"] + [f"runs per arm for {d:g} pp" for d in DIFFERENCES_PP]
    return markdown_table(header, [[a.name, fmt(a.metrics["acc_sd"], 100)]
                                   + [a.metrics["runs_per_arm"][f"{d:g}"] or "–" for d in DIFFERENCES_PP]
                                   for a in analyses])


def ensemble_table(analyses):
    sizes = ("1", "2", "3", "5")
    header = ["folder"] + [f"{s} model{'s' if s != '1' else ''}: acc. (%), SD (pp), groups" for s in sizes]
    rows = []
    for a in analyses:
        cells = [a.name]
        for s in sizes:
            e = a.metrics["ensembles"].get(s)
            cells.append(f"{fmt(e['acc'], 100)}, {fmt(e['sd'], 100)}, {e['groups']}" if e else "–")
        rows.append(cells)
    return markdown_table(header, rows)


def snapshot_table(analyses):
    header = ["folder", "cycles", "single model: acc. (%), SD (pp)", "snapshot ensemble: acc. (%), SD (pp)",
              "disagreement, single / snapshot ens. (%)", "gain over last snapshot (pp)"] + \
             [f"{n} runs: acc. (%), SD (pp)" for n in ("2", "3", "5")]
    rows = []
    for a in analyses:
        m, s = a.metrics, a.metrics["snapshots"]
        ordinary = [a.metrics["ensembles"].get(n) for n in ("2", "3", "5")]
        rows.append([a.name, s["cycles"], f"{fmt(m['acc_mean'], 100)}, {fmt(m['acc_sd'], 100)}",
                     f"{fmt(s['acc'], 100)}, {fmt(s['sd'], 100)} ± {fmt(s['sd_err'], 100)}",
                     f"{fmt(m['disagreement'], 100)} / {fmt(s['disagreement'], 100)}", fmt(s["gain"], 100)]
                    + [f"{fmt(e['acc'], 100)}, {fmt(e['sd'], 100)}" if e else "–" for e in ordinary])
    return markdown_table(header, rows)


def components_table(analyses):
    rows = []
    for a in analyses:
        total = sum(max(c.variance, 0) for c in a.components)
        for c in a.components:
            rows.append([a.name, c.name, f"{c.variance * 1e4:.4f} [{c.low * 1e4:.4f}, {c.high * 1e4:.4f}]",
                         fmt(c.sd, 100), fmt(max(c.variance, 0) / total if total else float("nan"), 100, 0)])
    return markdown_table(["folder", "component", "variance (pp²) [95 %]", "SD (pp)", "share (%)"], rows)


def cka_table(analyses):
    return markdown_table(["folder", "layer", "linear CKA (mean ± SD over pairs)", "pairs"],
                          [[a.name, layer, f"{v['mean']:.4f} ± {fmt(v['sd'], digits=4)}", v["pairs"]]
                           for a in analyses for layer, v in a.cka.items()])


def tables(analyses):
    """The tables of `analyze`, as (title, markdown) pairs; the optional ones only where they apply."""
    out = [("Spread of test accuracy and cross-entropy", spread_table(analyses)),
           ("Runs needed per arm (two-sided t-test, alpha 0.05, power 0.8, at the measured SD)",
            power_table(analyses)),
           ("Ensembles of disjoint groups of runs", ensemble_table(analyses))]
    with_snapshots = [a for a in analyses if "snapshots" in a.metrics]
    if with_snapshots:
        out.append(("Snapshot ensembles (each run's cycles) next to single runs and ensembles of runs",
                    snapshot_table(with_snapshots)))
    if any(a.components for a in analyses):
        out.append(("Variance components of test accuracy (init × order grid)",
                    components_table([a for a in analyses if a.components])))
    if any(a.cka for a in analyses):
        out.append(("Linear CKA between runs (1000-image test probe)", cka_table([a for a in analyses if a.cka])))
    return out




def trained_with(row):
    """The row's training regime: threads count on the CPU only, graphs on CUDA only, M under vmap only."""
    regime = {k: row.get(k) for k in HOW_COLUMNS}
    if not str(regime["device"]).startswith("cpu"):
        regime["threads"] = None
    if not str(regime["device"]).startswith("cuda"):
        regime["cuda_graph"] = None
    if regime["strategy"] != "vmap":
        regime["batch_models"] = None
    return regime


def mixed_settings(rows):
    """{setting: {value: run indices}} for each HOW_COLUMNS setting whose value differs between rows
    (an older folder's unrecorded value is None); empty when every run was trained alike."""
    mixed = {}
    for name in HOW_COLUMNS:
        by_value = {}
        for row in rows:
            by_value.setdefault(trained_with(row)[name], []).append(row["run_index"])
        if len(by_value) > 1:
            mixed[name] = by_value
    return mixed


def index_ranges(indices):
    """[0, 1, 2, 5] -> "0–2, 5"."""
    spans, start = [], None
    for i, k in enumerate(indices):
        if start is None:
            start = k
        if i + 1 == len(indices) or indices[i + 1] != k + 1:
            spans.append(f"{start}–{k}" if k > start else f"{k}")
            start = None
    return ", ".join(spans)


def mixed_note(analysis):
    """One sentence naming the settings a folder's runs were trained with differently, and which runs."""
    mixed = mixed_settings(analysis.rows)
    if not mixed:
        return ""
    parts = ["; ".join(f"{name} {'not recorded' if value is None else value} "
                       f"({'run' if len(runs) == 1 else 'runs'} {index_ranges(runs)})"
                       for value, runs in by_value.items()) for name, by_value in mixed.items()]
    return (f" {analysis.name} mixes how its runs were trained, so their spread mixes rounding regimes: "
            + "; ".join(parts) + ".")


def notes(analyses):
    """The paragraph printed above the tables: how to read them, and what to watch for."""
    sampled = [a for a in analyses if a.metrics["n"] * (a.metrics["n"] - 1) // 2 > a.metrics["pairs"]]
    note = ("SDs are sample SDs (ddof 1), ± the SD of the SD over 10,000 seeded bootstrap resamples of runs. "
            "Disagreement and Spearman ρ are exact means over all pairs of runs.")
    diverged = [f"{a.metrics['diverged']} in {a.name}" for a in analyses if a.metrics["diverged"]]
    if diverged:
        note += " Diverged runs are left out: " + ", ".join(diverged) + "."
    if sampled:
        note += " Ensemble gain uses a seeded sample of " + ", ".join(
            f"{a.metrics['pairs']} pairs ({a.name})" for a in sampled) + "; elsewhere all pairs."
    return note + "".join(mixed_note(a) for a in analyses)


def differing_setting(analyses):
    """The one config setting in which the folders differ, if it is one and numeric, else None."""
    configs = [flatten(a.config) for a in analyses]
    keys = {k for c in configs for k in c if any(c.get(k) != d.get(k) for d in configs)}
    if len(analyses) < 2 or len(keys) != 1:
        return None
    key = keys.pop()
    values = [c.get(key) for c in configs]
    return (key, values) if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) else None


def what_was_trained(analyses):
    """One row per folder: the experiment and what it varies, the recipe and its numbers, the model,
    the data, epochs, runs, and how they were trained."""
    rows = []
    for a in analyses:
        c, h = a.config, a.config["hyperparameters"]
        optimizer = h["optimizer"]
        numbers = [f"{optimizer['name']} lr {optimizer['lr']:g}", f"batch {h['batch_size']}"]
        extras = (("weight_decay", optimizer.get("weight_decay", 0)), ("label_smoothing", h.get("label_smoothing", 0)),
                  ("dropout", h.get("dropout") or 0))
        numbers += [f"{name.replace('_', ' ')} {value:g}" for name, value in extras if value]
        numbers += [f"{h['schedule']['name']} schedule"] + [f"augment {', '.join(h['augment'])}"] * bool(h["augment"])
        absent = {s for s, has in (("aug", h["augment"]), ("dropout", h.get("dropout"))) if not has}  # the recipe lacks
        varied = ", ".join(sorted(experiment_sources(c["experiment"]) - absent)) or "nothing"
        width = f" width {c['width']}" if c.get("width") else ""
        train = "all" if not c.get("train_subset") else f"{c['train_subset']:,}"
        classes = len(set(np.asarray(a.labels).tolist()))
        data = f"{c.get('dataset', 'cifar10')}: {train} training, {a.rows[0]['n_test']:,} test, {classes} classes"
        how = sorted({f"{r['device']}, {r['strategy']}" for r in a.rows})
        rows.append([str(a.folder), f"{c['experiment']} (varies {varied})", f"{c['recipe']}: {'; '.join(numbers)}",
                     f"{h['model']}{width}", data, str(h["epochs"]), str(len(a.rows) + a.metrics["diverged"]),
                     c["precision"], " / ".join(how)])
    return markdown_table(["folder", "experiment", "recipe", "model", "data", "epochs", "runs", "precision",
                           "trained on"], rows)


def write_report(analyses, path, command, sections=()):
    """report.md at `path`: what was trained, the notes, `sections` (title, markdown) and the tables,
    and the plots beside it."""
    path = Path(path)
    plot_dir = path.parent / f"{path.stem}_plots"
    paths = save_figures(analysis_figures(analyses, differing_setting(analyses)), plot_dir)
    parts = [f"# fastvar report\n\n`{command}`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.\n",
             f"## What was trained\n\n{what_was_trained(analyses)}\n", notes(analyses) + "\n"]
    parts += [f"## {title}\n\n{table}\n" for title, table in [*sections, *tables(analyses)]]
    parts += ["## Plots\n"] + [f"![{name}]({p.relative_to(path.parent).as_posix()})\n" for name, p in paths.items()]
    path.write_text("\n".join(parts))
    return path


SEED_COLUMNS = ("init_seed", "order_seed", "aug_seed", "dropout_seed", "perturb_seed")


def run_seeds_key(row):
    """Run k of one folder pairs with run k of another when every seed of theirs is the same."""
    return (row["run_index"], *(row[c] for c in SEED_COLUMNS))


def compare(folder_a, folder_b):
    """B minus A in test accuracy: Welch's test, and the paired test over runs with the same seeds."""
    (_, rows_a), (_, rows_b) = read_runs(folder_a), read_runs(folder_b)
    acc_a, acc_b = [r["test_acc"] for r in rows_a], [r["test_acc"] for r in rows_b]
    if min(len(acc_a), len(acc_b)) < 2:
        raise AnalysisError(f"compare needs at least 2 runs in each folder ({len(acc_a)} and {len(acc_b)})")
    results = [welch(acc_a, acc_b)]
    by_seeds = {run_seeds_key(r): r["test_acc"] for r in rows_a}
    pairs = [(by_seeds[run_seeds_key(r)], r["test_acc"]) for r in rows_b if run_seeds_key(r) in by_seeds]
    if len(pairs) >= 2:
        results.append(paired(*zip(*pairs)))
    return acc_a, acc_b, results


def comparison_lines(folder_a, folder_b, acc_a, acc_b, results):
    def describe(folder, acc):
        acc = np.asarray(acc) * 100
        return f"{folder}: {len(acc)} runs, {acc.mean():.2f} % ± {acc.std(ddof=1):.2f}"
    lines = [f"A  {describe(folder_a, acc_a)}", f"B  {describe(folder_b, acc_b)}"]
    for c in results:
        what = "Welch's t-test" if c.test == "welch" else f"paired t-test over {c.n} runs with the same seeds"
        lines.append(f"B - A: {c.difference * 100:+.3f} pp, 95 % interval [{c.low * 100:+.3f}, {c.high * 100:+.3f}], "
                     f"{what}: p = {c.p_value:.3g} (df {c.df:.1f})")
    if len(results) == 1:
        lines.append("no runs with the same seeds in both folders: no paired test")
    return lines


def json_line(analysis):
    """One folder's metrics as one line of strict JSON (NaN, where a metric needs 2 runs, is null)."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return None if isinstance(value, float) and math.isnan(value) else value
    return json.dumps(clean(analysis.to_json()))


def sweep_summary(folder):
    """Each point's mean ± SD of test accuracy, and its difference to the best point (paired over runs
    with the same seeds) with a 95 % interval; and the points not distinguishable from the best."""
    points = [(point, path, [r["test_acc"] for r in read_runs(path)[1]])
              for point, path in sweep_points(folder) if holds_runs(path)]
    if not points:
        raise AnalysisError(f"{folder}: no point has finished runs yet")
    best_point, best_path, _ = max(points, key=lambda p: np.mean(p[2]))
    rows, tied = [], []
    for point, path, acc in points:
        acc = np.asarray(acc) * 100
        cells = [folder_name(point), len(acc), f"{acc.mean():.2f} ± {fmt(acc.std(ddof=1) if len(acc) > 1 else None)}"]
        if path == best_path:
            rows.append(cells + ["best", "–"])
            continue
        test = compare(best_path, path)[2][-1] if len(acc) > 1 else None
        if test is None:
            rows.append(cells + ["–", "–"])
            continue
        if test.low <= 0 <= test.high:
            tied.append(folder_name(point))
        rows.append(cells + [f"{test.difference * 100:+.2f} [{test.low * 100:+.2f}, {test.high * 100:+.2f}]",
                             f"{test.test}, p = {test.p_value:.3g}"])
    table = markdown_table(["point", "runs", "test acc. (%), mean ± SD", "minus best (pp) [95 %]", "test"], rows)
    verdict = (f"not distinguishable from the best ({folder_name(best_point)}) at 95 %: "
               + (", ".join(tied) if tied else "none"))
    return table, verdict


def results(folder):
    """Every run of a study folder, or of every point of a sweep folder (with the point's values as
    columns), as a list of dicts whatever is installed (`pandas.DataFrame(results(folder))` makes a frame)."""
    folder = Path(folder)
    if holds_runs(folder):
        rows = read_runs(folder)[1]
    else:
        rows = [{**row, **point, "point": folder_name(point)} for point, path in sweep_points(folder)
                if holds_runs(path) for row in read_runs(path)[1]]
    return rows
