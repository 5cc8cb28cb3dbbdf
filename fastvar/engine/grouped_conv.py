"""A convolution whose replicas, under vmap, become the groups of one cuDNN (or oneDNN) convolution in
channels-last memory, with no im2col columns: `replica_conv2d`, a custom op with its own vmap rule.

vmap's own rule for a convolution with batched weights also makes a grouped convolution, but from
replica-major memory ([M, B, C, H, W]), so it copies the input into [B, M·C, H, W] and the output back,
at every layer, forward and backward. This rule reads and writes batch-major channels-last memory,
[B, H, W, M, C], and hands its output back in that layout with the replicas as dimension 1
(out_dims=1): a view. Elementwise layers keep a tensor's memory order, so after the first
convolution (which copies its input once) the activations stay in that layout through the network.

Autograd records the physical convolutions the rule runs, so under vmap the gradients are those of
the grouped convolution; alone (one replica, or the loop strategy), the op is `F.conv2d` with its
own backward.
"""
import torch
import torch.nn.functional as F


@torch.library.custom_op("fastvar::replica_conv2d", mutates_args=())
def replica_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """One replica's convolution: B×C×H×W by Cout×C×k×k, no bias."""
    return F.conv2d(x, weight, stride=stride, padding=padding)


@replica_conv2d.register_fake
def _(x, weight, stride, padding):
    return F.conv2d(x, weight, stride=stride, padding=padding)


def _setup_context(ctx, inputs, output):
    x, weight, stride, padding = inputs
    ctx.save_for_backward(x, weight)
    ctx.stride, ctx.padding = stride, padding


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, [ctx.stride] * 2, [ctx.padding] * 2, [1, 1], False, [0, 0], 1,
        [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
    return grad_x, grad_weight, None, None


replica_conv2d.register_autograd(_backward, setup_context=_setup_context)


@replica_conv2d.register_vmap
def _(info, in_dims, x, weight, stride, padding):
    x_dim, weight_dim, _, _ = in_dims
    m = info.batch_size
    if weight_dim is None:  # one weight for all: a convolution over M·B images
        out = F.conv2d(x.movedim(x_dim, 0).flatten(0, 1), weight, stride=stride, padding=padding)
        return out.unflatten(0, (m, -1)), 0
    weight = weight.movedim(weight_dim, 0).flatten(0, 1)  # M·Cout × C × k × k: group g is replica g
    # B × M × C × H × W, a view of the batch-major input (a shared one repeated for each replica)
    x = x.unsqueeze(1).expand(-1, m, *x.shape[1:]) if x_dim is None else x.movedim(x_dim, 1)
    b, _, c, h, w = x.shape
    grouped = x.permute(0, 3, 4, 1, 2).reshape(b, h, w, m * c).permute(0, 3, 1, 2)  # channels-last
    out = F.conv2d(grouped, weight, stride=stride, padding=padding, groups=m)
    return out.unflatten(1, (m, -1)), 1
