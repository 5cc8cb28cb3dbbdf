"""The seed study's four plots of one results folder, and the analysis plots of several."""
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

PLOTS = ("train_loss", "train_acc", "test_acc", "test_loss")
# Axis labels of the settings a set of folders may differ in (the last part of the config's key)
SETTING_LABELS = {"lr": "learning rate", "weight_decay": "weight decay", "label_smoothing": "label smoothing",
                  "clip_grad_norm": "gradient-norm clip",
                  "batch_size": "batch size (examples)", "epochs": "epochs", "width": "width (model's own unit)"}



def new_figure(*grid, figsize):
    """A figure outside pyplot: saved to a file, never shown, and no backend chosen for the process
    (a notebook keeps its inline plots)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid)


def curves_figure(curves, ylabel, title):
    """One thin line per run, the mean over runs, and a ±1 SD band; whole epochs on the axis."""
    curves = np.asarray(curves, dtype=float)
    epochs = np.arange(1, curves.shape[1] + 1)
    fig, ax = new_figure(figsize=(6, 4))
    for curve in curves:
        ax.plot(epochs, curve, color="tab:blue", alpha=0.15, linewidth=0.7, gid="run")
    mean, sd = curves.mean(0), curves.std(0, ddof=1) if len(curves) > 1 else np.zeros(curves.shape[1])
    ax.fill_between(epochs, mean - sd, mean + sd, color="tab:orange", alpha=0.3, label="±1 SD over runs")
    ax.plot(epochs, mean, color="tab:orange", linewidth=2, label="mean over runs", gid="mean")
    ax.plot([], [], color="tab:blue", alpha=0.4, linewidth=0.7, label="one run")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=ylabel, title=f"{title} ({len(curves)} runs)")
    legend_beside(ax)
    return fig


def histogram_figure(values, xlabel, title, unit="", sd_unit=None):
    """Histogram of one value per run, with the mean (in `unit`) and ±1 SD (in `sd_unit`, default
    `unit`: a spread of percentages is in percentage points) marked."""
    sd_unit = unit if sd_unit is None else sd_unit
    values = np.asarray(values, dtype=float)
    fig, ax = new_figure(figsize=(6, 4))
    ax.hist(values, bins=min(30, max(5, len(values) // 5)), color="tab:blue", alpha=0.8)
    mean, sd = values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0
    ax.axvline(mean, color="black", label=f"mean {mean:.4g}{unit}")
    for k, edge in enumerate((mean - sd, mean + sd)):
        ax.axvline(edge, color="black", linestyle="--", label=None if k else f"±1 SD ({sd:.3g}{sd_unit})")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel="runs", title=f"{title} (SD {sd:.3g}{sd_unit}, {len(values)} runs)")
    legend_beside(ax)
    return fig


def plot_study(rows, out_dir, study="results"):
    """Write the four PNGs into `out_dir`, each titled with `study` (experiment and folder); return
    their paths by plot name. Accuracies in percent, as in every other plot and table."""
    percent = lambda key: [np.asarray(r[key]) * 100 for r in rows]  # noqa: E731
    figures = {
        "train_loss": curves_figure([r["train_loss_curve"] for r in rows], "training loss (cross-entropy)",
                                    f"Training loss, {study}"),
        "train_acc": curves_figure(percent("train_acc_curve"), "training accuracy (%)", f"Training accuracy, {study}"),
        "test_acc": histogram_figure(percent("test_acc"), "test accuracy (%)", f"Test accuracy, {study}", " %",
                                     " pp"),
        "test_loss": histogram_figure([r["test_loss"] for r in rows], "test loss (cross-entropy)",
                                      f"Test loss, {study}"),
    }
    return save_figures(figures, out_dir)


def save_figures(figures, out_dir):
    """Write each figure as `out_dir/<name>.png`; return the paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in figures.items():
        paths[name] = out_dir / f"{name}.png"
        fig.savefig(paths[name], dpi=120, bbox_inches="tight")
    return paths


def folder_axis(ax, analyses):
    ax.set_xticks(range(len(analyses)), [a.folder.name for a in analyses], rotation=20, ha="right")


def accuracy_figure(analyses):
    """Every run's test accuracy, one column of points (and a box) per folder."""
    fig, ax = new_figure(figsize=(1.6 + 1.4 * len(analyses), 4))
    jitter = np.random.default_rng(0)
    for i, a in enumerate(analyses):
        acc = np.array([r["test_acc"] for r in a.rows]) * 100
        ax.boxplot(acc, positions=[i], widths=0.5, showfliers=False)
        ax.plot(i + jitter.uniform(-0.15, 0.15, len(acc)), acc, ".", alpha=0.6, gid=f"runs-{i}")
    folder_axis(ax, analyses)
    ax.set(ylabel="test accuracy (%)", title="Test accuracy of every run")
    return fig


