"""Linear CKA: its invariances, and the layers it reads from each model."""
import numpy as np
import pytest
import torch

from fastvar.analysis import cka
from fastvar.models import LANGUAGE_MODELS, MODELS, build_model


def test_cka_is_one_for_the_same_representation_up_to_rotation_and_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 12))
    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    gram = cka.centered_gram(x)
    assert cka.linear_cka(gram, gram) == pytest.approx(1)
    assert cka.linear_cka(gram, cka.centered_gram(3.7 * x @ rotation + 5)) == pytest.approx(1)
    unrelated = cka.centered_gram(rng.normal(size=(50, 12)))
    assert cka.linear_cka(gram, unrelated) < 0.5
    stretched = cka.centered_gram(x * np.r_[10.0, np.ones(11)])  # not isotropic: CKA changes
    assert cka.linear_cka(gram, stretched) < 0.99


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_has_its_feature_layers(name):
    modules = dict(build_model(name, init_seed=0, width=4).named_modules())
    head = "head" if name in LANGUAGE_MODELS else "fc"
    assert set(MODELS[name].feature_layers.values()) <= set(modules) and head in modules


def test_layer_grams_of_two_runs():
    images = torch.randn(20, 3, 32, 32)
    same = build_model("resnet14", init_seed=1, width=4).state_dict()
    other = build_model("resnet14", init_seed=2, width=4).state_dict()
    grams = [cka.layer_grams("resnet14", 4, sd, images) for sd in (same, same, other)]
    assert list(grams[0]) == ["stem", "stage1", "stage2", "stage3", "pooled", "logits"]
    assert all(g.shape == (20, 20) for g in grams[0].values())
    table = cka.cka_by_layer(grams[:2])
    assert all(v["mean"] == pytest.approx(1) and v["pairs"] == 1 for v in table.values())
    table = cka.cka_by_layer(grams)
    assert table["logits"]["pairs"] == 3 and table["logits"]["mean"] < 1
