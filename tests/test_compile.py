"""torch.compile of the replica step (forward, loss, backward) and of the stacked optimizer update
computes what eager does: checked in float64, where rounding leaves 1e-12 and any wrong index or
stride shows. One compile on the CPU (about half a minute); the CUDA path where a GPU is present."""
import pytest
import torch
from torch._dynamo.utils import counters

from conftest import random_dataset
from fastvar import cli
from fastvar.replicas import Replicas
from fastvar.sources import run_seeds
from fastvar.store import Store
from fastvar.train import RECIPES, fit


def test_compiled_vmap_step_equals_eager_in_float64():
    data = random_dataset(48, 10)
    recipe = dict(RECIPES["seed"], model="resnet6", epochs=1, batch_size=16)  # 3 Adam steps
    seeds = [run_seeds("all-random", i) for i in range(2)]
    trained = {}
    for compile in (None, "default"):
        replicas = Replicas("resnet6", [s.init_seed for s in seeds], width=4, strategy="vmap", dtype=torch.float64,
                            conv="gemm", compile=compile)
        curves = fit(replicas, data, recipe, seeds)
        trained[compile] = replicas, curves
    (eager, eager_curves), (compiled, compiled_curves) = trained[None], trained["default"]
    assert torch.allclose(torch.tensor(compiled_curves), torch.tensor(eager_curves), rtol=1e-10, atol=0)
    for name, p in eager.params.items():
        assert torch.allclose(compiled.params[name], p, rtol=0, atol=1e-10), name
        assert not torch.equal(p, Replicas("resnet6", [s.init_seed for s in seeds], width=4,
                                           dtype=torch.float64).params[name]) or p.dim() == 1  # it trained
    for name, b in eager.buffers.items():
        assert torch.allclose(compiled.buffers[name].double(), b.double(), rtol=0, atol=1e-10), name
    # The next batch of a study (new replicas, same configuration) reuses the compiled graphs.
    graphs = counters["stats"]["unique_graphs"]
    later = [run_seeds("all-random", i) for i in (2, 3)]
    fit(Replicas("resnet6", [s.init_seed for s in later], width=4, strategy="vmap", dtype=torch.float64,
                 conv="gemm", compile="default"), data, recipe, later)
    assert counters["stats"]["unique_graphs"] == graphs > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA defaults need a GPU")
def test_a_cuda_study_runs_vmap_bf16_mixed_compiled_by_default(synthetic_dir, tmp_path):
    args = ["--experiment", "all-random", "--runs", "2", "--batch-models", "2", "--epochs", "2", "--model", "resnet6",
            "--width", "8", "--device", "cuda", "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "out")]
    assert cli.main(args) == 0
    rows = Store(tmp_path / "out").runs()
    assert [(r["strategy"], r["precision"], r["compiled"]) for r in rows] == [("vmap", "bf16-mixed", 1)] * 2
    assert all(0 <= r["test_acc"] <= 1 and r["test_loss"] < 10 and not r["diverged"] for r in rows)
    assert rows[0]["train_loss_curve"] != rows[1]["train_loss_curve"]
