"""A replica's convolution as a custom op, `replica_conv2d`, whose own vmap rule runs all M replicas'
convolutions at once without writing im2col columns, in one of two forms:
- "grouped": the replicas as the groups of one cuDNN (or oneDNN) convolution in channels-last memory;
- "implicit": fastvar.engine.implicit_conv's Triton kernels, implicit GEMMs over the stacked replicas.

vmap's own rule for a convolution with batched weights also makes a grouped convolution, but from
replica-major memory ([M, B, C, H, W]), so it copies the input into [B, M·C, H, W] and the output back,
at every layer, forward and backward. The grouped form reads and writes batch-major channels-last memory,
[B, H, W, M, C], and hands its output back in that layout with the replicas as dimension 1
(out_dims=1): a view. Elementwise layers keep a tensor's memory order, so after the first
convolution (which copies its input once) the activations stay in that layout through the network.

The implicit form reads and writes replica-major channels-last memory ([M, B, H, W, C]) with the
weight in the GEMM convolutions' tap layout, both views. Autograd records the physical operations the
rule runs, so under vmap the gradients are those of the grouped convolution or of the kernels' own
backward; alone (one replica, or the loop strategy), the op is `F.conv2d` with its backward.
"""
import torch
import torch.nn.functional as F


@torch.library.custom_op("fastvar::replica_conv2d", mutates_args=())
def replica_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, form: str) -> torch.Tensor:
    """One replica's convolution: B×C×H×W by Cout×C×k×k, no bias; `form`: how vmap runs M of them."""
    return F.conv2d(x, weight, stride=stride, padding=padding)


@replica_conv2d.register_fake
def _(x, weight, stride, padding, form):
    return F.conv2d(x, weight, stride=stride, padding=padding)


def _setup_context(ctx, inputs, output):
    x, weight, stride, padding, _ = inputs
    ctx.save_for_backward(x, weight)
    ctx.stride, ctx.padding = stride, padding


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, [ctx.stride] * 2, [ctx.padding] * 2, [1, 1], False, [0, 0], 1,
        [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
    return grad_x, grad_weight, None, None, None


replica_conv2d.register_autograd(_backward, setup_context=_setup_context)


@replica_conv2d.register_vmap
def _(info, in_dims, x, weight, stride, padding, form):
    x_dim, weight_dim = in_dims[:2]
    m = info.batch_size
    if weight_dim is None:  # one weight for all: a convolution over M·B images
        out = F.conv2d(x.movedim(x_dim, 0).flatten(0, 1), weight, stride=stride, padding=padding)
        return out.unflatten(0, (m, -1)), 0
    return FORMS[form](x, x_dim, weight.movedim(weight_dim, 0), m, stride, padding)


def grouped(x, x_dim, weight, m, stride, padding):
    """M×Cout×C×k×k weights: one convolution with M groups over B × M·C channels, channels-last."""
    # B × M × C × H × W, a view of the batch-major input (a shared one repeated for each replica)
    x = x.unsqueeze(1).expand(-1, m, *x.shape[1:]) if x_dim is None else x.movedim(x_dim, 1)
    b, _, c, h, w = x.shape
    grouped_input = x.permute(0, 3, 4, 1, 2).reshape(b, h, w, m * c).permute(0, 3, 1, 2)  # channels-last
    out = F.conv2d(grouped_input, weight.flatten(0, 1), stride=stride, padding=padding, groups=m)
    return out.unflatten(1, (m, -1)), 1  # group g is replica g


def implicit(x, x_dim, weight, m, stride, padding):
    """M×Cout×C×k×k weights: the Triton implicit GEMMs over M × B × H × W × C (a shared input: stride 0)."""
    from .implicit_conv import stacked_conv2d  # Triton: imported on the path that runs it only
    x = x.unsqueeze(0).expand(m, *x.shape) if x_dim is None else x.movedim(x_dim, 0)
    out = stacked_conv2d(x.permute(0, 1, 3, 4, 2), weight.permute(0, 3, 4, 2, 1), stride, padding)
    return out.permute(0, 1, 4, 2, 3), 0


FORMS = {"grouped": grouped, "implicit": implicit}
