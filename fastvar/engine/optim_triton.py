"""fastvar.engine.optim's updates as Triton kernels, for whole stacks on CUDA: one pass over a span of
the flat [M, P] buffer (parameters, gradient, state), and, in mixed precision, the low-precision copy
of the weights (bfloat16) written by the same pass, the low-precision gradient read as it is.

Equal bit for bit to the torch reference (`BatchedAdam.update`, `BatchedSGD.update`; the tests hold
them so under TRITON_INTERPRET=1): each statement is one rounding of the reference in its order,
compiled without fused multiply-adds (enable_fp_fusion=False), with IEEE division and square root
(div_rn, sqrt_rn); per-replica coefficients are read in the kernel, rounded once to float32 as the
reference rounds them, and constants arrive as float32, as torch rounds a Python number. Elementwise:
no element's result depends on where it sits in the buffer.
"""
import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _bfloat16_bits(x):
    """x rounded to bfloat16 (to nearest, ties to even; NaN stays NaN) as torch rounds it, as int16 bits:
    spelled out, because the interpreter's conversion truncates."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return tl.where(x != x, 0x7FC0, rounded).to(tl.int16)


@triton.jit
def _load_span(param, grad, n, param_row, grad_row, BLOCK: tl.constexpr):
    """This program's replica r and block of entries: where they are, and the parameters and the
    gradient (upcast) there."""
    r = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    at = r * param_row + cols
    p = tl.load(param + at, mask=inside)
    g = tl.load(grad + r * grad_row + cols, mask=inside).to(tl.float32)
    return r, cols, inside, at, p, g


@triton.jit
def _adam_kernel(param, grad, exp_avg, exp_avg_sq, low, step_size, bias2_sqrt, decay, n,
                 param_row, grad_row, low_row, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                 DECAY_MODE: tl.constexpr, WRITE_LOW: tl.constexpr, BLOCK: tl.constexpr):
    r, cols, inside, at, p, g = _load_span(param, grad, n, param_row, grad_row, BLOCK)
    d = tl.load(decay + r)
    if DECAY_MODE == 2:  # decoupled (AdamW): the parameter scaled first
        p = p * d
    if DECAY_MODE == 1:  # L2: added to the gradient
        l2 = p * d
        g = g + l2
    m = tl.load(exp_avg + at, mask=inside) * beta1
    m = m + g * one_minus_beta1
    v = tl.load(exp_avg_sq + at, mask=inside) * beta2
    v_step = g * g
    v = v + v_step * one_minus_beta2
    denom = tl.div_rn(tl.sqrt_rn(v), tl.load(bias2_sqrt + r)) + eps
    step = tl.div_rn(m, denom) * tl.load(step_size + r)
    p = p - step
    tl.store(exp_avg + at, m, mask=inside)
    tl.store(exp_avg_sq + at, v, mask=inside)
    tl.store(param + at, p, mask=inside)
    if WRITE_LOW:
        tl.store(low + r * low_row + cols, _bfloat16_bits(p), mask=inside)


@triton.jit
def _sgd_kernel(param, grad, buffer, low, lr, weight_decay, n, param_row, grad_row, low_row, momentum,
                DECAY: tl.constexpr, MOMENTUM_MODE: tl.constexpr, NESTEROV: tl.constexpr,
                WRITE_LOW: tl.constexpr, BLOCK: tl.constexpr):
    r, cols, inside, at, p, g = _load_span(param, grad, n, param_row, grad_row, BLOCK)
    if DECAY:
        l2 = p * tl.load(weight_decay + r)
        g = g + l2
    if MOMENTUM_MODE != 0:  # 1: the first step (the buffer starts at the gradient), 2: later steps
        b = g
        if MOMENTUM_MODE == 2:
            b = tl.load(buffer + at, mask=inside) * momentum
            b = b + g
        tl.store(buffer + at, b, mask=inside)
        if NESTEROV:
            look = b * momentum
            g = g + look
        else:
            g = b
    step = g * tl.load(lr + r)
    p = p - step
    tl.store(param + at, p, mask=inside)
    if WRITE_LOW:
        tl.store(low + r * low_row + cols, _bfloat16_bits(p), mask=inside)


def adam(update, segments, constants, low):
    """As optim.update_stacked with BatchedAdam.update, for float32 spans of a flat CUDA buffer."""
    k = constants  # a short name in the kernel's long argument list, as c for each segment's coefficients
    mode = 0 if not k["decay"] else 2 if k["decoupled"] else 1
    for seg in segments:
        c = seg.coefficients
        launch(_adam_kernel, seg.param, seg.grad, seg.low, seg.state["exp_avg"], seg.state["exp_avg_sq"],
               c["step_size"], c["bias2_sqrt"], c["decay"], scalars=(k["beta1"], 1 - k["beta1"], k["beta2"],
                                                                    1 - k["beta2"], k["eps"]), DECAY_MODE=mode)


def sgd(update, segments, constants, low):
    """As optim.update_stacked with BatchedSGD.update, for float32 spans of a flat CUDA buffer."""
    k = constants
    mode = 0 if not k["momentum"] else 1 if k["first"] else 2
    for seg in segments:
        c = seg.coefficients
        launch(_sgd_kernel, seg.param, seg.grad, seg.low, seg.state.get("momentum_buffer", seg.param), c["lr"],
               c["weight_decay"], scalars=(k["momentum"],), DECAY=bool(k["decay"]), MOMENTUM_MODE=mode,
               NESTEROV=bool(k["nesterov"]))


def launch(kernel, param, grad, low, *tensors, scalars, **constexprs):
    """One program per block of BLOCK entries and replica (the blocks on the grid's first axis, which
    holds up to 2**31 - 1 programs: the second holds 65,535, a stack of 67 M entries). `tensors`: state
    spans shaped like `param`, then per-replica coefficient vectors (float64, rounded once to float32
    here); `low`, where the span lies in the lowered entries, gets the updated weights in its dtype."""
    m, n = param.shape
    if param.dtype != torch.float32 or param.stride(1) != 1 or grad.stride(1) != 1:
        raise ValueError("the Triton update takes float32 spans of a flat buffer, rows dense")
    args = [t if t.dtype != torch.float64 else t.to(torch.float32).contiguous() for t in tensors]
    states, vectors = [t for t in args if t.dim() == 2], [t for t in args if t.dim() == 1]
    if low is not None and low.dtype != torch.bfloat16:
        raise ValueError("the Triton update writes a bfloat16 copy of the weights only")
    low_bits = param if low is None else low.view(torch.int16)
    kernel[(triton.cdiv(n, BLOCK), m)](param, grad, *states, low_bits, *vectors, n,
                                       param.stride(0), grad.stride(0), 0 if low is None else low.stride(0),
                                       *scalars, WRITE_LOW=low is not None, BLOCK=BLOCK, enable_fp_fusion=False,
                                       **constexprs)


UPDATES = {"BatchedAdam": adam, "BatchedSGD": sgd}
