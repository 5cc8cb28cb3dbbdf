"""A sweep trained in shards (torchrun, SLURM or --shard): every shard trains its runs into one sweep
folder, the summary and fastvar.results read the unmerged shard files, and merge combines them."""
from fastvar import cli, results
from fastvar.analysis.compare import sweep_summary
from fastvar.store import Store


def test_a_sweep_in_two_shards_summarises_unmerged_and_merges(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    sweep = ["sweep", "--set", "lr=1e-3,2e-3", "--runs-per-point", "4", "--batch-models", "2", "--width", "4",
             "--epochs", "1", "--data-dir", str(synthetic_dir), "--out", str(out)]
    for shard in ("0/2", "1/2"):
        assert cli.main([*sweep, "--shard", shard]) == 0, capsys.readouterr().err
    table, verdict = sweep_summary(out)
    assert "| lr=0.001 | 4 |" in table and "| lr=0.002 | 4 |" in table and "best" in table
    rows = results(out)
    assert len(rows) == 8
    for point in ("lr=0.001", "lr=0.002"):
        assert cli.main(["merge", str(out / point)]) == 0
        assert sorted(r["run_index"] for r in Store(out / point).runs()) == [0, 1, 2, 3]
    whole = tmp_path / "whole"
    assert cli.main([*sweep[:-1], str(whole)]) == 0
    for point in ("lr=0.001", "lr=0.002"):  # a run is its seeds: the loop gives the same logits either way
        merged, single = Store(out / point).runs(), Store(whole / point).runs()
        assert all((a["test_logits"] == b["test_logits"]).all() for a, b in zip(merged, single))
