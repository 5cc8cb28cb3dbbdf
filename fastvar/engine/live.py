"""Live parameters: the weight entries a gradient can reach, found from shapes alone.

A convolution's tap (ki, kj) multiplies input pixel (oi·s - p + ki·d, oj·s - p + kj·d) for output
pixel (oi, oj). Where that lands in the zero padding for every output pixel, the tap multiplies
only zeros: its gradient is exactly 0 at every step, for any data, and with weight decay 0 no
optimizer here moves it. On 32×32 CIFAR the seed model's last stage works at 1×1 pixels, so eight of
nine taps of each 3×3 kernel there (five of nine in the 2→1 strided one) are dead: 62 % of the model.
The engine keeps such taps out of the forward pass, the optimizer and the mixed-precision casts.
"""
import copy

import torch

from ..models import set_training


def tap_reach(size, out_size, k, s, p, d):
    """The taps (along one axis) that read some input index in [0, size) for some output index."""
    return [t for t in range(k) if any(0 <= o * s - p + t * d < size for o in range(out_size))]


def conv_sizes(structure, input_shape):
    """{Conv2d module name: ((H, W) of its input, (Ho, Wo) of its output)} for one example of
    `input_shape`, by a forward on the meta device (no arithmetic); convolutions not run, or run at
    two sizes (one module applied twice), are left out."""
    if any(p.device.type != "meta" for p in structure.parameters()):
        structure = copy.deepcopy(structure).to("meta")
    names = {m: n for n, m in structure.named_modules() if isinstance(m, torch.nn.Conv2d)}
    if not names:
        return {}
    sizes, reused = {}, set()

    def record(module, inputs, out):  # a module applied at two sizes has no one size: left out
        size = (tuple(inputs[0].shape[-2:]), tuple(out.shape[-2:]))
        if sizes.setdefault(names[module], size) != size:
            reused.add(names[module])
    hooks = [m.register_forward_hook(record) for m in names]
    training = structure.training
    dtype = next(structure.parameters()).dtype
    try:
        set_training(structure, False)(torch.empty(1, *input_shape, device="meta", dtype=dtype))
    finally:
        set_training(structure, training)
        for hook in hooks:
            hook.remove()
    return {name: size for name, size in sizes.items() if name not in reused}


def live_taps(structure, input_shape):
    """{Conv2d module name: the indices ki·k + kj of its live taps, in order} for each zero-padded
    convolution with at least one dead tap at this input size; convolutions not run are left out."""
    if len(input_shape) != 3:
        return {}
    live = {}
    for name, ((h, w), (ho, wo)) in conv_sizes(structure, input_shape).items():
        conv = structure.get_submodule(name)
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            continue
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        rows, cols = tap_reach(h, ho, kh, sh, ph, dh), tap_reach(w, wo, kw, sw, pw, dw)
        if len(rows) * len(cols) < kh * kw:
            live[name] = tuple(i * kw + j for i in rows for j in cols)
    return live

