"""Layers rewritten from elementary operations, for the vmap strategy: the same functions as
nn.BatchNorm2d and nn.Conv2d up to rounding, in a form vmap batches well on every device.

- ElementaryBatchNorm2d: vmap's own BatchNorm rule fails on CUDA (it asks a batched tensor for its
  memory format) and takes one dtype only; statistics here are in float32 at least.
- GemmConv2d: vmap turns M replicas' convolutions into one grouped convolution, which cuDNN runs far
  from the tensor cores' rate (and whose compiled backward trips a stride check). As an explicit
  im2col and one matrix product, vmap makes it one batched matrix product over replicas, with
  large matrices: (Cout × C·k²) by (C·k² × B·Ho·Wo).

`use_vmap_layers` swaps them into a structure-only model (the state comes from elsewhere), keeping
every parameter's and buffer's name and shape, so state dicts stay interchangeable.
"""
import torch
import torch.nn.functional as F


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
    """A convolution as im2col (k² strided slices of the padded input) and one matrix product."""

    def forward(self, x):
        (k, _), (s, _), (p, _) = self.kernel_size, self.stride, self.padding
        b, c, h, w = x.shape
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        padded = F.pad(x, (p, p, p, p))
        taps = [padded[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] for i in range(k) for j in range(k)]
        cols = torch.stack(taps, dim=2).permute(1, 2, 0, 3, 4).reshape(c * k * k, b * ho * wo)
        out = (self.weight.reshape(self.out_channels, -1) @ cols).reshape(self.out_channels, b, ho, wo)
        out = out.transpose(0, 1)
        return out if self.bias is None else out + self.bias[:, None, None]


def gemm_convertible(module):
    return (type(module) is torch.nn.Conv2d and module.groups == 1 and module.dilation == (1, 1)
            and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and len({*module.kernel_size}) == len({*module.stride}) == len({*module.padding}) == 1)


def use_vmap_layers(structure, gemm_conv):
    """Swap every BatchNorm2d (and, with `gemm_conv`, every plain square Conv2d) in place."""
    for module in structure.modules():
        if type(module) is torch.nn.BatchNorm2d:
            module.__class__ = ElementaryBatchNorm2d
        elif gemm_conv and gemm_convertible(module):
            module.__class__ = GemmConv2d
    return structure
