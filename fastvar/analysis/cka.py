"""Linear CKA (Kornblith et al., 2019) between the representations of pairs of trained runs, read
at the stem, each stage, the pooled features and the logits on a fixed probe of test images."""
import itertools

import numpy as np
import torch

from ..models import build_model, classifier_name, feature_layers, model_spec

PROBE_SIZE = 1000  # the first 100 test images of each class


def centered_gram(features):
    """The n×n Gram matrix of an example-by-feature matrix whose features are centred over examples:
    linear CKA needs nothing else, and it is small whatever the layer's width."""
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    x = x - x.mean(0)
    return x @ x.T


def linear_cka(gram_a, gram_b):
    """CKA of two representations from their centred Gram matrices: 1 for the same representation up to
    an orthogonal transform and an isotropic scaling, near 0 for unrelated ones."""
    return float((gram_a * gram_b).sum() / np.sqrt((gram_a * gram_a).sum() * (gram_b * gram_b).sum()))


@torch.no_grad()
def layer_grams(model_name, width, state_dict, images, dropout=None, num_classes=10):
    """Centred Gram matrices of one trained model's representations of `images` (already normalised),
    by layer name: its feature layers (fastvar.models.feature_layers), then `pooled` and `logits` (the
    classifier's input and output)."""
    model = build_model(model_name, init_seed=0, width=width, dtype=images.dtype, dropout=dropout,
                        num_classes=num_classes)
    model.load_state_dict(state_dict)
    model.eval()
    seen, modules = {}, dict(model.named_modules())
    hooks = [modules[path].register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out))
             for name, path in feature_layers(model, model_spec(model_name)).items()]
    hooks.append(modules[classifier_name(model)].register_forward_hook(
        lambda m, inputs, out: seen.update(pooled=inputs[0], logits=out)))
    model(images)
    for hook in hooks:
        hook.remove()
    return {name: centered_gram(value.float().numpy()) for name, value in seen.items()}


def cka_by_layer(grams):
    """Mean and SD of linear CKA over every pair of runs, per layer; `grams` is one dict per run."""
    table = {}
    for layer in grams[0]:
        values = [linear_cka(a[layer], b[layer]) for a, b in itertools.combinations(grams, 2)]
        table[layer] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1
                        else float("nan"), "pairs": len(values)}
    return table
