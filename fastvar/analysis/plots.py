"""The seed study's four plots of one results folder, and the analysis plots of several."""
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PLOTS = ("train_loss", "train_acc", "test_acc", "test_loss")


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
    ax.fill_between(epochs, mean - sd, mean + sd, color="tab:orange", alpha=0.3, label="±1 SD")
    ax.plot(epochs, mean, color="tab:orange", linewidth=2, label="mean", gid="mean")
    ax.plot([], [], color="tab:blue", alpha=0.4, linewidth=0.7, label="one run")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=ylabel, title=f"{title} ({len(curves)} runs)")
    ax.legend()
    return fig


def histogram_figure(values, xlabel, title):
    """Histogram of one value per run, with the mean and ±1 SD marked."""
    values = np.asarray(values, dtype=float)
    fig, ax = new_figure(figsize=(6, 4))
    ax.hist(values, bins=min(30, max(5, len(values) // 5)), color="tab:blue", alpha=0.8)
    mean, sd = values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0
    ax.axvline(mean, color="black", label=f"mean {mean:.4g}")
    for k, edge in enumerate((mean - sd, mean + sd)):
        ax.axvline(edge, color="black", linestyle="--", label=None if k else f"±1 SD ({sd:.3g})")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel="runs", title=f"{title} (SD {sd:.3g}, {len(values)} runs)")
    ax.legend()
    return fig


def plot_study(rows, out_dir, study="results"):
    """Write the four PNGs into `out_dir`, each titled with `study` (experiment and folder); return
    their paths by plot name. Accuracies in percent, as in every other plot and table."""
    percent = lambda key: [np.asarray(r[key]) * 100 for r in rows]  # noqa: E731
    figures = {
        "train_loss": curves_figure([r["train_loss_curve"] for r in rows], "training loss (cross-entropy)",
                                    f"Training loss, {study}"),
        "train_acc": curves_figure(percent("train_acc_curve"), "training accuracy (%)", f"Training accuracy, {study}"),
        "test_acc": histogram_figure(percent("test_acc"), "test accuracy (%)", f"Test accuracy, {study}"),
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


def sd_figure(analyses, setting=None):
    """Accuracy SD ± its bootstrap error per folder, or against the one setting the folders differ in."""
    fig, ax = new_figure(figsize=(1.6 + 1.4 * len(analyses), 4))
    x = setting[1] if setting else range(len(analyses))
    sd = [a.metrics["acc_sd"] * 100 for a in analyses]
    err = [a.metrics["acc_sd_err"] * 100 for a in analyses]
    ax.errorbar(x, sd, yerr=err, fmt="o-" if setting else "o", capsize=4, gid="sd")
    if setting:
        ax.set_xlabel(setting[0])
    else:
        folder_axis(ax, analyses)
    ax.set(ylabel="SD of test accuracy (pp)", title="Run-to-run SD (± bootstrap SD)")
    return fig


def ensemble_figure(analyses):
    """Accuracy of ensembles of disjoint groups of runs against the ensemble's size."""
    fig, ax = new_figure(figsize=(6, 4))
    for a in analyses:
        sizes = sorted(a.metrics["ensembles"], key=int)
        ax.plot([int(s) for s in sizes], [a.metrics["ensembles"][s]["acc"] * 100 for s in sizes], "o-",
                label=a.folder.name, gid=a.name)
    ax.set_xscale("log")
    sizes = sorted({int(s) for a in analyses for s in a.metrics["ensembles"]})
    ax.set_xticks(sizes, [str(s) for s in sizes])  # the sizes themselves, not powers of ten
    ax.minorticks_off()
    ax.set(xlabel="runs in the ensemble", ylabel="test accuracy (%)", title="Ensemble accuracy by size")
    ax.legend()
    return fig


def per_example_figure(analyses):
    """Histogram of per-example accuracy p_i: how many test images every run gets right, none, some."""
    fig, ax = new_figure(figsize=(6, 4))
    for a in analyses:
        ax.hist(a.correct().mean(0), bins=min(20, len(a.rows) + 1), range=(0, 1), histtype="step",
                label=a.folder.name)
    ax.set_yscale("log")
    ax.set(xlabel="fraction of runs that get the example right", ylabel="test examples",
           title="Per-example accuracy")
    ax.legend()
    return fig


def binomial_figure(analyses):
    """Observed accuracy SD against the binomial model's, and the distribution SD left over."""
    fig, ax = new_figure(figsize=(1.6 + 1.4 * len(analyses), 4))
    x = np.arange(len(analyses))
    for k, (key, label) in enumerate((("acc_sd", "observed"), ("binomial_sd", "binomial"),
                                      ("distribution_sd", "distribution"))):
        ax.bar(x + (k - 1) * 0.27, [a.metrics[key] * 100 for a in analyses], 0.27, label=label, gid=key)
    folder_axis(ax, analyses)
    ax.set(ylabel="SD of test accuracy (pp)", title="Observed vs binomial SD")
    ax.legend()
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
    sd_ax.set_yscale("log")
    sd_ax.set(xlabel="epoch", ylabel="SD of test cross-entropy", title="Divergence over training")
    range_ax.set(xlabel="epoch", ylabel="test cross-entropy", title="Median and middle 95 % of runs")
    sd_ax.legend()
    return fig


def analysis_figures(analyses, setting=None):
    """The report's figures by name; `setting` (name, values) where the folders differ in one number."""
    figures = {"accuracy": accuracy_figure(analyses), "sd": sd_figure(analyses),
               "ensembles": ensemble_figure(analyses), "per_example": per_example_figure(analyses),
               "binomial": binomial_figure(analyses)}
    if setting:
        figures["sd_by_setting"] = sd_figure(analyses, setting)
    if any(test_loss_curves(a) is not None for a in analyses):
        figures["divergence"] = divergence_figure(analyses)
    return figures
