"""The dropout source wherever a model drops out: each mask element is a counter-based hash of (the
run's dropout seed, the training step, the layer, the element), as augmentation's draws are, so a
run's masks depend on nothing else: not on the strategy, not on the other replicas of its batch.

- A model's nn.Dropout layers (p > 0) become SeededDropout, whose seed and step are buffers that the
  training loop sets before each step (fastvar.engine.train.fit); under vmap each replica's seed is
  its own slice of the stacked buffer. Evaluation leaves the input as it is.
- Dropout a model calls functionally (F.dropout and its 1d/2d/3d and alpha forms, attention with
  dropout_p > 0 through F.scaled_dot_product_attention or nn.MultiheadAttention, as Hugging Face
  models call them) is drawn the same way by `FunctionalDropout`, a TorchFunctionMode around the
  forward, from two buffers of the model's root (SEEDS, STEP); each call of a forward is a layer of its
  own, numbered in call order after FUNCTIONAL_LAYERS. A model that calls none runs without the mode.
"""
import math
from contextlib import nullcontext
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..augment.reference import draw
from ..models import set_training

THRESHOLD_BITS = 32  # draws are uniform 32-bit integers
FUNCTIONAL_LAYERS = 1 << 20  # the layer numbers of functional calls: never an nn.Dropout's
SEEDS = "fastvar_dropout_seed"  # the root buffers a model with functional dropout gets (not saved)
STEP = "fastvar_dropout_step"
ALPHA = 1.7580993408473766  # SELU's -alpha * scale: what alpha dropout sets a dropped element to (negated)


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
        keep = keep_mask(self.seed, self.step, x.shape, self.p, self.layer, x.device)
        return x * keep.to(x.dtype) / (1 - self.p)

    def extra_repr(self):
        return f"p={self.p}, layer={self.layer}"


def keep_mask(seed, step, shape, p, layer, device):
    """Which elements of a tensor of `shape` stay (a bool tensor): the hash of each element's index."""
    elements = torch.arange(math.prod(shape), device=device).view(shape)
    return draw(seed, step, elements, layer) >= round(p * 2 ** THRESHOLD_BITS)


def seed_dropout(model, functional=False):
    """Swap every nn.Dropout with p > 0 in `model` for a SeededDropout, numbered in module order; with
    `functional`, give `model` the seed and step buffers its functional dropout draws from (0-dim
    int64, not saved; on its root, where no container calls them). Returns the swapped modules' paths."""
    paths = [path for path, m in model.named_modules() if type(m) is nn.Dropout and m.p > 0]
    for layer, path in enumerate(paths):
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, SeededDropout(model.get_submodule(path).p, layer))
    if functional and not hasattr(model, SEEDS):
        for name in (SEEDS, STEP):
            model.register_buffer(name, torch.zeros((), dtype=torch.int64), persistent=False)
    return paths


def dropout_buffers(model):
    """The names of the seed and step buffers of `model`'s SeededDropout layers and its functional dropout,
    as two lists."""
    paths = [path for path, m in model.named_modules() if isinstance(m, SeededDropout)]
    functional = hasattr(model, SEEDS)
    return [f"{p}.seed" for p in paths] + [SEEDS] * functional, [f"{p}.step" for p in paths] + [STEP] * functional


