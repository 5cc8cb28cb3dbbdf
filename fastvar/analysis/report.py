"""Rendering analyses: the tables `analyze` prints, the notes above them, what was trained, the JSON
line, and report.md with its plots."""
import json
import math
from datetime import datetime, timezone
from pathlib import Path


from ..data import IGNORE, TEST_SET
from ..sources import experiment_sources
from ..store import flatten
from .compute import DIFFERENCES_PP
from .plots import analysis_figures, save_figures


def fmt(value, scale=1.0, digits=2, style="f"):
    """A table cell: `digits` decimals (style f) or significant digits (style g); – for a missing value."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "–" if missing else f"{value * scale:.{digits}{style}}"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def metrics_on(analysis, test_set=TEST_SET):
    """An analysis's metrics on `test_set`: the test set's, or an eval set's."""
    return analysis.metrics if test_set == TEST_SET else analysis.eval_sets[test_set]


def spread_table(analyses, test_set=TEST_SET):
    header = ["folder", "runs", "acc. mean (%)", "acc. SD (pp)", "CE mean", "CE SD", "disagreement (%)",
              "Spearman ρ", "ens. gain (pp)", "binomial SD (pp)", "distribution SD (pp) [95 %]",
              "ensemble acc. (%)", "ECE"]
    rows = []
    for a in analyses:
        m = metrics_on(a, test_set)
        distribution = (f"{fmt(m['distribution_sd'], 100)} [{fmt(m['distribution_sd_low'], 100)}, "
                        f"{fmt(m['distribution_sd_high'], 100)}]")
        rows.append([a.name, m["n"], fmt(m["acc_mean"], 100), f"{fmt(m['acc_sd'], 100)} ± {fmt(m['acc_sd_err'], 100)}",
                     fmt(m["ce_mean"], digits=3), f"{fmt(m['ce_sd'], digits=3, style='g')} ± {fmt(m['ce_sd_err'], digits=2, style='g')}",
                     fmt(m["disagreement"], 100), fmt(m["spearman"], digits=3), fmt(m["ensemble_gain"], 100),
                     fmt(m["binomial_sd"], 100), distribution, fmt(m["ensemble_acc"], 100), fmt(m["ece"], digits=3)])
    return markdown_table(header, rows)


def language_model_table(analyses, test_set=TEST_SET):
    """Summers & Dinneen's language-model columns: per-token perplexity and its spread, how often runs
    predict another token, and what an ensemble of two runs gains."""
    header = ["folder", "runs", "test tokens", "token acc. (%)", "perplexity mean", "perplexity SD",
              "CE SD (nats)", "disagreement (%)", "2-run ens. gain: CE (nats), perplexity",
              "ensemble of all: perplexity"]
    rows = [[a.name, m["n"], m["tokens"], fmt(m["acc_mean"], 100), fmt(m["ppl_mean"], digits=3),
             f"{fmt(m['ppl_sd'], digits=3, style='g')} ± {fmt(m['ppl_sd_err'], digits=2, style='g')}",
             fmt(m["ce_sd"], digits=3, style="g"), fmt(m["disagreement"], 100),
             f"{fmt(m['ensemble_gain_ce'], digits=4)}, {fmt(m['ensemble_gain_ppl'], digits=3)}",
             fmt(m["ensemble_ppl"], digits=3)] for a in analyses for m in [metrics_on(a, test_set)]]
    return markdown_table(header, rows)


def test_sets_table(analyses):
    """Jordan's split of the accuracy SD on every test set: what independent per-example coin flips
    give (binomial) and what is left for the distribution of runs, with its share of the variance."""
    rows = []
    for a in analyses:
        for name, m in a.test_sets():
            beyond = max(0.0, m["acc_sd"] ** 2 - m["binomial_sd"] ** 2) / m["acc_sd"] ** 2 if m["acc_sd"] else None
            rows.append([a.name, name, m["n"], fmt(m["acc_mean"], 100), fmt(m["acc_sd"], 100), fmt(m["binomial_sd"], 100),
                         f"{fmt(m['distribution_sd'], 100)} [{fmt(m['distribution_sd_low'], 100)}, "
                         f"{fmt(m['distribution_sd_high'], 100)}]", fmt(beyond, 100, 0)])
    return markdown_table(["folder", "test set", "runs", "acc. mean (%)", "acc. SD (pp)", "binomial SD (pp)",
                           "distribution SD (pp) [95 %]", "variance beyond binomial (%)"], rows)


