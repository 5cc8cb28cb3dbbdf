"""The seed study's four plots, from a results folder's rows."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PLOTS = ("train_loss", "train_acc", "test_acc", "test_loss")


def curves_figure(curves, ylabel, title):
    """One thin line per run, the mean over runs, and a ±1 SD band."""
    curves = np.asarray(curves, dtype=float)
    epochs = np.arange(1, curves.shape[1] + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    for curve in curves:
        ax.plot(epochs, curve, color="tab:blue", alpha=0.15, linewidth=0.7, gid="run")
    mean, sd = curves.mean(0), curves.std(0, ddof=1) if len(curves) > 1 else np.zeros(curves.shape[1])
    ax.fill_between(epochs, mean - sd, mean + sd, color="tab:orange", alpha=0.3, label="mean ± SD")
    ax.plot(epochs, mean, color="tab:orange", linewidth=2, label="mean", gid="mean")
    ax.set(xlabel="epoch", ylabel=ylabel, title=f"{title} ({len(curves)} runs)")
    ax.legend()
    return fig


def histogram_figure(values, xlabel, title):
    """Histogram of one value per run, with the mean and ±1 SD marked."""
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(values, bins=min(30, max(5, len(values) // 5)), color="tab:blue", alpha=0.8)
    mean, sd = values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0
    ax.axvline(mean, color="black", label=f"mean {mean:.4g}")
    for edge in (mean - sd, mean + sd):
        ax.axvline(edge, color="black", linestyle="--")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel="runs", title=f"{title} (SD {sd:.3g}, {len(values)} runs)")
    ax.legend()
    return fig


def plot_study(rows, out_dir):
    """Write the four PNGs into `out_dir`; return their paths by plot name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "train_loss": curves_figure([r["train_loss_curve"] for r in rows], "training loss", "Training loss"),
        "train_acc": curves_figure([r["train_acc_curve"] for r in rows], "training accuracy", "Training accuracy"),
        "test_acc": histogram_figure([r["test_acc"] for r in rows], "test accuracy", "Test accuracy"),
        "test_loss": histogram_figure([r["test_loss"] for r in rows], "test loss", "Test loss"),
    }
    paths = {}
    for name, fig in figures.items():
        paths[name] = out_dir / f"{name}.png"
        fig.savefig(paths[name], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return paths
