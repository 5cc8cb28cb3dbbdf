"""Fine-tuning: a factory that loads a stored run's weights (fastvar.weights) and freezes its backbone;
the frozen parameters are never updated (bit for bit, both strategies), the new head trains as plain
PyTorch trains it from the run's seeds (float64), and each run is scored on two more test sets as the
plain model scores them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastvar
from fastvar import cli
from fastvar.sources import run_seeds
from fastvar.store import Store, run_key, weights_path

PRETRAINED = {}  # the path of the backbone a fine-tuning factory loads (set by each test)


class Net(nn.Module):
    """A convolutional backbone (with GroupNorm) and a linear head."""

    def __init__(self, classes=3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.GroupNorm(2, 6), nn.ReLU(),
                                      nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(8 * 2 * 2, classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def fine_tuned():
    """The pretrained backbone, frozen, under a new 2-class head (drawn from the run's init seed)."""
    net = Net()
    net.load_state_dict(torch.load(PRETRAINED["path"], weights_only=True))
    net.backbone.requires_grad_(False)
    net.head = nn.Linear(8 * 2 * 2, 2)
    return net


def images(n, classes, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % classes


def datasets():
    """The pretraining data, and the fine-tuning data with an eval set of its own ('later')."""
    (x, y), (xt, yt) = images(48, 3, 0), images(12, 3, 1)
    (u, v), (ut, vt) = images(40, 2, 2), images(10, 2, 3)
    return (fastvar.Dataset.from_arrays(x, y, xt, yt),
            fastvar.Dataset.from_arrays(u, v, ut, vt, eval_sets={"later": images(9, 2, 4)}))


def as_input(images):
    return ((images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5).double()  # normalised in float32, as fastvar does


def head_by_hand(data, seeds, epochs=2, batch=16):
    """The fine-tuning run in plain PyTorch: built under its init seed, the head alone in torch.optim.Adam
    (weight decay 0.1, which would move a frozen parameter that reached the update). Returns the model."""
    torch.manual_seed(seeds.init_seed)
    model = fine_tuned().double()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
    order = torch.Generator().manual_seed(seeds.order_seed)
    x = as_input(data.x_train)
    for _ in range(epochs):
        for b in torch.randperm(len(x), generator=order).split(batch):
            loss = F.cross_entropy(model(x[b]), data.y_train[b])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


@pytest.fixture
def pretrained(tmp_path):
    source, _ = datasets()
    fastvar.Study(model=Net, runs=1, epochs=2, save_weights=1,  # float32, as the factory's Net() loads it
                  overrides={"batch_size": 16}).run(tmp_path / "pretrain", data=source, progress=False)
    PRETRAINED["path"] = weights_path(tmp_path / "pretrain", "all-random", 0)
    return tmp_path / "pretrain"


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_a_frozen_backbone_stays_as_loaded_and_the_head_trains_as_by_hand(pretrained, strategy, tmp_path):
    _, target = datasets()
    backbone = {k: v.double() for k, v in fastvar.weights(pretrained, 0).items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(v, torch.load(PRETRAINED["path"])[k].double()) for k, v in backbone.items())
    study = fastvar.Study(experiment="fixed-init", model=fine_tuned, runs=3, epochs=2, precision="float64",
                          save_weights=3, overrides={"batch_size": 16, "weight_decay": 0.1}, eval_shift=True)
    out = tmp_path / strategy
    study.run(out, data=target, execution=fastvar.Execution(batch_models=2, strategy=strategy), progress=False)
    evals, sets = Store(out).evals(), target.with_shift().eval_sets
    assert list(evals) == ["later", "shift"]
    for i in range(3):
        stored = fastvar.weights(out, i)
        assert all(torch.equal(stored[k], v) for k, v in backbone.items())  # weight decay left them too
        by_hand = head_by_hand(target, run_seeds("fixed-init", i))
        for name in ("head.weight", "head.bias"):
            assert torch.allclose(stored[name], by_hand.state_dict()[name], rtol=0, atol=1e-10), (strategy, i, name)
        for name, (x, y) in sets.items():  # scored as the plain model scores them (losses from float32 logits)
            logits = by_hand.eval()(as_input(x)).float()
            on_set = evals[name][run_key("fixed-init", i)]
            assert abs(on_set["test_loss"] - F.cross_entropy(logits, y, reduction="none").double().mean().item()) < 1e-6
            assert on_set["test_acc"] == (logits.argmax(1) == y).double().mean().item()
    (analysis,) = fastvar.analyze(out)
    assert [analysis.eval_sets[n]["n"] for n in ("later", "shift")] == [3, 3]
    heads = [fastvar.weights(out, i)["head.weight"] for i in range(3)]
    assert not torch.equal(heads[0], heads[1])  # fixed-init: one head init, another order each run
    with pytest.raises(fastvar.StoreError, match="keeps no weights of run 5"):
        fastvar.weights(out, 5)


def test_fine_tuning_runs_from_the_command_line(pretrained, tmp_path, monkeypatch):
    _, target = datasets()
    npz = tmp_path / "target.npz"
    x_later, y_later = target.eval_sets["later"]
    np.savez(npz, **{k: getattr(target, k).numpy() for k in ("x_train", "y_train", "x_test", "y_test")},
             x_eval_later=x_later.numpy(), y_eval_later=y_later.numpy())
    out = tmp_path / "cli"
    assert cli.main(["--data", str(npz), "--model", f"{__name__}:fine_tuned", "--runs", "2", "--epochs", "1",
                     "--batch-size", "16", "--save-weights", "2", "--eval-shift", "--out", str(out)]) == 0
    loaded = torch.load(PRETRAINED["path"], weights_only=True)
    stored = fastvar.weights(out, 1)
    assert all(torch.equal(stored[k], loaded[k]) for k in loaded if k.startswith("backbone."))
    assert {name: len(by_run) for name, by_run in Store(out).evals().items()} == {"later": 2, "shift": 2}


def test_the_fine_tuning_example_runs(real_data_dir, tmp_path):
    import os
    import subprocess
    import sys
    from conftest import ROOT
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "fine_tune.py"), str(tmp_path / "ft"), "2"],
                          capture_output=True, text=True, env=dict(os.environ, FASTVAR_DATA=str(real_data_dir)),
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [[e, s] for e in ("fixed-init", "fixed-order", "all-random")
                                                   for s in ("test", "shift")]
    assert all("2 runs: accuracy" in line for line in lines)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_a_frozen_backbone_trains_in_mixed_precision_and_is_stored_as_loaded(pretrained, strategy, tmp_path):
    """bf16-mixed, CUDA's default: the frozen convolutions compute in bfloat16 from a copy, the stored
    weights stay the loaded float32 ones."""
    _, target = datasets()
    study = fastvar.Study(model=fine_tuned, runs=2, epochs=1, precision="bf16-mixed", save_weights=2,
                          overrides={"batch_size": 16})
    study.run(tmp_path / strategy, data=target, execution=fastvar.Execution(batch_models=2, strategy=strategy),
              progress=False)
    loaded = torch.load(PRETRAINED["path"], weights_only=True)
    for i in range(2):
        stored = fastvar.weights(tmp_path / strategy, i)
        assert all(torch.equal(stored[k], loaded[k]) for k in loaded if k.startswith("backbone."))
        assert stored["head.weight"].dtype == torch.float32
