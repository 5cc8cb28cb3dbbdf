"""Layers rewritten from elementary operations: the same functions as nn.BatchNorm2d and
nn.Conv2d up to rounding, in a form vmap batches well on every device (and, for convolutions with
tiny outputs, faster than oneDNN's on a CPU, in either strategy).

- ElementaryBatchNorm2d: vmap's own BatchNorm rule fails on CUDA (it asks a batched tensor for its
  memory format) and takes one dtype only; statistics here are in float32 at least.
- GemmConv2d: vmap turns M replicas' convolutions into one grouped convolution, which cuDNN runs far
  from the tensor cores' rate (and whose compiled backward trips a stride check). As an explicit
  im2col and one matrix product, vmap makes it one batched matrix product over replicas, with
  large matrices: (B·Ho·Wo × k²·C) by (k²·C × Cout). On a CPU it also beats oneDNN's convolution
  where outputs are tiny, and loses elsewhere: hence `small_convs`, at the output size where the
  measurements in docs/performance.md ("Convolutions on tiny images") turn. On images of fewer than
  k² pixels the unrolled form (the whole linear map) leaves out every product with the padding.

- GroupedConv2d, ImplicitConv2d: under vmap, all replicas' convolutions at once with no columns in
  memory, through a custom op with its own vmap rule (fastvar.engine.replica_conv): one grouped
  convolution in channels-last memory, or Triton implicit GEMMs; for the larger images (--conv
  grouped, --conv implicit; the tiny ones stay GEMM, live taps only).

`use_vmap_layers` swaps them into a structure-only model (the state comes from elsewhere), keeping
every parameter's and buffer's name and shape, so state dicts stay interchangeable.
"""
import torch
import torch.nn.functional as F

from .replica_conv import replica_conv2d
from .live import conv_sizes


def at_least_float32(x):
    """x in float32 at least: bfloat16 upcast, float64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class ElementaryBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm in float32 at least, returned in the input's dtype."""

    def forward(self, x):
        h = at_least_float32(x)
        if self.training:
            mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
            n = h.numel() / h.shape[1]
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(mean.detach() * self.momentum)
                self.running_var.mul_(1 - self.momentum).add_(var.detach() * (self.momentum * n / (n - 1)))
                self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean, self.running_var
        scale = torch.rsqrt(var + self.eps) * self.weight
        return (h * scale[:, None, None] + (self.bias - mean * scale)[:, None, None]).to(x.dtype)


