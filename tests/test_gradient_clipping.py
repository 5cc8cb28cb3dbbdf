"""Gradient-norm clipping per replica (Recipe(clip_grad_norm=...), --clip-grad-norm, sweepable):
each replica's gradient scaled as torch.nn.utils.clip_grad_norm_ scales a lone model's."""
import pytest
import torch

import fastvar
from fastvar import cli
from fastvar.engine.train import clipped
from fastvar.sources import run_seeds
from fastvar.store import Store
from test_custom_models import BATCH, EPOCHS, LayerNormMLP, feature_data, trained_by_hand


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clipped_equals_torchs_clip_grad_norm_on_each_replica(dtype):
    """Fresh random gradients of odd sizes in two parts, one replica unclipped (0), one under its bound."""
    g = torch.Generator().manual_seed(0)
    parts = (torch.randn(4, 37, generator=g, dtype=dtype) * 3, torch.randn(4, 5, generator=g, dtype=dtype))
    bounds = torch.tensor([0.0, 0.5, 100.0, 2.0], dtype=torch.float64)
    out = clipped(parts, bounds)
    for r, bound in enumerate(bounds.tolist()):
        tensors = [p[r].clone() for p in parts]
        if bound:
            leaves = [torch.zeros_like(t, requires_grad=True) for t in tensors]
            for leaf, t in zip(leaves, tensors):
                leaf.grad = t.clone()
            torch.nn.utils.clip_grad_norm_(leaves, bound)
            tensors = [leaf.grad for leaf in leaves]
        tol = 1e-15 if dtype == torch.float64 else 1e-6
        for part, expected in zip(out, tensors):
            assert torch.allclose(part[r], expected, rtol=tol, atol=tol), (r, bound)


def test_a_clipped_study_trains_as_plain_pytorch_with_clip_grad_norm_does(tmp_path):
    data = feature_data()
    for strategy in ("loop", "vmap"):
        study = fastvar.Study(model=LayerNormMLP, runs=2, epochs=EPOCHS, precision="float64", save_weights=2,
                              overrides={"batch_size": BATCH, "clip_grad_norm": 0.05})
        out = tmp_path / strategy
        rows = study.run(out, data=data, execution=fastvar.Execution(batch_models=2, strategy=strategy),
                         progress=False).runs()
        assert [r["clip_grad_norm"] for r in rows] == [0.05, 0.05]
        for row in rows:
            expected = trained_by_hand(LayerNormMLP, data, run_seeds("all-random", row["run_index"]), 0.05)
            unclipped = trained_by_hand(LayerNormMLP, data, run_seeds("all-random", row["run_index"]))
            kept = fastvar.weights(out, row["run_index"])
            assert all(torch.allclose(kept[k], v, rtol=0, atol=1e-10) for k, v in expected.items()), strategy
            assert not all(torch.allclose(kept[k], v, rtol=0, atol=1e-6) for k, v in unclipped.items())
    assert Store(tmp_path / "loop").config["hyperparameters"]["clip_grad_norm"] == 0.05


def test_the_flag_sets_it_and_the_config_records_it(synthetic_dir, tmp_path):
    out = tmp_path / "s"
    assert cli.main(["--model", "linear", "--runs", "1", "--epochs", "1", "--clip-grad-norm", "1.0",
                     "--data-dir", str(synthetic_dir), "--out", str(out), "--no-download"]) == 0
    assert Store(out).config["hyperparameters"]["clip_grad_norm"] == 1.0
    unclipped = fastvar.Study(model="linear", runs=1, epochs=1).config()
    assert "clip_grad_norm" not in unclipped["hyperparameters"]  # off: older folders keep their hash