def errors(values, low, high):
    """Error-bar lengths below and above `values` for the interval [low, high]; none where unknown."""
    values, low, high = (np.asarray(v, dtype=float) for v in (values, low, high))
    return np.nan_to_num(np.clip([values - low, high - values], 0, None))


def plus_minus(spread):
    """Error-bar lengths of ± `spread` (an SD); none where unknown."""
    return np.nan_to_num(np.asarray(spread, dtype=float))


def log_axis(axis):
    """A log scale of the data already drawn, ticked at 1, 2 and 5 times powers of ten (every digit
    where the data spans less than a decade and a half), written as plain numbers: matplotlib's own
    labels only the powers of ten, often two of them."""
    (axis.axes.set_yscale if axis.axis_name == "y" else axis.axes.set_xscale)("log")
    axis.axes.autoscale_view()
    low, high = axis.get_view_interval()
    subs = (1.0, 2.0, 5.0) if low > 0 and np.log10(high / low) >= 1.5 else np.arange(1.0, 10.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def legend_beside(ax):
    """The legend right of the axes, where it covers no bar or point."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


def setting_axis(ax, name, values):
    """The x axis of the one setting the folders differ in: its values as ticks, on a log scale where
    they span a factor of 4 or more (learning rates, weight decays)."""
    values = np.asarray(values, dtype=float)
    if values.min() > 0 and values.max() / values.min() >= 4:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.set_xlabel(SETTING_LABELS.get(name.rsplit(".", 1)[-1], name))


def sd_figure(analyses, setting=None):
    """Accuracy SD ± its bootstrap SD per folder, or against the one setting the folders differ in."""
    fig, ax = new_figure(figsize=(1.6 + 1.4 * len(analyses), 4) if not setting else (6, 4))
    order = np.argsort(setting[1]) if setting else np.arange(len(analyses))
    x = np.asarray(setting[1], dtype=float)[order] if setting else order
    sd = np.array([analyses[i].metrics["acc_sd"] * 100 for i in order])
    err = np.array([analyses[i].metrics["acc_sd_err"] * 100 for i in order])
    ax.errorbar(x, sd, yerr=plus_minus(err), fmt="o-" if setting else "o", capsize=4, gid="sd")
    if setting:
        setting_axis(ax, *setting)
    else:
        folder_axis(ax, analyses)
    ax.set_ylim(bottom=0)  # an SD's scale starts at zero: a small difference is not drawn as a large one
    ax.set(ylabel="SD of test accuracy (pp)", title="Run-to-run SD of test accuracy (± bootstrap SD)")
    return fig


def ensemble_figure(analyses):
    """Accuracy of ensembles of disjoint groups of runs against the ensemble's size, ± the SD over
    the groups (where there are two or more)."""
    fig, ax = new_figure(figsize=(6, 4))
    for a in analyses:
        sizes = sorted(a.metrics["ensembles"], key=int)
        acc = np.array([a.metrics["ensembles"][s]["acc"] * 100 for s in sizes])
        sd = np.array([a.metrics["ensembles"][s]["sd"] * 100 for s in sizes], dtype=float)
        ax.errorbar([int(s) for s in sizes], acc, yerr=plus_minus(sd), fmt="o-", capsize=4,
                    label=a.folder.name, gid=a.name)
    ax.set_xscale("log")
    sizes = sorted({int(s) for a in analyses for s in a.metrics["ensembles"]})
    ax.set_xticks(sizes, [str(s) for s in sizes])  # the sizes themselves, not powers of ten
    ax.minorticks_off()
    ax.set(xlabel="runs in the ensemble", ylabel="test accuracy (%)",
           title="Ensemble accuracy by size (± SD over disjoint groups)")
    legend_beside(ax)
    return fig


def per_example_figure(analyses):
    """Histogram of per-example accuracy p_i: how many test images every run gets right, none, some,
    on a log count axis (most examples sit at 0 or 1)."""
    fig, ax = new_figure(figsize=(6, 4))
    for a in analyses:
        ax.hist(a.correct().mean(0), bins=min(20, len(a.rows) + 1), range=(0, 1), histtype="step",
                label=a.folder.name)
    log_axis(ax.yaxis)
    ax.set(xlabel="fraction of runs that get the example right", ylabel="test examples (log scale)",
           title="Per-example accuracy")
    legend_beside(ax)
    return fig


def binomial_figure(analyses):
    """Observed accuracy SD (± its bootstrap SD) beside the binomial SD (runs that flip an independent
    coin per test example at the mean accuracy) and the distribution SD left over, with its 95 % interval;
    one group of bars per folder and test set (its eval sets after its test set)."""
    groups = [group for a in analyses for group in a.labelled_test_sets(a.folder.name)]
    fig, ax = new_figure(figsize=(1.6 + 1.4 * len(groups), 4))
    x, width = np.arange(len(groups)), 0.27
    pp = lambda key: np.array([m[key] * 100 for _, m in groups], dtype=float)  # noqa: E731
    observed, binomial, distribution = pp("acc_sd"), pp("binomial_sd"), pp("distribution_sd")
    ax.bar(x - width, observed, width, yerr=plus_minus(pp("acc_sd_err")), capsize=3, label="observed SD ± bootstrap SD",
           gid="acc_sd")
    ax.bar(x, binomial, width, label="binomial SD at the mean accuracy", gid="binomial_sd")
    ax.bar(x + width, distribution, width, capsize=3, gid="distribution_sd", label="distribution SD, 95 % interval",
           yerr=errors(distribution, pp("distribution_sd_low"), pp("distribution_sd_high")))
    ax.set_xticks(x, [label for label, _ in groups], rotation=20, ha="right")
    ax.set_ylim(bottom=0)
    ax.set(ylabel="SD of test accuracy (pp)", title="Observed vs binomial SD")
    legend_beside(ax)
    return fig


def components_figure(analyses):
    """Variance components of an init × order grid, each with its 95 % interval, in pp²."""
    fig, ax = new_figure(figsize=(6, 4))
    grids = [a for a in analyses if a.components]
    width = 0.8 / len(grids)
    for k, a in enumerate(grids):
        x = np.arange(len(a.components)) + (k - (len(grids) - 1) / 2) * width
        var = np.array([c.variance for c in a.components]) * 1e4
        low, high = (np.array([getattr(c, end) for c in a.components]) * 1e4 for end in ("low", "high"))
        ax.bar(x, var, width, yerr=errors(var, low, high), capsize=3, label=a.folder.name, gid=a.name)
    ax.set_xticks(range(len(grids[0].components)), [c.name for c in grids[0].components])
    ax.axhline(0, color="black", linewidth=0.8)  # a method-of-moments estimate may fall below it
    ax.set(ylabel="variance of test accuracy (pp²)", title="Variance components (95 % intervals)")
    legend_beside(ax)
    return fig


def test_loss_curves(analysis):
    """Runs × epochs test cross-entropy of the runs evaluated every epoch, or None."""
    curves = [r["test_loss_curve"] for r in analysis.rows if r.get("test_loss_curve")]
    return np.array(curves) if len(curves) > 1 else None


def divergence_figure(analyses):
    """How runs drift apart over training: the SD of test cross-entropy per epoch (left) and the
    middle 95 % of it with the median (right), for folders evaluated every epoch."""
    fig, (sd_ax, range_ax) = new_figure(1, 2, figsize=(11, 4))
    for a in analyses:
        curves = test_loss_curves(a)
        if curves is None:
            continue
        epochs = np.arange(1, curves.shape[1] + 1)
        # SD is shift-invariant; measured from the first run, identical runs give exactly 0
        sd_ax.plot(epochs, (curves - curves[0]).std(0, ddof=1), "o-", label=a.folder.name, gid=a.name)
        low, median, high = np.percentile(curves, [2.5, 50, 97.5], axis=0)
        range_ax.fill_between(epochs, low, high, alpha=0.25)
        range_ax.plot(epochs, median, label=a.folder.name)
    for ax in (sd_ax, range_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    log_axis(sd_ax.yaxis)
    sd_ax.set(xlabel="epoch", ylabel="SD of test cross-entropy (nats)", title="Divergence over training")
    range_ax.set(xlabel="epoch", ylabel="test cross-entropy (nats)", title="Median and middle 95 % of runs")
    legend_beside(range_ax)
    return fig


def analysis_figures(analyses, setting=None):
    """The report's figures by name; `setting` (name, values) where the folders differ in one number."""
    figures = {"accuracy": accuracy_figure(analyses), "sd": sd_figure(analyses),
               "ensembles": ensemble_figure(analyses), "per_example": per_example_figure(analyses),
               "binomial": binomial_figure(analyses)}
    if setting:
        figures["sd_by_setting"] = sd_figure(analyses, setting)
    if any(a.components for a in analyses):
        figures["components"] = components_figure(analyses)
    if any(test_loss_curves(a) is not None for a in analyses):
        figures["divergence"] = divergence_figure(analyses)
    return figures