class GemmConv2d(torch.nn.Conv2d):
    """A convolution as one matrix product, channels-last throughout: the B×H×W×C input as a matrix
    times a matrix made from the weight gives the B×Ho×Wo×Cout output, returned as a B×Cout×Ho×Wo
    view (no copy). Two forms, whichever multiplies fewer numbers (shapes alone decide):
    - im2col: the k² strided slices of the padded input side by side, (B·Ho·Wo × k²·C) by (k²·C × Cout);
    - unrolled, for images of fewer than k² pixels: the convolution's whole linear map, (B × H·W·C) by
      (H·W·C × Ho·Wo·Cout), which leaves out every product with the zero padding (on a 1×1 image a
      3×3 kernel's eight outer taps, on 2×2 five of nine); where one output pixel reads each input
      pixel through a tap of its own, the map is those taps, no product to build it (a view of the
      live taps, for the seed model's last stage).
    Both read the weight as k×k×C×Cout taps: a view, with no copy forward or backward, where the
    weight lies in memory in that order (WEIGHT_MEMORY_ORDER; fastvar.engine.replicas lays stacks out so).
    With `live_taps` (fastvar.engine.live: the taps that reach the image), the weight is those taps
    alone, T×C×Cout, and neither form multiplies the others."""

    WEIGHT_MEMORY_ORDER = (2, 3, 1, 0)
    live_taps = None  # all taps; else the indices ki·k + kj of the weight's T taps

    def forward(self, x):
        (k, _), (s, _), (p, _) = self.kernel_size, self.stride, self.padding
        b, c, h, w = x.shape
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        taps, tap_ids = self.taps(k, c)
        if h * w < k * k:
            out = self.unrolled(x, taps, tap_ids, s, p, ho, wo)
        else:
            padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, p, p, p, p))
            windows = [padded[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
                       for i, j in (divmod(t, k) for t in tap_ids)]
            cols = torch.stack(windows, dim=3).reshape(b * ho * wo, len(tap_ids) * c)
            out = cols @ taps.reshape(len(tap_ids) * c, self.out_channels)
        out = out.view(b, ho, wo, self.out_channels).permute(0, 3, 1, 2)
        return out if self.bias is None else out + self.bias[:, None, None]

    def taps(self, k, c):
        """The weight as T×C×Cout tap matrices (a view) and the taps' indices ki·k + kj."""
        if self.live_taps is None:
            return self.weight.permute(self.WEIGHT_MEMORY_ORDER).reshape(k * k, c, self.out_channels), range(k * k)
        return self.weight, self.live_taps

    def unrolled(self, x, taps, tap_ids, s, p, ho, wo):
        b, c, h, w = x.shape
        k, cout = self.kernel_size[0], self.out_channels
        own = one_tap_each(h, w, ho, wo, k, p, tap_ids)
        if own is not None:  # one output pixel, each input pixel its own tap: those taps are the map
            linear_map = taps[own[0]:own[-1] + 1] if own == list(range(own[0], own[-1] + 1)) else taps[own]
        else:  # (H·W·Ho·Wo × T) 0/1 times (T × C·Cout): the C×Cout block of each (input, output) pixel pair
            selection = tap_selection(h, w, ho, wo, k, s, p, taps)
            selection = selection if len(tap_ids) == k * k else selection[:, list(tap_ids)]
            blocks = selection @ taps.reshape(len(tap_ids), c * cout)
            linear_map = blocks.view(h * w, ho * wo, c, cout).transpose(1, 2)
        return x.permute(0, 2, 3, 1).reshape(b, h * w * c) @ linear_map.reshape(h * w * c, ho * wo * cout)


class GroupedConv2d(torch.nn.Conv2d):
    """A convolution that vmap makes one grouped convolution of all replicas in batch-major
    channels-last memory, writing no columns (fastvar.engine.replica_conv); alone, F.conv2d."""
    FORM = "grouped"

    def forward(self, x):
        out = replica_conv2d(x, self.weight, self.stride[0], self.padding[0], self.FORM)
        return out if self.bias is None else out + self.bias[:, None, None]


class ImplicitConv2d(GroupedConv2d):
    """A convolution that vmap runs as Triton implicit GEMMs over all replicas (CUDA, or the
    interpreter), reading the weight as GemmConv2d's taps; alone, F.conv2d."""
    FORM = "implicit"
    WEIGHT_MEMORY_ORDER = GemmConv2d.WEIGHT_MEMORY_ORDER


def one_tap_each(h, w, ho, wo, k, p, tap_ids):
    """For a single output pixel whose every input pixel is joined to it by a tap among `tap_ids`:
    the positions in `tap_ids` of those taps, input pixels in raster order (on a 1×1 image, the tap
    at the padding offset; from 2×2 to 1×1 with stride 2, the four live taps in their own order, so
    the map is a view of the weight); else None."""
    if ho * wo != 1 or not all(0 <= i + p < k and 0 <= j + p < k for i in range(h) for j in range(w)):
        return None
    joined = [(i + p) * k + (j + p) for i in range(h) for j in range(w)]
    ids = list(tap_ids)
    return [ids.index(t) for t in joined] if all(t in ids for t in joined) else None


def tap_selection(h, w, ho, wo, k, s, p, like):
    """(H·W·Ho·Wo × k²), like `like`: 1 where tap (ki, kj) joins input pixel (i, j) to output pixel
    (oi, oj), i.e. i = oi·s - p + ki and j = oj·s - p + kj; rows of pairs no tap joins are zero."""
    def reads(size, out_size):  # [size, out_size, k]: input index == output index · s - p + tap
        read = torch.arange(out_size, device=like.device)[:, None] * s - p + torch.arange(k, device=like.device)
        return torch.arange(size, device=like.device)[:, None, None] == read
    rows, cols = reads(h, ho), reads(w, wo)
    joined = rows[:, None, :, None, :, None] & cols[None, :, None, :, None, :]  # i, j, oi, oj, ki, kj
    return joined.reshape(h * w * ho * wo, k * k).to(like.dtype)


def gemm_convertible(module):
    return (type(module) is torch.nn.Conv2d and module.groups == 1 and module.dilation == (1, 1)
            and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and len({*module.kernel_size}) == len({*module.stride}) == len({*module.padding}) == 1)


def small_convs(structure, input_shape=(3, 32, 32), max_pixels=4):
    """The Conv2d modules whose output has at most `max_pixels` pixels for an input of one example of
    `input_shape` (shapes from a forward on the meta device)."""
    return {structure.get_submodule(name) for name, (_, (ho, wo)) in conv_sizes(structure, input_shape).items()
            if ho * wo <= max_pixels}


class MixedLayerNorm(torch.nn.LayerNorm):
    """LayerNorm in float32 at least, returned in the input's dtype (under vmap, torch's returns a
    bfloat16 input's norm in the weights' float32, which the next lowered layer refuses)."""

    def forward(self, x):
        return F.layer_norm(at_least_float32(x), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class MixedGroupNorm(torch.nn.GroupNorm):
    """GroupNorm in float32 at least, returned in the input's dtype (as MixedLayerNorm, for the same reason)."""

    def forward(self, x):
        return F.group_norm(at_least_float32(x), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


class PaddedEmbedding(torch.nn.Embedding):
    """nn.Embedding with a padding_idx, its padding row's gradient zeroed by the forward itself: under
    vmap, torch's embedding backward zeroes that row for the first replica only (torch 2.13; every
    other replica's padding row trains, as a tied read-out's gradient then shows)."""

    def forward(self, x):
        out = F.embedding(x, self.weight, None, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)
        if self.padding_idx is None:
            return out
        return torch.where((x == self.padding_idx).unsqueeze(-1), out.detach(), out)


MIXED_NORMS = {torch.nn.BatchNorm2d: ElementaryBatchNorm2d, torch.nn.LayerNorm: MixedLayerNorm,
               torch.nn.GroupNorm: MixedGroupNorm}
VMAP_SAFE = {**MIXED_NORMS, torch.nn.Embedding: PaddedEmbedding}


def use_vmap_layers(structure, elementary_norm, gemm_convs, replica_convs=(), replica_class=None):
    """Swap in place every BatchNorm2d, LayerNorm, GroupNorm and Embedding (with `elementary_norm`: under
    vmap or mixed precision) and the Conv2d modules in `gemm_convs`, then in `replica_convs` (as
    `replica_class`; those gemm_convertible) for their written-out twins."""
    for module in structure.modules():
        if elementary_norm and type(module) in VMAP_SAFE:
            module.__class__ = VMAP_SAFE[type(module)]
        elif module in gemm_convs and gemm_convertible(module):
            module.__class__ = GemmConv2d
        elif module in replica_convs and gemm_convertible(module):
            module.__class__ = replica_class
    return structure
