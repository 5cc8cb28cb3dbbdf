"""A researcher's own models and data: trained by fastvar with both strategies, equal (float64) to the
same module trained by hand with torch.optim from the run's seeds, as the README defines a run."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastvar
from fastvar import cli
from fastvar.data import Dataset
from fastvar.models import MODELS, register_model
from fastvar.engine.replicas import Replicas
from fastvar.sources import run_seeds
from fastvar.store import Store, weights_path
from conftest import ROOT, logits_of, random_dataset


class GroupNormResNet(nn.Module):
    """A residual block with GroupNorm, and a head called `classifier` (not `fc`)."""

    def __init__(self, channels=1, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(channels, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.classifier = nn.Linear(8, classes)

    def forward(self, x):
        x = F.relu(self.norm(self.stem(x)))
        x = F.relu(x + self.block(x))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


class LayerNormMLP(nn.Module):
    """An MLP on float features, with LayerNorm."""

    def __init__(self, features=20, classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, 32), nn.LayerNorm(32), nn.Tanh())
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.body(x))


class SmallConvNet(nn.Module):
    """Strided convolutions down to 2×2 and 1×1 pixels on 40×40×3 images: GEMM convolutions' shapes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 5, stride=4, padding=2), nn.ReLU(),  # 10×10
                                      nn.Conv2d(6, 8, 3, stride=4, padding=1), nn.ReLU(),  # 3×3
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())  # 2×2
        self.out = nn.Linear(32, 5)

    def forward(self, x):
        return self.out(self.features(x).flatten(1))


