"""Every preset varies exactly its sources: seeds stored, a varied source changes the weights, a fixed
one does not; one-ulp, onset, --vary and --fixed-seed."""
import pytest
import torch

from conftest import named_gradients
from fastvar import cli
from fastvar.engine.replicas import Replicas
from fastvar.sources import EXPERIMENTS, run_seeds, perturb_one_ulp
from fastvar.store import Store
from fastvar.store import weights_path

SEED_COLUMNS = {"init": "init_seed", "order": "order_seed", "aug": "aug_seed", "dropout": "dropout_seed",
                "perturb": "perturb_seed"}
EFFECTIVE_ON_CPU = {"init", "order", "aug", "dropout", "perturb"}  # CPU kernels are deterministic
TINY = ["--runs", "2", "--batch-models", "2", "--width", "4", "--epochs", "2", "--save-weights", "2"]


def train(synthetic_dir, out, *args):
    assert cli.main([*TINY, *args, "--data-dir", str(synthetic_dir), "--out", str(out)]) == 0
    return Store(out).runs()


def final_weights(out, row):
    return torch.load(weights_path(out, row["experiment"], row["run_index"]), weights_only=True)


def same_weights(a, b):
    return all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e != "grid"])
def test_each_preset_varies_exactly_its_sources(synthetic_dir, tmp_path, experiment):
    out = tmp_path / experiment
    # summers augments; with dropout, every source is present
    rows = train(synthetic_dir, out, "--recipe", "summers", "--experiment", experiment, "--dropout", "0.2")
    varied = EXPERIMENTS[experiment]
    for source, column in SEED_COLUMNS.items():
        seeds = [r[column] for r in rows]
        if source == "perturb" and source not in varied:
            assert seeds == [None, None]  # no perturbation at all
        else:
            assert (seeds[0] != seeds[1]) == (source in varied), source
    assert [r["kernels_nondeterministic"] for r in rows] == [int("kernels" in varied)] * 2
    identical = same_weights(*(final_weights(out, r) for r in rows))
    assert identical == (not varied & EFFECTIVE_ON_CPU)


def test_deterministic_runs_are_identical_with_loop_and_vmap(synthetic_dir, tmp_path):
    for strategy in ("loop", "vmap"):
        out = tmp_path / strategy
        args = ["--experiment", "deterministic", "--strategy", strategy, "--runs", "3"]
        rows = train(synthetic_dir, out, *args)  # 3 runs in batches of 2: the second batch is padded
        assert all((r["test_logits"] == rows[0]["test_logits"]).all() for r in rows)
        assert all(r["train_loss_curve"] == rows[0]["train_loss_curve"] for r in rows)


@pytest.mark.parametrize("conv", ["auto", "gemm"])  # gemm: the weight laid out in memory as GemmConv2d asks
def test_one_ulp_moves_exactly_one_first_layer_weight_by_one_ulp(conv):
    seeds = [run_seeds("one-ulp", i) for i in range(6)]
    replicas = Replicas("resnet18", [s.init_seed for s in seeds], width=4, conv=conv)
    before = {name: p.clone() for name, p in replicas.params.items()}
    chosen = {}
    for r, s in enumerate(seeds):
        name, index = perturb_one_ulp(replicas.params, r, s.perturb_seed)
        assert name == "conv1.weight"
        chosen[r] = index
    for name, p in replicas.params.items():
        changed = (p != before[name]).flatten(1)
        assert (changed.sum(1) == (1 if name == "conv1.weight" else 0)).all()
        if name == "conv1.weight":  # the index counts elements in row-major order, whatever the layout
            assert changed.nonzero()[:, 1].tolist() == [chosen[r] for r in range(len(seeds))]
    old, new = before["conv1.weight"].flatten(1), replicas.params["conv1.weight"].flatten(1)
    moved = new[old != new]
    up, down = torch.nextafter(old[old != new], torch.tensor(float("inf"))), \
        torch.nextafter(old[old != new], torch.tensor(float("-inf")))
    assert ((moved == up) | (moved == down)).all()  # the adjacent float32, one way or the other
    assert len(set(chosen.values())) > 1  # the element depends on the run


