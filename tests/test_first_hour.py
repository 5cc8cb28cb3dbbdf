"""What a new user meets in the first hour: an honest start, threads on record, no wasted padding,
the seed's exp2 order, the seed's loss averaging, and every failure one line."""
import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastvar import Study, cli, launch, progress, runner as study_module
from fastvar.analysis.export import export
from fastvar.engine.replicas import Replicas
from fastvar.analysis.compute import analyze_folder
from fastvar.sources import DataOrder, run_seeds
from fastvar.store import Store
from fastvar.augment import normalized
from fastvar.recipes import RECIPES
from fastvar.engine.train import batch_mean_loss, fit
from conftest import ROOT, random_dataset
from test_failures import error_lines, folder_bytes

TINY = ["--width", "4", "--epochs", "1"]


def tiny(data_dir, out, *flags):
    return ["--runs", "2", "--batch-models", "2", *TINY, "--data-dir", str(data_dir), "--out", str(out), *flags]


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_rows_record_threads_and_analyze_names_a_mixed_folder(synthetic_dir, tmp_path, keep_threads, capsys):
    out = tmp_path / "study"
    assert cli.main(tiny(synthetic_dir, out, "--threads", "1")) == 0
    assert cli.main([*tiny(synthetic_dir, out, "--threads", "2"), "--runs", "3"]) == 0
    assert [r["threads"] for r in Store(out).runs()] == [1, 1, 2]
    capsys.readouterr()
    assert cli.main(["analyze", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out} mixes how its runs were trained" in printed and "threads 1 (runs 0–1); threads 2 (run 2)" in printed
    assert analyze_folder(out).metrics["mixed"] == {"threads": {"1": [0, 1], "2": [2]}}
    same = tmp_path / "same"
    assert cli.main(tiny(synthetic_dir, same, "--threads", "1")) == 0
    assert analyze_folder(same).metrics["mixed"] == {}


def test_the_wait_setting_is_the_users_if_set_and_changes_no_result(synthetic_dir, tmp_path):
    assert launch.set_openmp_wait(env := {}) and env == launch.OPENMP_WAIT
    assert not launch.set_openmp_wait(env := {"OMP_WAIT_POLICY": "active"}) and env == {"OMP_WAIT_POLICY": "active"}
    logits = {}
    for name, wait in (("fastvar's", {}), ("spinning", {"OMP_WAIT_POLICY": "active"}),
                       ("passive", {"OMP_WAIT_POLICY": "passive"})):
        env = {k: v for k, v in os.environ.items() if k not in launch.WAIT_VARIABLES}
        out = tmp_path / name
        subprocess.run([sys.executable, str(ROOT / "run.py"), *tiny(synthetic_dir, out)], env={**env, **wait},
                       check=True, capture_output=True)
        with sqlite3.connect(out / "runs.sqlite") as db:
            logits[name] = db.execute("SELECT test_logits FROM runs ORDER BY run_index").fetchall()
    assert logits["fastvar's"] == logits["spinning"] == logits["passive"]
    seen = subprocess.run([sys.executable, "-c", "import fastvar.cli, os; print(os.environ.get('GOMP_SPINCOUNT'))"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert seen == launch.OPENMP_WAIT["GOMP_SPINCOUNT"]


def test_the_start_names_what_will_run(synthetic_dir, tmp_path, capsys):
    assert cli.main(tiny(synthetic_dir, tmp_path / "study", "--strategy", "loop")) == 0
    err = capsys.readouterr().err
    assert f"fastvar: loading CIFAR-10 from {synthetic_dir} ..." in err
    assert (f"fastvar: training 2 of 2 runs of all-random into {tmp_path / 'study'} (0 there already): the seed "
            f"recipe, resnet18 at width 4, 1 epoch of 320 examples (cifar10), on cpu with "
            f"{torch.get_num_threads()} threads, loop strategy (one run at a time, each stored as it finishes), "
            f"float32") in err


def test_a_projection_beyond_a_day_on_a_cpu_shows_a_study_sized_for_it():
    small = cli.small_command("python run.py", Study(experiment="fixed-init"))
    lines = cli.projection_lines(1000, 4.8, "cpu", small)
    assert lines[0] == "fastvar: projected: 1000 runs in about 208 h (4.8 runs/h so far)"
    assert "more than a day on this CPU" in lines[1] and lines[1].endswith(small)
    assert len(cli.projection_lines(1000, 4.8, "cuda", small)) == 1  # a GPU is told the time only
    assert cli.projection_lines(10, 4.8, "cpu", small) == ["fastvar: projected: 10 runs in about 2.1 h (4.8 runs/h so far)"]
    args = cli.build_parser("run.py").parse_args(["train", *small.split()[2:]])  # the hint is a valid command
    assert Study(**cli.study_arguments(args), runs=args.runs).runs == 8 and args.width == 8


def test_runs_per_hour_and_the_eta_come_from_one_estimate(monkeypatch):
    clock = iter([0.0, 10.0, 3610.0, 3620.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    projected = []
    bar = progress.ProgressBar(10, lambda todo: "start", lambda todo, rate: projected.append((todo, rate)) or [])
    bar.update(0, 10)  # training starts
    bar.update(1, 10)  # the first step ends: the estimate starts here
    bar.update(3, 10)  # two runs an hour later
    assert bar.bar.postfix == "2 runs/h, ETA 3.5 h" and projected == [(10, 2.0)]
    bar.close()


def test_a_bare_call_prints_the_usage_and_trains_nothing(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "run.py")], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("usage: python run.py [train]")
    assert cli.MAIN_COMMAND in result.stderr and list(tmp_path.iterdir()) == []


def test_top_level_help_says_train_is_the_default_and_shows_its_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"], prog="fastvar")
    out = capsys.readouterr().out
    assert "`train` is the default subcommand" in out and "--batch-models" in out and "--epoch-order" in out


def test_one_run_prints_no_nan(synthetic_dir, tmp_path, capsys):
    assert cli.main([*tiny(synthetic_dir, tmp_path / "one"), "--runs", "1"]) == 0
    closing = capsys.readouterr().out.strip().splitlines()[-1]
    assert closing.startswith(f"1 run in {tmp_path / 'one'}: test accuracy ") and "±" not in closing


@pytest.mark.parametrize("strategy, built", [("loop", [1]), ("vmap", [3])])
def test_only_vmap_pads_its_last_batch(synthetic_dir, tmp_path, monkeypatch, strategy, built):
    real, sizes = study_module.train_replicas, []

    def counting(data, recipe, seeds, **rest):
        sizes.append(len(seeds))
        return real(data, recipe, seeds, **rest)
    monkeypatch.setattr(study_module, "train_replicas", counting)
    out = tmp_path / strategy
    assert cli.main([*tiny(synthetic_dir, out), "--runs", "1", "--batch-models", "3", "--strategy", strategy]) == 0
    assert sizes == built and [r["batch_models"] for r in Store(out).runs()] == built


def test_the_same_epoch_order_reuses_the_first_permutation():
    same = DataOrder(7, epoch_order="same")
    first = same.epoch(50)
    assert all(torch.equal(same.epoch(50), first) for _ in range(3))
    fresh = DataOrder(7)
    assert torch.equal(fresh.epoch(50), first) and not torch.equal(fresh.epoch(50), first)
    with_onset = DataOrder(7, fixed_order_seed=9, onset_epoch=2, epoch_order="same")
    before = [with_onset.epoch(50) for _ in range(2)]
    after = [with_onset.epoch(50) for _ in range(2)]
    assert torch.equal(before[0], before[1]) and torch.equal(after[0], first) and torch.equal(after[1], first)
    assert torch.equal(before[0], DataOrder(9).epoch(50))


def test_the_seeds_exp2_gives_every_run_one_order_in_every_epoch(tmp_path, monkeypatch):
    drawn = []
    real_epoch = DataOrder.epoch
    monkeypatch.setattr(DataOrder, "epoch", lambda self, n: drawn.append(real_epoch(self, n)) or drawn[-1])
    study = Study(experiment="fixed-order", epoch_order="same", runs=2, width=4, epochs=3)
    study.run(tmp_path / "exp2", data=random_dataset(64, 20))
    assert len(drawn) == 6 and all(torch.equal(p, drawn[0]) for p in drawn)
    assert study.config()["epoch_order"] == "same" and "epoch_order" not in Study().config()


def test_the_seeds_loss_averages_on_a_hand_computed_case(tmp_path):
    logits = torch.randn(300, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(300) % 10
    per_example = F.cross_entropy(logits, labels, reduction="none")
    by_hand = (per_example[:128].mean() + per_example[128:256].mean() + per_example[256:].mean()) / 3
    assert torch.allclose(batch_mean_loss(logits, labels), by_hand, rtol=1e-6)
    assert not torch.allclose(by_hand, per_example.mean(), rtol=1e-4)  # 44 of 300 weigh as much as 128

    # Training: with lr 0 nothing moves, so each batch's loss is the untrained linear model's on it.
    data = random_dataset(5, 10)
    recipe = RECIPES["seed"].replace(model="linear", epochs=2, batch_size=2, lr=0.0)
    seeds = [run_seeds("all-random", 0)]
    replicas = Replicas("linear", [seeds[0].init_seed], dtype=torch.float64)
    curves = fit(replicas, data, recipe, seeds)
    model = replicas.template
    params = {n: p[0] for n, p in replicas.params.items()}
    order = DataOrder(seeds[0].order_seed)
    for epoch in range(2):
        batches = order.epoch(5).split(2)
        losses = [F.cross_entropy(torch.func.functional_call(model, params, (
            normalized(data.x_train, b, recipe, torch.float64),)), data.y_train[b]) for b in batches]
        assert curves["train_loss_batch_mean_curve"][0][epoch] == pytest.approx(sum(losses).item() / 3, rel=1e-12)
        weighted = sum(loss * len(b) for loss, b in zip(losses, batches)) / 5
        assert curves["train_loss_curve"][0][epoch] == pytest.approx(weighted.item(), rel=1e-12)


def test_seed_npy_export_uses_the_seeds_averages_and_says_so(synthetic_dir, tmp_path):
    out = tmp_path / "study"
    assert cli.main(tiny(synthetic_dir, out)) == 0
    rows = Store(out).runs()
    paths, note = export(out, "seed-npy", tmp_path / "new" / "folder")  # a missing folder is created
    arrays = {p.stem: np.load(p) for p in paths}
    assert np.allclose(arrays["test_losses"], [r["test_loss_batch_mean"] for r in rows])
    assert np.allclose(arrays["train_loss_curves"], [r["train_loss_batch_mean_curve"] for r in rows])
    assert "per-batch mean" in note


def test_analyze_writes_into_the_first_folder_only(synthetic_dir, tmp_path, capsys):
    first, second = tmp_path / "a" / "one", tmp_path / "b" / "two"
    for folder in (first, second):
        assert cli.main(tiny(synthetic_dir, folder)) == 0
    before = folder_bytes(tmp_path)
    assert cli.main(["analyze", str(first), str(second), "--json"]) == 0
    assert folder_bytes(tmp_path) == before  # --json writes nothing
    assert cli.main(["analyze", str(first), str(second)]) == 0
    new = set(folder_bytes(tmp_path)) - set(before)
    assert new and all(path.parts[:2] == ("a", "one") for path in new), new
    assert (first / "report.md").is_file()


@pytest.fixture
def read_only():
    """read_only(folder): the folder made read-only by a read-only bind mount over it (root only)."""
    mounted = []

    def make(folder):
        if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode:
            pytest.skip("needs root to bind-mount a folder read-only")
        mounted.append(folder)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        return folder
    yield make
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # lazy: a test's store may hold it open


READ_ONLY_COMMANDS = {  # each as the user types it on a read-only folder; {out}: the folder
    "resume": ["--runs", "3", "--batch-models", "2", *TINY, "--out", "{out}"],
    "train more with --plot": ["--runs", "2", "--batch-models", "2", *TINY, "--out", "{out}", "--plot"],
    "merge": ["merge", "{out}"],
    "analyze": ["analyze", "{out}"],
    "plot": ["plot", "{out}"],
    "export": ["export", "{out}"],
    "export seed-npy": ["export", "{out}", "--format", "seed-npy"],
}


def test_read_only_folders_give_one_line_and_stay_as_they_were(synthetic_dir, tmp_path, read_only, capsys):
    out = tmp_path / "study"
    assert cli.main(["--shard", "0/1", *tiny(synthetic_dir, out), "--runs", "3"]) == 0  # run 2 is left to merge
    assert cli.main(tiny(synthetic_dir, out)) == 0
    stored = folder_bytes(out)
    read_only(out)
    capsys.readouterr()
    assert cli.main(["analyze", str(out), "--json"]) == 0  # reading needs no writing
    assert json.loads(capsys.readouterr().out)["n"] == 2
    for name, flags in READ_ONLY_COMMANDS.items():
        flags = [f.format(out=out) for f in flags]
        code = cli.main([*flags, "--data-dir", str(synthetic_dir)] if flags[0].startswith("--") else flags)
        captured = capsys.readouterr()
        err = error_lines(captured.err)
        assert code == 2 and len(err) == 1 and str(out) in err[0], (name, err)
        assert name != "analyze" or captured.out == ""  # refused before its tables, not after
    assert folder_bytes(out) == stored


def test_a_download_that_fails_says_where_to_put_the_data(tmp_path, capsys):
    empty = tmp_path / "empty"
    assert cli.main(["--runs", "1", *TINY, "--data-dir", str(empty), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[1] == (f"fastvar: no CIFAR-10 in {empty}; downloading http://127.0.0.1:9/cifar-10-python.tar.gz "
                      f"(163 MB, MD5-checked) into it")
    assert len(error_lines("\n".join(err))) == 1 and f"into {empty}" in err[-1] and "cifar10.npz" in err[-1]


def test_the_main_command_fetches_cifar10_where_there_is_none(tmp_path, monkeypatch, capsys):
    """The official archive's layout, served from this machine, fetched, MD5-checked and trained on."""
    import hashlib
    import http.server
    import io
    import pickle
    import tarfile
    import threading
    from fastvar import data as data_module
    rng = np.random.default_rng(0)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name in [*data_module.TRAIN_BATCHES, data_module.TEST_BATCH]:
            batch = pickle.dumps({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                                  b"labels": list(range(10)) * 2}, protocol=2)
            info = tarfile.TarInfo(f"{data_module.FOLDER}/{name}")
            info.size = len(batch)
            tar.addfile(info, io.BytesIO(batch))
    body = archive.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(data_module, "CIFAR10_URL", f"http://127.0.0.1:{server.server_port}/c.tar.gz")
    monkeypatch.setattr(data_module, "CIFAR10_MD5", hashlib.md5(body).hexdigest())
    try:
        root = tmp_path / "data"
        assert cli.main(["--runs", "1", *TINY, "--data-dir", str(root), "--out", str(tmp_path / "s")]) == 0
        assert (root / data_module.ARCHIVE).read_bytes() == body and len(Store(tmp_path / "s").runs()) == 1
        monkeypatch.setattr(data_module, "CIFAR10_MD5", "0" * 32)
        with pytest.raises(data_module.DataError, match="expected 0000"):
            data_module.load_dataset("cifar10", tmp_path / "other", download=True)
        assert list((tmp_path / "other").iterdir()) == []  # a wrong archive is not kept
    finally:
        server.shutdown()
