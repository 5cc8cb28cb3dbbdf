"""The library in a notebook (issue 22, part 3) and the command line's manners (part 4, in part):
nothing process-wide changes behind a library call, a finished run lets go of its folder, flags are
never abbreviated, and a closed pipe ends quietly."""
import subprocess
import sys

import pytest

from conftest import ROOT
from fastvar import Execution, FastvarError, Study, Sweep, cli
from fastvar.data import load_arrays

TINY = ["--runs", "1", "--width", "2", "--epochs", "1"]


def test_importing_and_plotting_leave_matplotlibs_backend_alone(tmp_path):
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "import matplotlib; matplotlib.use('svg')\n"
              "import fastvar, fastvar.analysis, fastvar.analysis.plots as plots\n"
              "fig, ax = plots.new_figure(figsize=(2, 2)); ax.plot([0, 1])\n"
              f"plots.save_figures({{'one': fig}}, {str(tmp_path)!r})\n"
              "print(matplotlib.get_backend())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "svg"
    assert (tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"


def test_a_study_lets_go_of_its_folder_when_it_returns(synthetic_dir, tmp_path):
    first = Study(runs=1, width=2, epochs=1).run(tmp_path / "nb", data_dir=synthetic_dir)
    second = Study(runs=2, width=2, epochs=1).run(tmp_path / "nb", data_dir=synthetic_dir)  # same process
    assert [r["run_index"] for r in second.runs()] == [0, 1] and len(first.runs()) == 2


def test_only_the_command_line_keeps_freed_memory(synthetic_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("fastvar.native.retain_freed_memory", lambda: calls.append(1))
    Study(runs=1, width=2, epochs=1).run(tmp_path / "lib", data_dir=synthetic_dir)
    assert calls == []
    assert cli.main([*TINY, "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "cli")]) == 0
    assert calls == [1]


def test_an_abbreviated_flag_is_refused_in_one_line(synthetic_dir, tmp_path, capsys):
    try:
        cli.main([*TINY, "--batch", "8", "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "x")])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--batch" in err[0] and not (tmp_path / "x").exists()


def test_a_closed_pipe_ends_quietly(synthetic_dir, tmp_path):
    assert cli.main([*TINY, "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "a")]) == 0
    reader = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "analyze", str(tmp_path / "a")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # the reader leaves before the first line (torch is still loading): every print fails
    err = reader.stderr.read().decode()
    assert reader.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_the_recipes_numbers_on_the_command_line(synthetic_dir, tmp_path, capsys):
    from fastvar.store import Store
    out = tmp_path / "lr"
    flags = [*TINY, "--lr", "0.002", "--batch-size", "32", "--weight-decay", "0.01", "--label-smoothing", "0.1",
             "--data-dir", str(synthetic_dir), "--out", str(out)]
    assert cli.main(flags) == 0
    start = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("fastvar: training"))
    assert "the seed recipe with lr 0.002, weight decay 0.01, label smoothing 0.1, batch size 32," in start
    row = Store(out).runs()[0]
    assert (row["lr"], row["batch_size"], row["weight_decay"], row["label_smoothing"]) == (0.002, 32, 0.01, 0.1)
    assert cli.main([*TINY, "--data-dir", str(synthetic_dir), "--out", str(out)]) == 2  # another config
    assert "another config" in capsys.readouterr().err


def test_flags_the_data_would_ignore_are_refused(synthetic_dir, tmp_path, capsys):
    for flag in (["--dataset", "mnist"], ["--train-subset", "10"], ["--data-dir", str(synthetic_dir)]):
        code = cli.main([*TINY, *flag, "--data", str(synthetic_dir / "cifar10.npz"), "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and flag[0] in err[0] and "--data" in err[0], err
    assert not (tmp_path / "x").exists()


def test_a_malformed_npz_names_the_arrays_it_holds(tmp_path, capsys):
    import numpy as np
    np.savez(tmp_path / "mine.npz", images=np.zeros((2, 4), np.float32), labels=np.zeros(2, np.int64))
    assert cli.main([*TINY, "--data", str(tmp_path / "mine.npz"), "--out", str(tmp_path / "x")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "no x_train, y_train, x_test, y_test (it holds images, labels;" in err[0], err


def test_the_report_opens_with_what_was_trained(synthetic_dir, tmp_path):
    out = tmp_path / "r"
    assert cli.main(["--runs", "2", "--width", "2", "--epochs", "1", "--experiment", "fixed-init", "--lr", "0.002",
                     "--train-subset", "100", "--data-dir", str(synthetic_dir), "--out", str(out)]) == 0
    assert cli.main(["analyze", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert report.splitlines()[4] == "## What was trained"  # after the title and the command
    header, _, row = report.split("## What was trained\n\n")[1].splitlines()[:3]
    assert header.startswith("| folder | experiment | recipe | model | data | epochs | runs |")
    for expected in (str(out), "fixed-init (varies kernels, order)", "seed: adam lr 0.002; batch 128",
                     "resnet18 width 2", "cifar10: 100 training, 100 test, 10 classes", "| 1 | 2 | float32 |",
                     "cpu, loop"):
        assert expected in row, (expected, row)


@pytest.mark.parametrize("make, api, flag", [
    (lambda: Study(runs=0), "runs must be at least 1", "--runs must be at least 1"),
    (lambda: Study(snapshots=3, epochs=4), "snapshots=3 must divide", "--snapshots 3 must divide"),
    (lambda: Study(experiment="fixed-init", vary=("init",)), "experiment and vary both", "--experiment and --vary both"),
    (lambda: Execution(cuda_graphs="on", strategy="loop"), "cuda_graphs='on' needs", "--cuda-graphs on needs"),
    (lambda: Execution(batch_models=0), "batch_models must be", "--batch-models must be"),
    (lambda: Sweep({"lr": [1e-3]}, runs_per_point=1), "runs_per_point must be", "--runs-per-point must be"),
    (lambda: load_arrays("no-such.npz"), "; path takes an npz", "; --data takes an npz"),
])
def test_errors_name_the_apis_parameters_and_the_command_lines_flags(make, api, flag):
    with pytest.raises(FastvarError) as raised:
        make()
    assert api in str(raised.value) and "--" not in str(raised.value)
    assert flag in raised.value.on_command_line()


def test_the_command_line_names_its_flags(capsys):
    assert cli.main(["train", "--runs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "fastvar: error: --runs must be at least 1, not 0"


def test_a_study_shows_a_bar_unless_told_not_to(synthetic_dir, tmp_path, capsys):
    Study(runs=2, width=2, epochs=1).run(tmp_path / "bar", data_dir=synthetic_dir, execution=Execution(batch_models=1))
    err = capsys.readouterr().err
    assert f"all-random in {tmp_path / 'bar'}" in err and "2.0/2 runs" in err, err
    Study(runs=3, width=2, epochs=1).run(tmp_path / "bar", data_dir=synthetic_dir, progress=False)
    assert capsys.readouterr().err == ""
    calls = []
    Study(runs=4, width=2, epochs=1).run(tmp_path / "bar", data_dir=synthetic_dir,
                                         progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 1) and calls[-1] == (1, 1) and capsys.readouterr().err == ""


def test_every_public_name_loads_and_editors_see_each_one():
    import ast
    import fastvar
    tree = ast.parse((ROOT / "fastvar" / "__init__.py").read_text())
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
    seen = {alias.asname or alias.name for node in guarded.body for alias in node.names}
    assert seen == set(fastvar.__all__)
    assert all(getattr(fastvar, name) is not None for name in fastvar.__all__)
    assert not hasattr(fastvar, "load_cifar10")  # one loader: load_dataset