def eval_set_tables(analyses):
    """(title, table) for each eval set among the analyses', and the binomial split over every set."""
    names = list(dict.fromkeys(name for a in analyses for name in a.eval_sets))
    out = []
    for name in names:
        having = [a for a in analyses if name in a.eval_sets]
        out.append((f"Spread on the eval set '{name}'", spread_table(having, name)))
        language_models = [a for a in having if "ppl_mean" in a.eval_sets[name]]
        if language_models:
            out.append((f"Language models on the eval set '{name}'", language_model_table(language_models, name)))
    if names:
        out.append(("Binomial against distribution-wise SD of test accuracy on every test set",
                    test_sets_table([a for a in analyses if a.eval_sets])))
    return out


def set_rows(analyses):
    """(row label, metrics) of every folder's every test set (Analysis.labelled_test_sets)."""
    return [row for a in analyses for row in a.labelled_test_sets(a.name)]


def power_table(analyses):
    header = ["folder", "acc. SD (pp)"] + [f"runs per arm for {d:g} pp" for d in DIFFERENCES_PP]
    return markdown_table(header, [[label, fmt(m["acc_sd"], 100)] + [m["runs_per_arm"][f"{d:g}"] or "–"
                                                                     for d in DIFFERENCES_PP]
                                   for label, m in set_rows(analyses)])


def ensemble_table(analyses):
    sizes = ("1", "2", "3", "5")
    header = ["folder"] + [f"{s} model{'s' if s != '1' else ''}: acc. (%), SD (pp), groups" for s in sizes]
    rows = []
    for label, m in set_rows(analyses):
        cells = [label]
        for s in sizes:
            e = m["ensembles"].get(s)
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
    out = [("Spread of test accuracy and cross-entropy", spread_table(analyses))]
    language_models = [a for a in analyses if "ppl_mean" in a.metrics]
    if language_models:
        out.append(("Language models: per-token perplexity, disagreement and ensembles",
                    language_model_table(language_models)))
    out += eval_set_tables(analyses)
    out += [("Runs needed per arm (two-sided t-test, alpha 0.05, power 0.8, at the measured SD)",
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
    mixed = analysis.metrics["mixed"]  # values as text: JSON's keys
    if not mixed:
        return ""
    parts = ["; ".join(f"{name} {'not recorded' if value == 'None' else value} "
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
                  ("dropout", h.get("dropout") or 0), ("clip_grad_norm", h.get("clip_grad_norm") or 0))
        numbers += [f"{name.replace('_', ' ')} {value:g}" for name, value in extras if value]
        numbers += [f"{h['schedule']['name']} schedule"] + [f"augment {', '.join(h['augment'])}"] * bool(h["augment"])
        absent = {s for s, has in (("aug", h["augment"]), ("dropout", h.get("dropout"))) if not has}  # the recipe lacks
        varied = ", ".join(sorted(experiment_sources(c["experiment"]) - absent)) or "nothing"
        width = f" width {c['width']}" if c.get("width") else ""
        train = "all" if not c.get("train_subset") else f"{c['train_subset']:,}"
        if a.labels.ndim == 2:  # a language model's target tokens
            scored = a.labels[a.labels != IGNORE]
            test = f"{a.rows[0]['n_test']:,} test sequences ({len(scored):,} target tokens)"
        else:
            test = f"{a.rows[0]['n_test']:,} test, {len(set(a.labels.tolist()))} classes"
        sets = "".join(f"; eval set {name}" for name in a.eval_sets)
        data = f"{c.get('dataset', 'cifar10')}: {train} training, {test}{sets}"
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


def json_line(analysis):
    """One folder's metrics as one line of strict JSON (NaN, where a metric needs 2 runs, is null)."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return None if isinstance(value, float) and math.isnan(value) else value
    return json.dumps(clean(analysis.to_json()))
