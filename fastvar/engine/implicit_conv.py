"""M replicas' convolutions as implicit GEMMs in Triton: each tile of the im2col matrix is gathered
from the input as the product needs it and never written to memory, forward and backward.

Layout (channels-last, replicas outermost): input [M, B, H, W, C], weight [M, k, k, C, Cout] (the
GEMM convolutions' tap layout, fastvar.engine.vmap_layers.GemmConv2d, so a view of the flat buffer),
output [M, B, Ho, Wo, Cout]. One program per output tile and replica (the tiles on the grid's first
axis, the only one that holds more than 65,535 programs); each output element is one program's sum
in a fixed order, so results are deterministic (no atomics), and float32 products
are IEEE's, not TF32's (bfloat16 inputs accumulate in float32):
- forward:      (B·Ho·Wo × k²·C) gathered from the input, times (k²·C × Cout) read from the weight;
- input grad:   (B·H·W × k²·Cout) gathered from the output gradient (where (i + p - ki) / s is an
                output pixel), times the weight read as (k²·Cout × C);
- weight grad:  (k²·C × B·Ho·Wo) gathered from the input, times (B·Ho·Wo × Cout) of the output grad.
`stacked_conv2d` is the custom op (its backward the other two), tested against F.conv2d per replica
in float64 under TRITON_INTERPRET=1.
"""
import inspect
import os

import torch
import triton
import triton.language as tl


def mend_interpreter_scalars():
    """Triton 3.6's interpreter reads a scalar argument used as a loop bound (`range(0, K, BK)`) as
    int() of a one-element array, which numpy 2.4 refuses ("only 0-dimensional arrays can be converted
    to Python scalars"); Triton 3.9 squeezes the array first. Under TRITON_INTERPRET=1 (kernels run on
    a CPU) with an interpreter that does not, its tensors' __index__ does so too; compiled kernels are
    untouched."""
    from triton.runtime import interpreter
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or "squeeze" in inspect.getsource(original):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))
    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    mend_interpreter_scalars()

BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32
WARPS = 8  # with 4, ptxas spilled on sm_80 and sm_90 (benchmarks/compile_kernels.py; docs/performance.md)


def block_k(t):
    """The reduction tile: half for 4- and 8-byte elements, whose IEEE products hold their operands in
    registers (with 32, float32 spilled on sm_80)."""
    return BLOCK_K if t.element_size() == 2 else BLOCK_K // 2


# Triton compiles a variant per integer argument equal to 1 or divisible by 16. Only the channel
# counts and the channel stride (contiguous, vector loads) are worth one; the rest would multiply the
# variants a study compiles (each layer's sizes) for no gain a test here could show.
SHAPES_AT_RUN_TIME = ["B", "H", "W", "HO", "WO", "sxm", "sxb", "sxh", "sxw", "sgm", "sgb", "sgh", "sgw", "swm",
                      "S", "P", "KW", "K"]


