"""torch.compile of the replica step (forward, loss, backward) and of the stacked optimizer update
computes what eager does: checked in float64, where rounding leaves 1e-12 and any wrong index or
stride shows. One compile on the CPU (about half a minute); the CUDA path where a GPU is present."""
import pytest
import torch
from torch._dynamo.utils import counters
from torch.func import functional_call, stack_module_state, vmap

from conftest import random_dataset
from fastvar import cli
from fastvar.engine.replicas import Replicas
from fastvar.sources import run_seeds
from fastvar.store import Store
from fastvar.recipes import RECIPES
from fastvar.engine.train import fit
from fastvar.engine.vmap_layers import GemmConv2d


def test_compiled_vmap_step_equals_eager_in_float64():
    data = random_dataset(48, 10)
    recipe = RECIPES["seed"].replace(model="resnet6", epochs=1, batch_size=16)  # 3 Adam steps
    seeds = [run_seeds("all-random", i) for i in range(2)]
    trained = {}
    for compile in (None, "default"):
        replicas = Replicas("resnet6", [s.init_seed for s in seeds], width=4, strategy="vmap", dtype=torch.float64,
                            conv="gemm", compile=compile)
        curves = fit(replicas, data, recipe, seeds)
        trained[compile] = replicas, curves
    (eager, eager_curves), (compiled, compiled_curves) = trained[None], trained["default"]
    assert torch.allclose(torch.tensor(list(compiled_curves.values())), torch.tensor(list(eager_curves.values())),
                          rtol=1e-10, atol=0)
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


def test_compiled_unrolled_convs_under_vmap_equal_eager_in_float64():
    """The unrolled GEMM convolutions (images of fewer than k² pixels: the seed model's last stages,
    which CUDA's vmap path compiles) through torch.compile, forward and gradients."""
    for size, stride in ((2, 1), (1, 2)):  # the general unrolled form; one pixel to one
        torch.manual_seed(size)
        convs = [torch.nn.Conv2d(4, 6, 3, stride=stride, padding=1, dtype=torch.float64) for _ in range(3)]
        params = {n: p.requires_grad_() for n, p in stack_module_state(convs)[0].items()}
        template = torch.nn.Conv2d(4, 6, 3, stride=stride, padding=1, dtype=torch.float64, device="meta")
        template.__class__ = GemmConv2d
        x = torch.randn(3, 5, 4, size, size, dtype=torch.float64)

        def forward(p, x):
            return vmap(lambda p, xi: functional_call(template, p, (xi,)))(p, x)
        outputs = [fn(params, x) for fn in (forward, torch.compile(forward, dynamic=False))]
        assert torch.allclose(outputs[1], outputs[0], rtol=0, atol=1e-12)
        grads = [torch.autograd.grad(out.square().sum(), list(params.values())) for out in outputs]
        assert all(torch.allclose(c, e, rtol=0, atol=1e-12) for e, c in zip(*grads))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA defaults need a GPU")
def test_a_cuda_study_runs_vmap_bf16_mixed_compiled_by_default(synthetic_dir, tmp_path):
    args = ["--experiment", "all-random", "--runs", "2", "--batch-models", "2", "--epochs", "2", "--model", "resnet6",
            "--width", "8", "--device", "cuda", "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "out")]
    assert cli.main(args) == 0
    rows = Store(tmp_path / "out").runs()
    assert [(r["strategy"], r["precision"], r["compiled"]) for r in rows] == [("vmap", "bf16-mixed", 1)] * 2
    assert all(0 <= r["test_acc"] <= 1 and r["test_loss"] < 10 and not r["diverged"] for r in rows)
    assert rows[0]["train_loss_curve"] != rows[1]["train_loss_curve"]
