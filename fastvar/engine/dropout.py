"""The dropout source at every nn.Dropout of a model: each mask element is a counter-based hash of
(the run's dropout seed, the training step, the layer, the element), as augmentation's draws are, so a
run's masks depend on nothing else: not on the strategy, not on the other replicas of its batch.

A model's nn.Dropout layers (p > 0) become SeededDropout, whose seed and step are buffers that the
training loop sets before each step (fastvar.engine.train.fit); under vmap each replica's seed is its
own slice of the stacked buffer. Evaluation leaves the input as it is.
"""
import torch
from torch import nn

from ..augment.reference import draw

THRESHOLD_BITS = 32  # draws are uniform 32-bit integers


class SeededDropout(nn.Module):
    """nn.Dropout(p) whose mask draws from its `seed` and `step` buffers (0-dim int64; not saved)."""

    def __init__(self, p, layer):
        super().__init__()
        self.p, self.layer = p, layer
        self.register_buffer("seed", torch.zeros((), dtype=torch.int64), persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64), persistent=False)

    def forward(self, x):
        if not self.training:
            return x
        elements = torch.arange(x.numel(), device=x.device).view(x.shape)
        keep = draw(self.seed, self.step, elements, self.layer) >= round(self.p * 2 ** THRESHOLD_BITS)
        return x * keep.to(x.dtype) / (1 - self.p)

    def extra_repr(self):
        return f"p={self.p}, layer={self.layer}"


def seed_dropout(model):
    """Swap every nn.Dropout with p > 0 in `model` for a SeededDropout, numbered in module order.
    Returns the swapped modules' paths."""
    paths = [path for path, m in model.named_modules() if type(m) is nn.Dropout and m.p > 0]
    for layer, path in enumerate(paths):
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, SeededDropout(model.get_submodule(path).p, layer))
    return paths


def dropout_buffers(model):
    """The names of the seed and step buffers of `model`'s SeededDropout layers, as two lists."""
    paths = [path for path, m in model.named_modules() if isinstance(m, SeededDropout)]
    return [f"{p}.seed" for p in paths], [f"{p}.step" for p in paths]
