"""The augmentation as one Triton kernel: a program per example, uint8 read once, output written once.

It mirrors `augment.augment_torch` draw for draw (the same hash, in uint32 arithmetic where the
reference masks int64), and the tests hold the two equal bit for bit under TRITON_INTERPRET=1.
"""
import torch
import triton
import triton.language as tl

from . import reference as augment

# A compiled kernel reads module globals only as constexpr (the interpreter is not as strict).
MIX = tl.constexpr(augment.MIX)
DRAW_FLIP, DRAW_SHIFT_Y, DRAW_SHIFT_X, DRAW_CUT_Y, DRAW_CUT_X = (
    tl.constexpr(d) for d in (augment.DRAW_FLIP, augment.DRAW_SHIFT_Y, augment.DRAW_SHIFT_X, augment.DRAW_CUT_Y,
                              augment.DRAW_CUT_X))


@triton.jit
def _mix32(x):
    x = ((x >> 16) ^ x) * MIX
    x = ((x >> 16) ^ x) * MIX
    return (x >> 16) ^ x


@triton.jit
def _uniform(seed_lo, seed_hi, epoch, example, number, n):
    h = _mix32(seed_lo)
    h = _mix32(h ^ seed_hi)
    h = _mix32(h ^ epoch)
    h = _mix32(h ^ example)
    h = _mix32(h ^ number)
    return (h % tl.cast(n, tl.uint32)).to(tl.int32)


# Triton compiles an integer argument equal to 1 as a constant (a Python int, with no `.to`): the
# epoch and the batch size must stay run-time values (seen on an H100: epoch 1 failed to compile).
@triton.jit(do_not_specialize=["epoch", "per_replica", "shift", "cutout"])
def _augment_kernel(images, indices, seeds, table, out, epoch, per_replica, shift, cutout,
                    H: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
                    FLIP: tl.constexpr, REFLECT: tl.constexpr, CUTOUT: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    example = tl.load(indices + pid).to(tl.int64)
    seed = tl.load(seeds + pid // per_replica)
    seed_lo, seed_hi = seed.to(tl.uint32), (seed >> 32).to(tl.uint32)
    ep, ex = epoch.to(tl.uint32), example.to(tl.uint32)
    lane = tl.arange(0, BLOCK)
    live = lane < H * W * C
    row, out_col, channel = lane // (W * C), (lane // C) % W, lane % C
    col = out_col
    if FLIP:  # of the crop: the output column reads from the mirrored column
        flip = _uniform(seed_lo, seed_hi, ep, ex, DRAW_FLIP, 2)
        col = tl.where(flip == 1, W - 1 - out_col, out_col)
    src_row = row + _uniform(seed_lo, seed_hi, ep, ex, DRAW_SHIFT_Y, 2 * shift + 1) - shift
    src_col = col + _uniform(seed_lo, seed_hi, ep, ex, DRAW_SHIFT_X, 2 * shift + 1) - shift
    if REFLECT:
        src_row = tl.where(src_row < 0, -src_row, src_row)
        src_row = tl.where(src_row > H - 1, 2 * (H - 1) - src_row, src_row)
        src_col = tl.where(src_col < 0, -src_col, src_col)
        src_col = tl.where(src_col > W - 1, 2 * (W - 1) - src_col, src_col)
    inside = (src_row >= 0) & (src_row <= H - 1) & (src_col >= 0) & (src_col <= W - 1)
    pixel = tl.load(images + example * (H * W * C) + (src_row * W + src_col) * C + channel, mask=live & inside,
                    other=0)
    if CUTOUT:
        top = _uniform(seed_lo, seed_hi, ep, ex, DRAW_CUT_Y, H + 1 - cutout)
        left = _uniform(seed_lo, seed_hi, ep, ex, DRAW_CUT_X, W + 1 - cutout)
        blank = (row >= top) & (row < top + cutout) & (out_col >= left) & (out_col < left + cutout)
        pixel = tl.where(blank, 0, pixel)
    value = tl.load(table + channel * 256 + pixel.to(tl.int32), mask=live)
    tl.store(out + pid.to(tl.int64) * (H * W * C) + lane, value, mask=live)


def augment_triton(images, indices, seeds, epoch, table, flip, shift, reflect, cutout):
    """Launcher: N×H×W×C uint8 images → M×B×H×W×C (channels-last memory of the M×B×C×H×W batch)."""
    m, b = indices.shape
    height, width, channels = images.shape[1:]
    out = torch.empty(m, b, height, width, channels, dtype=table.dtype, device=images.device)
    _augment_kernel[(m * b,)](images.contiguous(), indices.contiguous(), seeds.to(images.device).contiguous(),
                              table.contiguous(), out, epoch, b, shift, cutout, H=height, W=width, C=channels,
                              FLIP=bool(flip), REFLECT=bool(reflect), CUTOUT=cutout > 0,
                              BLOCK=triton.next_power_of_2(height * width * channels))
    return out
