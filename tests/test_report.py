"""analyze, compare and export on folders made by tiny real studies; grids and their variance components."""
import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fastvar import cli
from fastvar.analysis.compare import run_seeds_key
from fastvar.analysis.compute import analyze_folder
from fastvar.analysis.plots import analysis_figures
from fastvar.analysis.stats import variance_components
from fastvar.store import Store

TINY = ["--runs", "4", "--batch-models", "2", "--width", "8", "--epochs", "1", "--train-subset", "1000",
        "--test-subset", "200"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")  # figures built by the tests themselves


@pytest.fixture(scope="module")
def folders(real_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    for experiment in ("all-random", "fixed-init"):
        keep = ["--save-weights", "2"] if experiment == "all-random" else []
        assert cli.main(["--experiment", experiment, *TINY, *keep, "--data-dir", str(real_data_dir),
                         "--out", str(root / experiment)]) == 0
    return root


def test_analyze_json_agrees_with_the_stored_runs(folders, capsys):
    capsys.readouterr()
    assert cli.main(["analyze", str(folders / "all-random"), str(folders / "fixed-init"), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ("all-random", "fixed-init")):
        result = json.loads(line)
        rows = Store(folders / name).runs()
        assert result["n"] == len(rows) == 4
        assert result["acc_mean"] == pytest.approx(np.mean([r["test_acc"] for r in rows]))
        assert result["acc_sd"] == pytest.approx(np.std([r["test_acc"] for r in rows], ddof=1))
        for key in ("acc_sd_err", "ce_mean", "ce_sd", "ce_sd_err", "disagreement", "spearman", "ensemble_gain",
                    "binomial_sd", "distribution_sd", "ensemble_acc", "ece"):
            assert isinstance(result[key], float), key
        assert 0 < result["disagreement"] < 1 and 0 < result["spearman"] < 1
        assert set(result["runs_per_arm"]) == {"0.05", "0.1", "0.2", "0.5"}
    assert not (folders / "report.md").exists() and not (folders / "all-random" / "report.md").exists()  # --json
    assert cli.main(["analyze", str(folders / "all-random"), str(folders / "fixed-init")], prog="python run.py") == 0
    report = folders / "all-random" / "report.md"  # the first folder's
    text = report.read_text()
    assert f"| {folders / 'all-random'} |" in text and "Runs needed per arm" in text
    assert "`python run.py analyze " in text
    for name in ("accuracy", "sd", "ensembles", "per_example", "binomial"):
        assert (folders / "all-random" / "report_plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_plots_draw_what_was_measured(folders):
    analyses = [analyze_folder(folders / name) for name in ("all-random", "fixed-init")]
    figures = analysis_figures(analyses)
    points = [line for line in figures["accuracy"].axes[0].lines if line.get_gid() == "runs-1"]
    assert np.allclose(sorted(points[0].get_ydata()), sorted(r["test_acc"] * 100 for r in analyses[1].rows))
    bars = [p for p in figures["binomial"].axes[0].patches if p.get_gid() == "binomial_sd"]
    assert [b.get_height() for b in bars] == pytest.approx([a.metrics["binomial_sd"] * 100 for a in analyses])


def test_plots_draw_every_interval_and_keep_legends_off_the_data(folders):
    analyses = [analyze_folder(folders / name) for name in ("all-random", "fixed-init")]
    figures = analysis_figures(analyses, ("hyperparameters.optimizer.lr", [1e-4, 1e-2]))
    binomial = figures["binomial"].axes[0]
    tops = sorted(seg[1][1] for c in binomial.collections for seg in c.get_segments())  # error bars' upper ends
    expected = [a.metrics[k] * 100 for a in analyses for k in ("distribution_sd_high",)]
    expected += [(a.metrics["acc_sd"] + a.metrics["acc_sd_err"]) * 100 for a in analyses]
    assert tops == pytest.approx(sorted(expected))
    for name in ("binomial", "ensembles", "per_example"):  # the legend sits right of the axes
        figure = figures[name]
        figure.canvas.draw()
        legend, axes = figure.axes[0].get_legend().get_window_extent(), figure.axes[0].get_window_extent()
        assert legend.x0 >= axes.x1, name
    ensemble_bars = [c for c in figures["ensembles"].axes[0].collections if c.get_segments()]
    assert ensemble_bars  # ± SD over disjoint groups where there are two
    assert figures["sd"].axes[0].get_ylim()[0] == 0 and figures["binomial"].axes[0].get_ylim()[0] == 0
    per_example = figures["per_example"].axes[0]
    figures["per_example"].canvas.draw()
    labels = [t.get_text() for t in per_example.get_yticklabels() if t.get_text()]
    assert len(labels) >= 3 and all(t.replace(",", "").isdigit() for t in labels)
    analyses[1].components = variance_components(np.random.default_rng(0).normal(0.5, 0.01, (3, 4)))
    bars = analysis_figures(analyses)["components"].axes[0]
    tops = sorted(seg[1][1] for c in bars.collections for seg in c.get_segments())
    assert tops == pytest.approx(sorted(c.high * 1e4 for c in analyses[1].components))  # pp², 95 % intervals
    by_setting = figures["sd_by_setting"].axes[0]
    assert by_setting.get_xscale() == "log" and by_setting.get_xlabel() == "learning rate"
    assert [t.get_text() for t in by_setting.get_xticklabels()] == ["0.0001", "0.01"]


def test_cka_of_runs_with_saved_weights(folders, real_data_dir, capsys):
    assert sorted(p.name for p in (folders / "all-random" / "weights").iterdir()) == \
        ["all-random-000000.pt", "all-random-000001.pt"]
    assert cli.main(["analyze", str(folders / "all-random"), "--cka", "--data-dir", str(real_data_dir)]) == 0
    out = capsys.readouterr().out
    assert "Linear CKA" in out and "| stage3 |" in out and "| logits |" in out


def test_compare_gives_welch_and_the_paired_test(folders, capsys):
    capsys.readouterr()
    assert cli.main(["compare", str(folders / "all-random"), str(folders / "all-random")]) == 0
    out = capsys.readouterr().out
    assert "Welch's t-test" in out and "paired t-test over 4 runs with the same seeds: p = 1" in out
    assert cli.main(["compare", str(folders / "all-random"), str(folders / "fixed-init")]) == 0
    assert "no paired test" in capsys.readouterr().out  # no run shares all its seeds across the two


def test_export_npz_and_seed_npy(folders):
    folder = folders / "fixed-init"
    rows = Store(folder).runs()
    assert cli.main(["export", str(folder)]) == 0
    npz = np.load(folder / "logits.npz")
    assert npz["logits"].shape == (4, 200, 10) and npz["logits"].dtype == np.float16
    assert (npz["logits"].astype(np.float32) == np.stack([r["test_logits"] for r in rows])).all()
    assert (npz["labels"] == Store(folder).labels()).all() and (npz["aug_seed"] == -1).all()
    assert (npz["init_seed"] == rows[0]["init_seed"]).all()  # fixed-init
    assert cli.main(["export", str(folder), "--format", "seed-npy", "--out", str(folders / "npy")]) == 0
    accs = np.load(folders / "npy" / "test_accs.npy")
    assert accs == pytest.approx([r["test_acc"] * 100 for r in rows])
    assert np.load(folders / "npy" / "train_acc_curves.npy").shape == (4, 1)


def test_a_grid_study_gives_variance_components(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "grid"
    args = ["--grid", "3x2", "--batch-models", "3", "--width", "4", "--epochs", "1", "--data-dir", str(synthetic_dir),
            "--out", str(out)]
    assert cli.main(args) == 0
    rows = Store(out).runs()
    assert len(rows) == 6 and rows[0]["experiment"] == "grid"
    assert len({r["init_seed"] for r in rows}) == 3 and len({r["order_seed"] for r in rows}) == 2
    capsys.readouterr()
    assert cli.main(["analyze", str(out), "--json"]) == 0
    components = json.loads(capsys.readouterr().out)["components"]
    assert [c["name"] for c in components] == ["init", "order", "rest"]
    assert all(c["low"] <= c["high"] for c in components)


@pytest.mark.parametrize("args,message", [
    (["--grid", "3x2", "--runs", "5"], "has 6 runs"),
    (["--experiment", "grid"], "--grid"),
    (["--grid", "1x4"], "at least 2"),
    (["--experiment", "fixed-init", "--save-weights", "-1"], "--save-weights"),
])
def test_impossible_grids_give_one_line_and_exit_2(synthetic_dir, tmp_path, capsys, args, message):
    assert cli.main([*args, "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x").exists()


def test_analyze_and_compare_refuse_what_they_cannot_read(tmp_path, folders, capsys):
    assert cli.main(["analyze", str(tmp_path / "nothing")]) == 2
    assert cli.main(["analyze", str(folders / "fixed-init"), "--cka"]) == 2  # no weights kept there
    assert cli.main(["compare", str(folders / "fixed-init"), str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "no results" in err[0] and "--save-weights" in err[1]


def test_eval_every_epoch_stores_test_curves_and_changes_no_result(synthetic_dir, tmp_path):
    common = ["--runs", "3", "--batch-models", "3", "--width", "4", "--epochs", "2", "--data-dir", str(synthetic_dir)]
    assert cli.main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert cli.main([*common, "--eval-every-epoch", "--out", str(tmp_path / "curves")]) == 0
    plain, curves = Store(tmp_path / "plain").runs(), Store(tmp_path / "curves").runs()
    for p, c in zip(plain, curves):
        assert (p["test_logits"] == c["test_logits"]).all() and p["train_loss_curve"] == c["train_loss_curve"]
        assert p["test_acc_curve"] is None and len(c["test_acc_curve"]) == len(c["test_loss_curve"]) == 2
        assert c["test_acc_curve"][-1] == c["test_acc"] and c["test_loss_curve"][-1] == c["test_loss"]
    figures = analysis_figures([analyze_folder(tmp_path / "curves")])
    sd_line = figures["divergence"].axes[0].lines[0]
    assert np.allclose(sd_line.get_ydata(), np.std([c["test_loss_curve"] for c in curves], axis=0, ddof=1))
    assert "divergence" not in analysis_figures([analyze_folder(tmp_path / "plain")])


def test_snapshots_store_every_cycle_and_one_cycle_is_the_plain_cosine(synthetic_dir, tmp_path, capsys):
    common = ["--recipe", "resnet18-cifar", "--runs", "2", "--batch-models", "2", "--width", "4", "--epochs", "2",
              "--data-dir", str(synthetic_dir)]
    assert cli.main([*common, "--out", str(tmp_path / "cosine")]) == 0
    assert cli.main([*common, "--snapshots", "1", "--out", str(tmp_path / "one")]) == 0
    assert cli.main([*common, "--snapshots", "2", "--out", str(tmp_path / "two")]) == 0
    cosine, one = Store(tmp_path / "cosine").runs(), Store(tmp_path / "one")
    for plain, cycled in zip(cosine, one.runs()):
        assert (plain["test_logits"] == cycled["test_logits"]).all()
    two = Store(tmp_path / "two")
    snapshots = two.snapshots()
    for row in two.runs():
        assert snapshots[row["run_key"]].shape == (2, row["n_test"], 10)
        assert (snapshots[row["run_key"]][-1] == row["test_logits"]).all()  # the last cycle ends the run
    assert not (snapshots[two.runs()[0]["run_key"]][0] == two.runs()[0]["test_logits"]).all()
    capsys.readouterr()
    assert cli.main(["analyze", str(tmp_path / "two")]) == 0
    assert "Snapshot ensembles" in capsys.readouterr().out
    assert cli.main([*common, "--snapshots", "3", "--out", str(tmp_path / "three")]) == 2  # 2 epochs, 3 cycles
    assert "whole cycles" in capsys.readouterr().err


def test_compare_pairs_run_k_with_run_k_even_where_only_the_perturbation_differs(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "one-ulp"  # every seed but the perturbation's is shared: pairs must not collapse onto one
    assert cli.main(["--experiment", "one-ulp", "--runs", "3", "--batch-models", "3", "--width", "4", "--epochs", "2",
                     "--data-dir", str(synthetic_dir), "--out", str(out)]) == 0
    rows = Store(out).runs()
    assert len({(r["init_seed"], r["order_seed"], r["aug_seed"]) for r in rows}) == 1
    assert len({run_seeds_key(r) for r in rows}) == 3  # one pair per run
    capsys.readouterr()
    assert cli.main(["compare", str(out), str(out)]) == 0
    assert "paired t-test over 3 runs" in capsys.readouterr().out


def test_the_accuracy_histogram_gives_its_sd_in_percentage_points():
    from fastvar.analysis.plots import histogram_figure
    figure = histogram_figure([46.0, 47.0, 48.0], "test accuracy (%)", "Test accuracy", " %", " pp")
    ax = figure.axes[0]
    assert ax.get_title() == "Test accuracy (SD 1 pp, 3 runs)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mean 47 %", "±1 SD (1 pp)"]
