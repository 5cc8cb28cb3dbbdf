"""The command line end to end on real CIFAR-10, plots included: what was drawn, not file sizes."""
import numpy as np
from matplotlib.figure import Figure

from fastvar import cli
from fastvar.analysis.plots import PLOTS
from fastvar.store import Store

RUNS = 3


def capture_saved_figures(monkeypatch):
    saved = {}
    original = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        saved[path.stem] = fig
        return original(fig, path, *args, **kwargs)
    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def check_figures(saved, rows, folder):
    assert set(saved) == set(PLOTS)
    for name, key in (("train_loss", "train_loss_curve"), ("train_acc", "train_acc_curve")):
        ax = saved[name].axes[0]
        runs = [line for line in ax.lines if line.get_gid() == "run"]
        assert len(runs) == len(rows)  # one curve per run
        scale = 100 if name == "train_acc" else 1  # accuracy in percent, as everywhere
        for line, row in zip(runs, rows):
            assert np.allclose(line.get_ydata(), np.array(row[key]) * scale)
        mean = next(line for line in ax.lines if line.get_gid() == "mean")
        assert np.allclose(mean.get_ydata(), np.mean([r[key] for r in rows], axis=0) * scale)
        assert all(float(t).is_integer() for t in ax.get_xticks())  # whole epochs
        assert {"mean over runs", "±1 SD over runs", "one run"} <= {t.get_text() for t in ax.get_legend().get_texts()}
    for name, key, scale in (("test_acc", "test_acc", 100), ("test_loss", "test_loss", 1)):
        ax = saved[name].axes[0]
        assert sum(bar.get_height() for bar in ax.patches) == len(rows)  # every run in the histogram
        assert np.isclose(ax.lines[0].get_xdata()[0], np.mean([r[key] for r in rows]) * scale)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(legend) == 2 and legend[0].startswith("mean") and legend[1].startswith("±1 SD")
    for fig in saved.values():
        assert "fixed-init" in fig.axes[0].get_title() and str(folder) in fig.axes[0].get_title()


def test_train_with_plot_then_plot_again(real_data_dir, tmp_path, monkeypatch, capsys):
    saved = capture_saved_figures(monkeypatch)
    out = tmp_path / "fixed-init"
    code = cli.main(["--experiment", "fixed-init", "--runs", str(RUNS), "--batch-models", "2", "--width", "8",
                     "--epochs", "2", "--train-subset", "2000", "--test-subset", "200",
                     "--data-dir", str(real_data_dir), "--out", str(out), "--plot"])
    assert code == 0
    rows = Store(out).runs()
    assert len(rows) == RUNS and all(r["n_test"] == 200 for r in rows)
    accs = np.array([r["test_acc"] for r in rows])
    printed = capsys.readouterr().out.strip().splitlines()
    closing = printed[-1]
    assert printed[-2] == f"4 plots of {RUNS} runs in {out / 'plots'}"
    assert closing.startswith(f"{RUNS} runs in {out}") and f"{accs.mean() * 100:.2f} %" in closing
    assert (accs > 0.2).all()  # real data, 32 steps: well above chance (0.1)
    for name in PLOTS:
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_figures(saved, rows, out)

    saved.clear()
    assert cli.main(["plot", str(out)]) == 0
    check_figures(saved, rows, out)