@triton.jit(do_not_specialize=[a for a in SHAPES_AT_RUN_TIME if not a.startswith("sg")])
def _forward_kernel(x, w, out, B, H, W, C, HO, WO, CO, sxm, sxb, sxh, sxw, sxc, swm, S, P, KW, K,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    m = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(2) * BN + tl.arange(0, BN)
    b, oh, ow = rows // (HO * WO), (rows // WO) % HO, rows % WO
    image = b.to(tl.int64)[:, None] * sxb  # 64-bit: a batch may span more than 2**31 elements
    acc = tl.zeros((BM, BN), dtype=tl.float64 if x.dtype.element_ty == tl.float64 else tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        tap, ci = ks // C, ks % C
        ih = oh[:, None] * S - P + (tap // KW)[None, :]
        iw = ow[:, None] * S - P + (tap % KW)[None, :]
        inside = (rows < B * HO * WO)[:, None] & (ks < K)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x + m * sxm + image + ih * sxh + iw * sxw + ci[None, :] * sxc, mask=inside, other=0.0)
        wt = tl.load(w + m * swm + ks[:, None] * CO + cols[None, :], mask=(ks < K)[:, None] & (cols < CO)[None, :],
                     other=0.0)
        acc += tl.dot(a, wt, input_precision="ieee")
    keep = (rows < B * HO * WO)[:, None] & (cols < CO)[None, :]
    at = m * B * HO * WO * CO + rows.to(tl.int64)[:, None] * CO + cols[None, :]
    tl.store(out + at, acc.to(out.dtype.element_ty), mask=keep)


@triton.jit(do_not_specialize=[a for a in SHAPES_AT_RUN_TIME if not a.startswith("sx")])
def _input_grad_kernel(g, w, grad_x, B, H, W, C, HO, WO, CO, sgm, sgb, sgh, sgw, sgc, swm, S, P, KW, K,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    m = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)  # input pixels
    cols = tl.program_id(2) * BN + tl.arange(0, BN)  # input channels
    b, ih, iw = rows // (H * W), (rows // W) % H, rows % W
    image = b.to(tl.int64)[:, None] * sgb
    acc = tl.zeros((BM, BN), dtype=tl.float64 if g.dtype.element_ty == tl.float64 else tl.float32)
    for k0 in range(0, K, BK):  # K = k²·Cout: (tap, output channel)
        ks = k0 + tl.arange(0, BK)
        tap, co = ks // CO, ks % CO
        oh_s = ih[:, None] + P - (tap // KW)[None, :]
        ow_s = iw[:, None] + P - (tap % KW)[None, :]
        oh, ow = oh_s // S, ow_s // S
        hit = (oh_s >= 0) & (ow_s >= 0) & (oh_s % S == 0) & (ow_s % S == 0) & (oh < HO) & (ow < WO)
        inside = (rows < B * H * W)[:, None] & (ks < K)[None, :] & hit
        a = tl.load(g + m * sgm + image + oh * sgh + ow * sgw + co[None, :] * sgc, mask=inside, other=0.0)
        wt = tl.load(w + m * swm + tap[:, None] * (C * CO) + cols[None, :] * CO + co[:, None],
                     mask=(ks < K)[:, None] & (cols < C)[None, :], other=0.0)
        acc += tl.dot(a, wt, input_precision="ieee")
    keep = (rows < B * H * W)[:, None] & (cols < C)[None, :]
    at = m * B * H * W * C + rows.to(tl.int64)[:, None] * C + cols[None, :]
    tl.store(grad_x + at, acc.to(grad_x.dtype.element_ty), mask=keep)


@triton.jit(do_not_specialize=[a for a in SHAPES_AT_RUN_TIME if a != "swm"])
def _weight_grad_kernel(x, g, grad_w, B, H, W, C, HO, WO, CO, sxm, sxb, sxh, sxw, sxc, sgm, sgb, sgh, sgw, sgc,
                        S, P, KW, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    m = tl.program_id(1).to(tl.int64)
    ks = tl.program_id(0) * BM + tl.arange(0, BM)  # (tap, input channel)
    cols = tl.program_id(2) * BN + tl.arange(0, BN)  # output channels
    tap, ci = ks // C, ks % C
    acc = tl.zeros((BM, BN), dtype=tl.float64 if x.dtype.element_ty == tl.float64 else tl.float32)
    for r0 in range(0, B * HO * WO, BK):  # output pixels
        rs = r0 + tl.arange(0, BK)
        b, oh, ow = rs // (HO * WO), (rs // WO) % HO, rs % WO
        ih = oh[None, :] * S - P + (tap // KW)[:, None]
        iw = ow[None, :] * S - P + (tap % KW)[:, None]
        inside = (ks < K)[:, None] & (rs < B * HO * WO)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        b64 = b.to(tl.int64)  # 64-bit: a batch may span more than 2**31 elements
        a = tl.load(x + m * sxm + b64[None, :] * sxb + ih * sxh + iw * sxw + ci[:, None] * sxc, mask=inside, other=0.0)
        gt = tl.load(g + m * sgm + b64[:, None] * sgb + oh[:, None] * sgh + ow[:, None] * sgw + cols[None, :] * sgc,
                     mask=(rs < B * HO * WO)[:, None] & (cols < CO)[None, :], other=0.0)
        acc += tl.dot(a, gt, input_precision="ieee")
    keep = (ks < K)[:, None] & (cols < CO)[None, :]
    tl.store(grad_w + m * (K * CO) + ks[:, None] * CO + cols[None, :], acc.to(grad_w.dtype.element_ty), mask=keep)


def output_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def dense_taps(w):
    """The weight [M, k, k, C, Cout] with each replica's taps dense (any stride between replicas)."""
    inner = w[0] if w.shape[0] else w
    return w if inner.is_contiguous() else w.contiguous()


@torch.library.custom_op("fastvar::stacked_conv2d", mutates_args=())
def stacked_conv2d(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """x [M, B, H, W, C] by w [M, k, k, C, Cout] → [M, B, Ho, Wo, Cout]: replica m's convolution."""
    m, b, h, wd, c = x.shape
    k, co = w.shape[1], w.shape[4]
    ho, wo = output_size(h, k, stride, padding), output_size(wd, k, stride, padding)
    out = torch.empty(m, b, ho, wo, co, dtype=x.dtype, device=x.device)
    w = dense_taps(w)
    grid = (triton.cdiv(b * ho * wo, BLOCK_M), m, triton.cdiv(co, BLOCK_N))
    _forward_kernel[grid](x, w, out, b, h, wd, c, ho, wo, co, *x.stride(), w.stride(0), stride, padding, k, k * k * c,
                          BM=BLOCK_M, BN=BLOCK_N, BK=block_k(x), num_warps=WARPS)
    return out


@stacked_conv2d.register_fake
def _(x, w, stride, padding):
    m, b, h, wd, _ = x.shape
    k, co = w.shape[1], w.shape[4]
    return x.new_empty(m, b, output_size(h, k, stride, padding), output_size(wd, k, stride, padding), co)


@torch.library.custom_op("fastvar::stacked_conv2d_input_grad", mutates_args=())
def stacked_conv2d_input_grad(g: torch.Tensor, w: torch.Tensor, height: int, width: int, stride: int,
                              padding: int) -> torch.Tensor:
    m, b, ho, wo, co = g.shape
    k, c = w.shape[1], w.shape[3]
    grad_x = torch.empty(m, b, height, width, c, dtype=g.dtype, device=g.device)
    w = dense_taps(w)
    grid = (triton.cdiv(b * height * width, BLOCK_M), m, triton.cdiv(c, BLOCK_N))
    _input_grad_kernel[grid](g, w, grad_x, b, height, width, c, ho, wo, co, *g.stride(), w.stride(0), stride, padding,
                             k, k * k * co, BM=BLOCK_M, BN=BLOCK_N, BK=block_k(g), num_warps=WARPS)
    return grad_x


@stacked_conv2d_input_grad.register_fake
def _(g, w, height, width, stride, padding):
    return g.new_empty(g.shape[0], g.shape[1], height, width, w.shape[3])


@torch.library.custom_op("fastvar::stacked_conv2d_weight_grad", mutates_args=())
def stacked_conv2d_weight_grad(x: torch.Tensor, g: torch.Tensor, k: int, stride: int, padding: int) -> torch.Tensor:
    m, b, h, wd, c = x.shape
    ho, wo, co = g.shape[2:]
    grad_w = torch.empty(m, k, k, c, co, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(k * k * c, BLOCK_M), m, triton.cdiv(co, BLOCK_N))
    _weight_grad_kernel[grid](x, g, grad_w, b, h, wd, c, ho, wo, co, *x.stride(), *g.stride(), stride, padding, k,
                              k * k * c, BM=BLOCK_M, BN=BLOCK_N, BK=block_k(x), num_warps=WARPS)
    return grad_w


@stacked_conv2d_weight_grad.register_fake
def _(x, g, k, stride, padding):
    return x.new_empty(x.shape[0], k, k, x.shape[4], g.shape[4])


def _setup_context(ctx, inputs, output):
    x, w, stride, padding = inputs
    ctx.save_for_backward(x, w)
    ctx.stride, ctx.padding = stride, padding


def _backward(ctx, grad):
    x, w = ctx.saved_tensors
    grad_x = grad_w = None
    if ctx.needs_input_grad[0]:
        grad_x = stacked_conv2d_input_grad(grad, w, x.shape[2], x.shape[3], ctx.stride, ctx.padding)
    if ctx.needs_input_grad[1]:
        grad_w = stacked_conv2d_weight_grad(x, grad, w.shape[1], ctx.stride, ctx.padding)
    return grad_x, grad_w, None, None


stacked_conv2d.register_autograd(_backward, setup_context=_setup_context)
