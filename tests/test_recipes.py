"""Recipes: each trains end to end; schedules, per-parameter learning rates and models as specified."""
import dataclasses
import math

import pytest
import torch

from fastvar.models import BasicBlock, build_model
from fastvar.sources import run_seeds
from fastvar.errors import ConfigError
from fastvar.data import load_dataset
from fastvar.models import LANGUAGE_MODELS
from fastvar.recipes import RECIPES, Cosine, Recipe
from fastvar.engine.replicas import Replicas
from fastvar.engine.train import make_optimizer, train_replicas
from conftest import random_dataset


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_trains_end_to_end(name):
    recipe = RECIPES[name].replace(epochs=2, batch_size=32)
    language = recipe.model in LANGUAGE_MODELS
    data = load_dataset("pydoc-chars", train_subset=64, test_subset=20) if language else random_dataset(64, 20)
    results = train_replicas(data, recipe, [run_seeds("all-random", i) for i in range(2)], width=4,
                             strategy="loop", dtype=torch.float32)
    for r in results:
        assert len(r["train_loss_curve"]) == 2 and math.isfinite(r["test_loss"])
        assert (r["test_token_logprob"] if language else r["test_logits"]).shape == (20, 64 if language else 10)
    output = "test_token_logprob" if language else "test_logits"
    assert not torch.equal(results[0][output], results[1][output])


def test_augmenting_recipe_varies_with_the_aug_seed_alone():
    recipe = RECIPES["resnet18-cifar"].replace(epochs=1, batch_size=32)
    data = random_dataset(64, 20)
    seeds = run_seeds("fixed-init", 0)
    same = dataclasses.replace(seeds)
    other_aug = dataclasses.replace(seeds, aug_seed=seeds.aug_seed + 1)
    a, b, c = (train_replicas(data, recipe, [s], width=4, strategy="loop", dtype=torch.float32)[0]
               for s in (seeds, same, other_aug))
    assert torch.equal(a["test_logits"], b["test_logits"])
    assert not torch.equal(a["test_logits"], c["test_logits"])


def test_schedules():
    cosine = RECIPES["summers"].schedule
    # 10 epochs of 5 steps: warm-up is min(3 epochs, 20 % of 50 steps) = 10 steps.
    factors = [cosine.factor(t, 5, 50) for t in range(50)]
    assert factors[:10] == [pytest.approx((t + 1) / 10) for t in range(10)]
    assert factors[10] == 1.0 and all(a > b for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 0.01
    linear = [RECIPES["jordan"].schedule.factor(t, 5, 50) for t in (0, 25, 49)]
    assert linear == [1.0, 0.5, pytest.approx(0.02)]
    assert RECIPES["seed"].schedule.factor(30, 5, 50) == 1.0


def test_summers_trains_biases_and_batchnorm_at_a_tenth_of_the_rate():
    replicas = Replicas("resnet14", [0])
    spans = make_optimizer(RECIPES["summers"], replicas.master, replicas.layout, lr_factors=[1.0]).spans
    assert len(spans) <= 4 and spans[0][0] == 0 and spans[-1][1] == replicas.layout.size  # a few spans cover it
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))

    def factor(name):
        start = replicas.layout.entries[name].start
        return next(f for a, b, f in spans if a <= start < b)
    assert factor("bn1.weight") == factor("fc.bias") == factor("layer2.0.downsample.bn.bias") == 0.1
    assert factor("conv1.weight") == factor("fc.weight") == 1.0


def test_resnet14_and_resnet9_as_specified():
    resnet14 = build_model("resnet14", init_seed=0)
    assert resnet14.conv1.out_channels == 16 and resnet14.fc.in_features == 64
    blocks = [m for m in resnet14.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 6 and all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    shortcut = resnet14.layer2[0].downsample
    x = torch.randn(2, 16, 8, 8)
    shortcut.eval()
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4) and torch.count_nonzero(y[:, 16:]) == 0  # zero channels appended
    resnet9 = build_model("resnet9", init_seed=0)
    assert resnet9.fc.bias is None and resnet9.fc.in_features == 128
    resnet9.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(resnet9(x), 0.2 * resnet9.fc(resnet9.net(x)))


def test_a_cyclic_cosine_restarts_and_one_cycle_is_the_plain_cosine():
    plain = Cosine(warmup_epochs=1, warmup_fraction=0.2)
    factors = [plain.factor(step, 10, 100) for step in range(100)]
    assert factors == [dataclasses.replace(plain, cycles=1).factor(step, 10, 100) for step in range(100)]
    cycled = [dataclasses.replace(plain, cycles=2).factor(step, 10, 100) for step in range(100)]
    assert cycled[50] == 1.0 and cycled[49] < 0.01 and cycled[99] < 0.01  # restart, two troughs
    assert cycled[:10] == factors[:10]  # the warm-up belongs to the first cycle only