def test_onset_keeps_runs_identical_until_its_epoch(synthetic_dir, tmp_path, capsys):
    for experiment in ("vary-order", "one-ulp"):
        rows = train(synthetic_dir, tmp_path / experiment, "--recipe", "summers", "--experiment", experiment,
                     "--epochs", "3", "--onset-epoch", "2", "--eval-every-epoch")
        a, b = rows
        assert a["train_loss_curve"][:2] == b["train_loss_curve"][:2]
        assert a["test_loss_curve"][:2] == b["test_loss_curve"][:2]
        assert not same_weights(final_weights(tmp_path / experiment, a), final_weights(tmp_path / experiment, b))
    capsys.readouterr()
    assert cli.main([*TINY, "--experiment", "fixed-order", "--onset-epoch", "1", "--data-dir", str(synthetic_dir),
                     "--out", str(tmp_path / "x")]) == 2
    assert "init has no onset" in capsys.readouterr().err


def test_vary_a_set_of_sources_and_the_fixed_seed(synthetic_dir, tmp_path, capsys):
    rows = train(synthetic_dir, tmp_path / "custom", "--vary", "order,perturb")
    assert rows[0]["experiment"] == "vary-order+perturb" and rows[0]["init_seed"] == rows[1]["init_seed"]
    assert rows[0]["order_seed"] != rows[1]["order_seed"] and rows[0]["perturb_seed"] != rows[1]["perturb_seed"]
    zero = train(synthetic_dir, tmp_path / "zero", "--experiment", "fixed-init")
    other = train(synthetic_dir, tmp_path / "seven", "--experiment", "fixed-init", "--fixed-seed", "7")
    assert zero[0]["init_seed"] == run_seeds("fixed-init", 0).init_seed  # folders from before keep their seeds
    assert other[0]["init_seed"] == other[1]["init_seed"] != zero[0]["init_seed"]
    assert [r["order_seed"] for r in zero] == [r["order_seed"] for r in other]  # varied sources unchanged
    capsys.readouterr()
    for bad in (["--vary", "init,colour"], ["--vary", "aug"], ["--experiment", "fixed-init", "--vary", "order"]):
        assert cli.main([*TINY, *bad, "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "bad")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 3 and not (tmp_path / "bad").exists()


def test_vary_kernels_on_the_cpu_says_so_and_gives_identical_runs(synthetic_dir, tmp_path, capsys):
    capsys.readouterr()
    rows = train(synthetic_dir, tmp_path / "kernels", "--experiment", "vary-kernels")
    assert "deterministic" in capsys.readouterr().err
    assert (rows[0]["test_logits"] == rows[1]["test_logits"]).all()
    assert [r["kernels_nondeterministic"] for r in rows] == [1, 1]


@pytest.mark.slow
def test_one_ulp_leaves_a_linear_model_stable_and_not_one_with_a_hidden_layer(real_data_dir, tmp_path):
    """Summers & Dinneen's depth finding on real CIFAR-10: 632 Adam steps (10,000 images, 8 epochs)."""
    sd = {}
    for model in ("linear", "mlp"):  # the MLP at its default 512 hidden units (128 had not diverged yet)
        args = ["--experiment", "one-ulp", "--model", model, "--runs", "3", "--batch-models", "3", "--epochs", "8",
                "--train-subset", "10000", "--data-dir", str(real_data_dir), "--out", str(tmp_path / model)]
        assert cli.main(args) == 0
        sd[model] = torch.tensor([r["test_loss"] for r in Store(tmp_path / model).runs()], dtype=torch.float64).std()
    assert sd["linear"] * 100 <= sd["mlp"] and sd["mlp"] > 1e-5


def test_dropout_is_a_source_of_its_own(synthetic_dir, tmp_path):
    rows = train(synthetic_dir, tmp_path / "dropout", "--experiment", "vary-dropout", "--dropout", "0.5")
    assert rows[0]["dropout_seed"] != rows[1]["dropout_seed"] and rows[0]["init_seed"] == rows[1]["init_seed"]
    a, b = (final_weights(tmp_path / "dropout", r) for r in rows)
    assert not same_weights(a, b)
    fixed = train(synthetic_dir, tmp_path / "fixed", "--experiment", "vary-order", "--dropout", "0.5")
    assert fixed[0]["dropout_seed"] == fixed[1]["dropout_seed"]
    assert train(synthetic_dir, tmp_path / "none", "--experiment", "vary-order")[0]["dropout_seed"] is None


def test_dropout_masks_equal_torch_dropout_statistics_and_follow_their_seed():
    from fastvar.sources import DropoutMasks
    masks = DropoutMasks([1, 2], 0.25, (1000,)).draw(0, 20)
    assert masks.shape == (2, 20, 1000) and set(masks.unique().tolist()) == {0.0, 1 / 0.75}
    assert abs((masks == 0).double().mean().item() - 0.25) < 0.01
    assert torch.equal(DropoutMasks([1], 0.25, (1000,)).draw(0, 20)[0], masks[0])  # replica 0 alone: same masks
    before = DropoutMasks([1, 2], 0.25, (10,), onset_epoch=1, fixed_dropout_seed=5).draw(0, 4)
    assert torch.equal(before[0], before[1])  # before the onset, every run draws the fixed masks


def test_dropout_masks_reach_each_replica_in_both_strategies():
    from fastvar.engine.replicas import Replicas
    x, y = torch.randn(2, 6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (2, 6))
    masks = (torch.rand(2, 6, 8) > 0.5).double() * 2
    grads = {}
    for strategy in ("loop", "vmap"):
        replicas = Replicas("mlp", [0, 0], width=8, strategy=strategy, dtype=torch.float64, dropout=0.5)
        _, _, step = replicas.train_step_grads(x, y, masks)
        grads[strategy] = named_gradients(replicas, step)
        plain = Replicas("mlp", [0, 0], width=8, strategy=strategy, dtype=torch.float64)
        assert torch.equal(replicas.logits(x[0]), plain.logits(x[0]))  # eval mode: no dropout
    for name, g in grads["loop"].items():
        assert torch.allclose(g, grads["vmap"][name], atol=1e-12), name
    assert not torch.equal(grads["loop"]["hidden.0.weight"][0], grads["loop"]["hidden.0.weight"][1])  # own masks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nondeterministic kernels exist only on CUDA")
def test_vary_kernels_on_cuda_gives_runs_that_differ(synthetic_dir, tmp_path):
    args = ["--experiment", "vary-kernels", "--device", "cuda", "--model", "resnet18-cifar", "--width", "16"]
    rows = train(synthetic_dir, tmp_path / "kernels", *args)
    assert rows[0]["init_seed"] == rows[1]["init_seed"] and rows[0]["order_seed"] == rows[1]["order_seed"]
    assert not (rows[0]["test_logits"] == rows[1]["test_logits"]).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA can be had here")
@pytest.mark.parametrize("flags, says", [(["--cuda-graphs", "on"], "--cuda-graphs on needs a CUDA device"),
                                         (["--cuda-graphs", "on", "--device", "cpu"], "--cuda-graphs on needs"),
                                         (["--conv", "implicit"], "--conv implicit runs Triton kernels")])
def test_a_cuda_only_option_without_a_gpu_is_one_line_and_exit_2(synthetic_dir, tmp_path, capsys, flags, says,
                                                                 monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the tests' interpreter would run the kernels on the CPU
    capsys.readouterr()
    assert cli.main([*TINY, *flags, "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and not (tmp_path / "bad").exists()
