"""The ops that throw on CUDA under `torch.use_deterministic_algorithms(True)`, which a study with its
kernels fixed sets there (fastvar.sources.kernel_mode), found by tracing a model's step on any device.

torch documents them by module or function (that function's docstring, "will throw a RuntimeError");
a dispatch mode sees ATen ops. THROWS_ON_CUDA maps each entry any supported torch documents to the ATen
ops it runs as, with a test of the op's arguments where the documentation names a condition; the
tracer looks for the entries the installed torch documents (its docstring, read once). A test holds
the map against torch's own list, entry for entry, so a torch that adds one fails it rather than
slipping by; an entry a newer torch no longer lists (it gained a deterministic kernel) is in FORMERLY.
"""
import functools
import re

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def always(args, kwargs):
    return True


def floating(args, kwargs):
    return args[0].is_floating_point() or args[0].is_complex()


# documented entry → ({ATen op name (overload dropped): condition on its arguments}); an empty dict:
# no op a model's training step can reach (quantized tensors)
THROWS_ON_CUDA = {
    "torch.nn.AvgPool3d": {"avg_pool3d_backward": always},
    "torch.nn.AdaptiveAvgPool2d": {"_adaptive_avg_pool2d_backward": always},
    "torch.nn.AdaptiveAvgPool3d": {"_adaptive_avg_pool3d_backward": always},
    "torch.nn.AdaptiveMaxPool2d": {"adaptive_max_pool2d_backward": always},
    "torch.nn.FractionalMaxPool2d": {"fractional_max_pool2d_backward": always},
    "torch.nn.FractionalMaxPool3d": {"fractional_max_pool3d_backward": always},
    "torch.nn.MaxUnpool1d": {"max_unpool2d": always},
    "torch.nn.MaxUnpool2d": {"max_unpool2d": always},
    "torch.nn.MaxUnpool3d": {"max_unpool3d": always},
    "torch.nn.functional.interpolate": {f"upsample_{mode}_backward": always
                                        for mode in ("linear1d", "bilinear2d", "bicubic2d", "trilinear3d")},
    "torch.nn.ReflectionPad1d": {"reflection_pad1d_backward": always},
    "torch.nn.ReflectionPad2d": {"reflection_pad2d_backward": always},
    "torch.nn.ReflectionPad3d": {"reflection_pad3d_backward": always},
    "torch.nn.NLLLoss": {"nll_loss2d_forward": always},  # the spatial form; a classifier's (N, C) loss is not it
    "torch.nn.CTCLoss": {"_ctc_loss_backward": always},
    "torch.nn.EmbeddingBag": {"_embedding_bag_backward": lambda args, kwargs: args[5] == 2,  # mode max
                              "_embedding_bag_dense_backward": lambda args, kwargs: args[5] == 2},
    "torch.Tensor.put_": {"put_": always, "put": always},
    "torch.histc": {"histc": always},
    "torch.bincount": {"bincount": lambda args, kwargs: (args[1] if len(args) > 1 else kwargs.get("weights"))
                       is not None},
    "torch.median": {"median": lambda args, kwargs: len(args) > 1 or "dim" in kwargs,  # the form with indices
                     "nanmedian": lambda args, kwargs: len(args) > 1 or "dim" in kwargs},
    "torch.nn.functional.grid_sample": {"grid_sampler_2d_backward": always, "grid_sampler_3d_backward": always},
    "torch.cumsum": {"cumsum": floating, "cumsum_": floating},
    "torch.Tensor.scatter_reduce": {"scatter_reduce": lambda args, kwargs: (args[3] if len(args) > 3
                                                                            else kwargs.get("reduce")) == "prod"},
    "torch.Tensor.resize_": {},  # with a quantized tensor only
    "torch.nn.MaxPool3d": {"max_pool3d_with_indices_backward": always},  # torch 2.11 lists it; 2.13 does not
}
FORMERLY = frozenset({"torch.nn.MaxPool3d"})  # entries the oldest supported torch lists and a newer one dropped


def documented_entries():
    """The entries of the installed torch's own list of ops that throw under deterministic algorithms."""
    doc = torch.use_deterministic_algorithms.__doc__ or ""
    start, end = doc.find("operations will throw a"), doc.find("In addition")
    if not 0 <= start < end:
        return set()
    return set(re.findall(r":(?:class|func):`([^`]+)`", doc[start:end])) - {"RuntimeError"}


@functools.cache
def by_op():
    """{ATen op: (entry, condition)} for the entries this torch documents (every entry where its list
    cannot be read: a refusal too many, never one too few)."""
    documented = documented_entries() or set(THROWS_ON_CUDA)
    return {op: (entry, condition) for entry, ops in THROWS_ON_CUDA.items() if entry in documented
            for op, condition in ops.items()}


class ThrowingOps(TorchDispatchMode):
    """Under it, every op that would throw on CUDA in deterministic mode is noted: {ATen op: documented entry}."""

    def __init__(self):
        super().__init__()
        self.found = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name, known = func.overloadpacket.__name__, by_op()
        if name in known and known[name][1](args, kwargs):
            self.found.setdefault(name, known[name][0])
        return func(*args, **kwargs)


def describe(found):
    """One phrase naming what was found: 'adaptive_max_pool2d_backward (torch.nn.AdaptiveMaxPool2d)'."""
    return ", ".join(f"{op} ({entry})" for op, entry in sorted(found.items()))