class FunctionalDropout(TorchFunctionMode):
    """Around one forward of `model` (seed_dropout's, functional; or anything holding SEEDS and STEP):
    every functional dropout drawn from its seed and step, read at each call (so under functional_call
    and vmap, each replica's own). `calls`: the masks drawn so far."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        handler = HANDLERS.get(func)
        return func(*args, **(kwargs or {})) if handler is None else handler(self, *args, **(kwargs or {}))

    def keep(self, shape, p, device):
        self.calls += 1
        seed, step = getattr(self.model, SEEDS), getattr(self.model, STEP)
        return keep_mask(seed, step, shape, p, FUNCTIONAL_LAYERS + self.calls - 1, device)

    def dropped(self, x, p, channels=None):
        """x with its elements (or, for channel dropout, its first `channels` dimensions' entries)
        zeroed with probability p, the rest scaled by 1 / (1 - p)."""
        if p >= 1:
            return x * 0
        return x * self.keep(mask_shape(x, channels), p, x.device).to(x.dtype) / (1 - p)

    def alpha_dropped(self, x, p, channels=None):
        """Alpha dropout as torch computes it: a dropped element set to SELU's negative saturation, then
        an affine map that keeps the mean and variance."""
        keep = self.keep(mask_shape(x, channels), p, x.device).to(x.dtype)
        a = 1 / math.sqrt((ALPHA * ALPHA * p + 1) * (1 - p))
        return x * keep * a + (keep - 1) * (ALPHA * a) + ALPHA * a * p


def functional_dropout(model):
    """The context one forward of `model` runs in: FunctionalDropout where seed_dropout gave it the
    buffers its functional dropout draws from, else nothing."""
    return FunctionalDropout(model) if hasattr(model, SEEDS) else nullcontext()


def mask_shape(x, channels=None):
    """The shape of x's mask: one entry an element, or with `channels`, one per entry of its first
    `channels` dimensions (broadcast over the rest)."""
    return x.shape if channels is None else (*x.shape[:channels], *[1] * (x.dim() - channels))


def channel_dims(x, batched_dim):
    """How many leading dimensions name a channel: N and C for a batched input of `batched_dim` dimensions, else C."""
    return 2 if x.dim() >= batched_dim else 1


def on_dropout(mode, input, p=0.5, training=True, inplace=False):
    return result(input, mode.dropped(input, p) if training and p > 0 else input, inplace)


def on_channel_dropout(batched_dim):
    def handler(mode, input, p=0.5, training=True, inplace=False):
        out = mode.dropped(input, p, channel_dims(input, batched_dim)) if training and p > 0 else input
        return result(input, out, inplace)
    return handler


def on_alpha_dropout(mode, input, p=0.5, training=False, inplace=False):
    return result(input, mode.alpha_dropped(input, p) if training and p > 0 else input, inplace)


def on_feature_alpha_dropout(mode, input, p=0.5, training=False, inplace=False):
    return result(input, mode.alpha_dropped(input, p, 2) if training and p > 0 else input, inplace)


def result(input, out, inplace):
    return input.copy_(out) if inplace and out is not input else out


def on_attention(mode, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False):
    """F.scaled_dot_product_attention; with dropout, written out as its documentation defines it, the
    attention weights dropped out by `mode`."""
    if dropout_p <= 0:
        return plain_attention(query, key, value, attn_mask, 0.0, is_causal, scale=scale, enable_gqa=enable_gqa)
    if enable_gqa:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], -3)
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], -3)
    scores = query @ key.transpose(-2, -1) * (1 / math.sqrt(query.shape[-1]) if scale is None else scale)
    if is_causal:
        causal = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return mode.dropped(scores.softmax(-1), dropout_p) @ value


def on_multi_head_attention(mode, *args, **kwargs):
    """F.multi_head_attention_forward, whose own dropout (of its weights, or through
    scaled_dot_product_attention) calls torch.nn.functional's module-level functions: for this call
    only, those are the seeded ones."""
    names = {"dropout": lambda x, p=0.5, training=True, inplace=False: on_dropout(mode, x, p, training, inplace),
             "scaled_dot_product_attention": lambda *a, **k: on_attention(mode, *a, **k)}
    saved = {name: getattr(F, name) for name in names}
    try:
        for name, seeded in names.items():
            setattr(F, name, seeded)
        return plain_multi_head_attention(*args, **kwargs)
    finally:
        for name, original in saved.items():
            setattr(F, name, original)


plain_attention, plain_multi_head_attention = F.scaled_dot_product_attention, F.multi_head_attention_forward
HANDLERS = {F.dropout: on_dropout, F.dropout1d: on_channel_dropout(3), F.dropout2d: on_channel_dropout(4),
            F.dropout3d: on_channel_dropout(5), F.alpha_dropout: on_alpha_dropout,
            F.feature_alpha_dropout: on_feature_alpha_dropout, F.scaled_dot_product_attention: on_attention,
            F.multi_head_attention_forward: on_multi_head_attention}
def calls_functional_dropout(model, input_shape):
    """Whether `model` calls any functional dropout that drops (p > 0) in a training forward of two
    examples of `input_shape` (zeros, as floats or, failing that, as tokens): whether FunctionalDropout,
    around it, draws a mask. A forward that fails either way counts as calling one (the mode then seeds
    whatever it meets)."""
    training = model.training
    set_training(model)
    seeds = SimpleNamespace(**{name: torch.zeros((), dtype=torch.int64) for name in (SEEDS, STEP)})
    try:
        floats = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        for dtype in (floats, torch.int64):
            mode = FunctionalDropout(seeds)
            try:
                with torch.no_grad(), torch.random.fork_rng(devices=[]), mode:
                    model(torch.zeros(2, *input_shape, dtype=dtype))
                return mode.calls > 0
            except Exception:
                continue
        return True
    finally:
        set_training(model, training)
