"""Scale-out: shards under torchrun and SLURM, merge, the lock."""
import os
import subprocess
import sys

import pytest
import torch

from fastvar import cli
from fastvar.cli import shard_from_environment
from fastvar.analysis.load import read_runs
from fastvar.store import Store
from conftest import ROOT

TINY = ["--experiment", "all-random", "--runs", "5", "--batch-models", "2", "--width", "4", "--epochs", "1",
        "--strategy", "loop"]


def test_torchrun_shards_then_merge_equal_one_process(synthetic_dir, tmp_path):
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # torchrun gives each process one thread unless told; CPU convolutions round by thread count
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "run.py"),
                    *TINY, "--data-dir", str(synthetic_dir), "--out", str(sharded)],
                   check=True, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert sorted(p.name for p in sharded.glob("*.sqlite")) == ["runs-shard-0-of-2.sqlite", "runs-shard-1-of-2.sqlite"]
    assert [r["run_index"] for r in Store(sharded, shard=(1, 2)).runs()] == [1, 3]
    assert len(read_runs(sharded)[1]) == 5  # analyze reads the shards as one study before any merge
    assert cli.main(["merge", str(sharded)]) == 0
    assert cli.main([*TINY, "--data-dir", str(synthetic_dir), "--out", str(single)]) == 0
    merged, alone = Store(sharded).runs(), Store(single).runs()
    assert [r["run_key"] for r in merged] == [r["run_key"] for r in alone]
    for a, b in zip(merged, alone):
        assert (a["test_logits"] == b["test_logits"]).all()
    assert cli.main(["merge", str(sharded)]) == 0  # again: every run already there, nothing doubled
    assert len(Store(sharded).runs()) == 5


def test_merge_keeps_identical_duplicates_once_and_reports_conflicts(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "study"
    for shard in ("0/2", "1/2"):
        assert cli.main([*TINY, "--shard", shard, "--data-dir", str(synthetic_dir), "--out", str(out)]) == 0
    assert cli.main([*TINY, "--shard", "0/3", "--data-dir", str(synthetic_dir), "--out", str(out)]) == 0  # overlaps
    capsys.readouterr()
    assert cli.main(["merge", str(out)]) == 0
    assert "2 identical duplicates" in capsys.readouterr().out and len(Store(out).runs()) == 5
    conflicting = tmp_path / "conflict"
    assert cli.main([*TINY, "--shard", "0/2", "--data-dir", str(synthetic_dir), "--out", str(conflicting)]) == 0
    assert cli.main([*TINY, "--shard", "0/3", "--strategy", "vmap", "--batch-models", "1",
                     "--data-dir", str(synthetic_dir), "--out", str(conflicting)]) == 0  # same keys, other rounding
    capsys.readouterr()
    assert cli.main(["merge", str(conflicting)]) == 1
    assert "differ between shards" in capsys.readouterr().err


def test_a_shard_made_with_another_config_is_not_merged(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "study"
    assert cli.main([*TINY, "--shard", "0/2", "--data-dir", str(synthetic_dir), "--out", str(out)]) == 0
    other = [*TINY[:-4], "--epochs", "2", "--strategy", "loop"]
    assert cli.main([*other, "--shard", "1/2", "--data-dir", str(synthetic_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["merge", str(out)]) == 2
    assert "another config" in capsys.readouterr().err and not (out / "runs.sqlite").exists()


def test_a_second_trainer_on_the_same_shard_is_refused(synthetic_dir, tmp_path, capsys):
    from fastvar import Study
    held = Study(runs=1, width=4, epochs=1).run(tmp_path / "busy", data_dir=synthetic_dir)
    held.lock()  # as a trainer holds it while it trains (Study.run lets go when it returns)
    capsys.readouterr()
    assert cli.main([*TINY, "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "busy")]) == 2
    assert "another process is training" in capsys.readouterr().err
    held.close()
    assert cli.main([*TINY, "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "busy")]) == 0


@pytest.mark.parametrize("environ,shard", [
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, (3, 8)),
    ({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "10", "SLURM_ARRAY_TASK_MIN": "10"}, (2, 10)),
    ({}, None)])
def test_shards_from_torchrun_and_slurm(environ, shard):
    assert shard_from_environment(environ) == shard


@pytest.mark.parametrize("value", ["2/2", "1", "a/b", "-1/2"])
def test_malformed_shards_give_one_line_and_exit_2(synthetic_dir, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*TINY, "--shard", value, "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "--shard" in capsys.readouterr().err and not (tmp_path / "x").exists()