# The recipes as fastvar 0.1 wrote them into every folder's config: a Recipe must read as exactly
# these, or every folder made before typed recipes would refuse to resume ("another config"); char as it
# was first written, in 2026-12.
CIFAR = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
RECIPES_AS_STORED = {
    "seed": {"model": "resnet18", "epochs": 10, "batch_size": 128, "schedule": {"name": "constant"}, "augment": {},
             "optimizer": {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
             "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "summers": {"model": "resnet14", "epochs": 500, "batch_size": 512, "lr_scale_1d": 0.1,
                "optimizer": {"name": "sgd", "lr": 0.4, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4},
                "schedule": {"name": "cosine", "warmup_epochs": 3, "warmup_fraction": 0.2},
                "augment": {"flip": True, "pad": 4}, **CIFAR},
    "jordan": {"model": "resnet9", "epochs": 64, "batch_size": 500, "schedule": {"name": "linear"},
               "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4},
               "augment": {"flip": True, "translate": 2, "cutout": 12}, **CIFAR},
    "char": {"model": "char-transformer", "epochs": 4, "batch_size": 64, "mean": [0.5], "std": [0.5],
             "optimizer": {"name": "adam", "lr": 2e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01,
                           "decoupled": True},
             "schedule": {"name": "cosine", "warmup_fraction": 0.05}, "augment": {}},
    "resnet18-cifar": {"model": "resnet18-cifar", "epochs": 30, "batch_size": 128, "schedule": {"name": "cosine"},
                       "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
                                     "weight_decay": 5e-4},
                       "augment": {"flip": True, "pad": 4}, **CIFAR},
}


def test_typed_recipes_read_as_the_dicts_older_folders_stored():
    assert {name: recipe.to_dict() for name, recipe in RECIPES.items()} == RECIPES_AS_STORED
    for name, stored in RECIPES_AS_STORED.items():  # and a stored config's hyperparameters read back as they were
        assert Recipe.from_dict(stored) == RECIPES[name] and Recipe.from_dict(stored).to_dict() == stored
    snapshots = RECIPES["summers"].replace(schedule=Cosine(cycles=4), dropout=0.1, label_smoothing=0.2)
    assert Recipe.from_dict(snapshots.to_dict()) == snapshots and snapshots.snapshot_epochs() == [124, 249, 374, 499]


def test_a_recipe_replaces_its_own_settings_and_its_optimizers():
    from fastvar import SGD, Recipe
    recipe = RECIPES["seed"].replace(lr=2e-3, epochs=3)
    assert recipe.optimizer.lr == 2e-3 and recipe.epochs == 3 and RECIPES["seed"].optimizer.lr == 1e-3
    assert Recipe().to_dict()["schedule"] == {"name": "constant"} and Recipe().augment.to_dict() == {}
    assert SGD().to_dict() == {"name": "sgd", "lr": 1e-3, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    with pytest.raises(ConfigError, match="no setting betas2"):
        recipe.replace(betas2=0.5)


def test_a_config_leaves_out_what_is_at_its_declared_default_and_nothing_else():
    from fastvar.canonical import declared_defaults, without_defaults
    from fastvar.recipes import Cosine
    kept = without_defaults({"a": 0, "b": None, "c": False, "d": 1}, {"a": None, "b": None, "c": False})
    assert kept == {"a": 0, "d": 1}
    assert declared_defaults(Cosine) == {"warmup_epochs": 0, "warmup_fraction": 0.0, "cycles": None}
    assert Cosine(warmup_epochs=0, warmup_fraction=0.1).to_dict() == {"name": "cosine", "warmup_fraction": 0.1}


def test_a_study_resolves_its_changes_into_one_typed_recipe():
    from fastvar import Study
    from fastvar.recipes import Cosine
    summers = Study(recipe="summers", snapshots=4, epochs=8, dropout=0.1, overrides={"lr": 0.2, "batch_size": 64})
    recipe = summers.resolved_recipe()
    assert recipe.schedule == Cosine(warmup_epochs=3, warmup_fraction=0.2, cycles=4)  # its warm-up kept
    assert (recipe.optimizer.lr, recipe.optimizer.momentum, recipe.batch_size, recipe.epochs, recipe.dropout) == \
        (0.2, 0.9, 64, 8, 0.1)
    assert summers.recipe_dict() == recipe.to_dict()
    assert Study(snapshots=2, epochs=4).resolved_recipe().schedule == Cosine(cycles=2)  # seed's constant: a plain cosine
    # an explicit label smoothing of 0 stays in the config, as it always was recorded
    assert Study(overrides={"label_smoothing": 0}).recipe_dict()["label_smoothing"] == 0
    assert "label_smoothing" not in Study().recipe_dict()