def image_data(size, classes, n_train=48, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset.from_arrays(rng.integers(0, 256, (n_train, *size), dtype=np.uint8), np.arange(n_train) % classes,
                               rng.integers(0, 256, (n_test, *size), dtype=np.uint8), np.arange(n_test) % classes)


def feature_data(seed=0):
    rng = np.random.default_rng(seed)
    return Dataset.from_arrays(rng.standard_normal((48, 20)).astype(np.float32), np.arange(48) % 3,
                               rng.standard_normal((20, 20)).astype(np.float32), np.arange(20) % 3)


CASES = {  # name: (factory, data)
    "groupnorm-residual-mnist-shaped": (lambda: GroupNormResNet(1, 10), lambda: image_data((28, 28, 1), 10)),
    "layernorm-mlp-features": (lambda: LayerNormMLP(), feature_data),
    "convnet-40x40x3": (lambda: SmallConvNet(), lambda: image_data((40, 40, 3), 5)),
}
EPOCHS, BATCH = 2, 16  # 3 steps an epoch, the last one partial


def trained_by_hand(factory, data, seeds, clip_grad_norm=None, pad_id=None):
    """The definition of a run, in plain PyTorch: the model built under its init seed, epoch e's order
    the e-th randperm of its order generator, the last partial batch kept, images normalised in float32
    and then cast, the mean cross-entropy of each batch, torch.optim.Adam (the seed recipe), each
    gradient clipped by torch.nn.utils.clip_grad_norm_ where `clip_grad_norm` is given; with `pad_id`, token
    inputs come with attention_mask = (tokens != pad_id)."""
    torch.manual_seed(seeds.init_seed)
    model = factory().double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seeds.order_seed)
    n = len(data.y_train)
    for _ in range(EPOCHS):
        for batch in torch.randperm(n, generator=order).split(BATCH):
            x = data.x_train[batch]
            if x.is_floating_point():
                x = x.double()
            elif x.dim() == 4:  # uint8 images; tokens go in as they are
                x = ((x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5).double()
            mask = {} if pad_id is None else {"attention_mask": (x != pad_id).long()}
            loss = F.cross_entropy(logits_of(model(x, **mask)), data.y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            if clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
    return model.state_dict()


@pytest.mark.parametrize("case", CASES)
def test_a_users_model_trains_as_it_would_by_hand(case, tmp_path):
    factory, make_data = CASES[case]
    data = make_data()
    weights = {}
    for strategy in ("loop", "vmap"):
        study = fastvar.Study(experiment="all-random", model=factory, runs=3, epochs=EPOCHS, precision="float64",
                              save_weights=3, overrides={"batch_size": BATCH})
        out = tmp_path / strategy
        study.run(out, data=data, execution=fastvar.Execution(batch_models=2, strategy=strategy))
        weights[strategy] = [torch.load(weights_path(out, "all-random", i), weights_only=True) for i in range(3)]
        (analysis,) = fastvar.analyze(out)
        assert analysis.metrics["n"] == 3 and Store(out).runs()[0]["test_logits"].shape[1] == data.num_classes
    for i in range(3):
        by_hand = trained_by_hand(factory, data, run_seeds("all-random", i))
        for name, value in by_hand.items():
            for strategy in ("loop", "vmap"):
                assert torch.allclose(weights[strategy][i][name], value, rtol=0, atol=1e-10), (strategy, i, name)


@pytest.mark.parametrize("case", CASES)
def test_a_users_loop_run_is_the_same_alone_and_in_a_batch_and_fixed_init_starts_alike(case, tmp_path):
    factory, make_data = CASES[case]
    data = make_data()
    runs = {}
    for name, batch_models in (("batch", 3), ("alone", 1)):
        study = fastvar.Study(experiment="fixed-init", model=factory, runs=3, epochs=1, overrides={"batch_size": BATCH})
        execution = fastvar.Execution(batch_models=batch_models, strategy="loop")
        runs[name] = study.run(tmp_path / name, data=data, execution=execution).runs()
    for a, b in zip(runs["batch"], runs["alone"]):
        assert np.array_equal(a["test_logits"], b["test_logits"]) and a["train_loss_curve"] == b["train_loss_curve"]
    replicas = Replicas(factory, [run_seeds("fixed-init", i).init_seed for i in range(3)],
                        num_classes=data.num_classes, input_shape=data.example_shape)
    for p in replicas.params.values():
        assert torch.equal(p[0], p[1]) and torch.equal(p[0], p[2])


def test_a_users_model_and_data_from_the_command_line(tmp_path, capsys, monkeypatch):
    package = tmp_path / "my_nets.py"
    package.write_text("from test_custom_models import GroupNormResNet\n\n\ndef make_net():\n"
                       "    return GroupNormResNet(1, 10)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    data = image_data((28, 28, 1), 10)
    arrays = tmp_path / "arrays.npz"
    np.savez(arrays, **{k: getattr(data, k).numpy() for k in ("x_train", "y_train", "x_test", "y_test")})
    out = tmp_path / "study"
    flags = ["--runs", "2", "--batch-models", "2", "--epochs", "1", "--data", str(arrays), "--out", str(out)]
    assert cli.main([*flags, "--model", "my_nets:make_net"]) == 0
    rows = Store(out).runs()
    assert len(rows) == 2 and Store(out).config["hyperparameters"]["model"] == "my_nets:make_net"
    assert Store(out).config["dataset"] == data.name and "architecture" in Store(out).config
    capsys.readouterr()
    for model, message in (("my_nets:nothing_here", "cannot import the model factory"),
                           ("no_such_package.nets:make", "cannot import the model factory"),
                           ("nonsense", "unknown --model 'nonsense'")):
        assert cli.main([*flags, "--model", model, "--out", str(tmp_path / "other")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    np.savez(arrays, x_train=data.x_train.numpy()[:, None, :, :, 0], y_train=data.y_train.numpy(),
             x_test=data.x_test.numpy(), y_test=data.y_test.numpy())  # NCHW: channels first
    assert cli.main([*flags, "--model", "my_nets:make_net", "--out", str(tmp_path / "bad")]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("fastvar: loading")]
    assert len(err) == 1 and "x_train" in err[0], err


def test_register_model_makes_a_factory_a_name(tmp_path, monkeypatch):
    monkeypatch.setattr("fastvar.models.MODELS", dict(MODELS))  # the registration ends with the test
    register_model("gn-resnet-test", lambda: GroupNormResNet(3, 10))
    study = fastvar.Study(model="gn-resnet-test", runs=1, epochs=1, overrides={"batch_size": 32})
    rows = study.run(tmp_path / "s", data=image_data((32, 32, 3), 10)).runs()
    assert rows[0]["test_logits"].shape == (20, 10)
    with pytest.raises(fastvar.ConfigError, match="^width sets"):
        fastvar.Study(model="gn-resnet-test", width=8)


@pytest.mark.parametrize("arrays, message", [
    (dict(x_train=np.zeros((4, 8, 8, 3), np.float32)), "uint8 images"),
    (dict(y_train=np.zeros(3, np.int64)), "y_train must be 4 integer labels"),
    (dict(y_test=np.full(4, -1)), "negative label"),
    (dict(x_test=np.zeros((4, 9, 8, 3), np.uint8)), "differ"),
])
def test_bad_arrays_give_one_line(arrays, message):
    good = dict(x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.arange(4), x_test=np.zeros((4, 8, 8, 3), np.uint8),
                y_test=np.arange(4))
    with pytest.raises(fastvar.DataError, match=message):
        Dataset.from_arrays(**{**good, **arrays})


def test_the_analysis_package_imports_without_the_training_engine():
    script = ("import sys, fastvar.analysis.report, fastvar.analysis.compare, fastvar.analysis.export, "
              "fastvar.analysis.plots; "
              "print(sorted(m for m in sys.modules if m.startswith('fastvar')))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=ROOT).stdout
    assert "'fastvar.analysis.report'" in loaded
    for engine in ("fastvar.engine", "fastvar.study", "fastvar.sweep", "fastvar.execution", "fastvar.runner"):
        assert f"'{engine}" not in loaded, loaded


def test_the_custom_model_example_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_model.py"), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all("8 runs, test accuracy" in line for line in lines)


def test_the_documented_plain_pytorch_script_reproduces_a_stored_run(tmp_path):
    doc = (ROOT / "docs" / "reproduce-a-run.md").read_text()
    code = re.search(r"<!-- reproduce-a-run -->\s*```python\n(.*?)```", doc, re.S).group(1)
    namespace = {}
    exec(compile(code, "reproduce-a-run.md", "exec"), namespace)
    data = random_dataset(40, 10)
    out = tmp_path / "small"
    fastvar.Study(experiment="all-random", runs=2, width=4, epochs=2, precision="float64",
                  save_weights=2, overrides={"batch_size": 16}).run(out, data=data)
    for k in range(2):
        state = namespace["retrain"](out, k, data.x_train, data.y_train)
        stored = torch.load(weights_path(out, "all-random", k), weights_only=True)
        for name, value in state.items():
            assert torch.allclose(stored[name].double(), value.double(), rtol=0, atol=1e-10), (k, name)


def test_the_readme_custom_model_example_runs_as_written(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- custom-model-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert len(Store(tmp_path / "results" / "mynet").runs()) == 8
    assert float(capsys.readouterr().out.strip()) >= 0


class StochasticDepth(nn.Module):
    """A residual branch skipped at random (stochastic depth), drawn with torch.rand: nothing fastvar can seed."""

    def __init__(self, drop_prob=0.2):
        super().__init__()
        self.drop_prob, self.branch = drop_prob, nn.Linear(8, 8)

    def forward(self, x):
        keep = (torch.rand(x.shape[0], 1) >= self.drop_prob).to(x.dtype) if self.training else 1.0
        return x + keep * self.branch(x)


class WithStochasticDepth(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.block, self.head = nn.Linear(20, 8), StochasticDepth(), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block(self.body(x)))


class NoisyForward(LayerNormMLP):
    def forward(self, x):
        return super().forward(x + 0.1 * torch.randn_like(x))


class DataDependent(LayerNormMLP):
    def forward(self, x):
        return super().forward(x) * float(x.sum().item() > 0)  # .item(): vmap cannot batch it


@pytest.mark.parametrize("factory, strategy, message", [
    (WithStochasticDepth, "loop", "draws randomness of its own in block (rand), from the global generator, so a run "
                                  "would not be defined by its seeds; turn it off (its settings: drop_prob=0.2)"),
    (NoisyForward, "vmap", "draws randomness of its own in its forward (randn_like)"),
    (DataDependent, "vmap", "cannot be trained as replicas (vmap strategy)"),
], ids=["stochastic-depth", "randomness-in-forward", "item-under-vmap"])
def test_what_cannot_be_replicated_is_found_before_any_run(factory, strategy, message, tmp_path):
    study = fastvar.Study(model=factory, runs=2, epochs=1)
    with pytest.raises(fastvar.ConfigError, match=re.escape(message)) as raised:
        study.run(tmp_path / "s", data=feature_data(), execution=fastvar.Execution(strategy=strategy))
    assert "\n" not in str(raised.value) and not (tmp_path / "s").exists()


def test_a_recipe_that_augments_refuses_features(tmp_path):
    recipe = fastvar.Recipe(model=LayerNormMLP, epochs=1, augment=fastvar.Augment(flip=True))
    with pytest.raises(fastvar.ConfigError, match="augments images"):
        fastvar.Study(recipe=recipe, runs=1).run(tmp_path / "s", data=feature_data())
