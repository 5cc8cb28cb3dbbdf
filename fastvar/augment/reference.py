"""From the device-resident uint8 dataset to the training batch of all replicas, augmented.

`augment` takes the N×H×W×C uint8 images (any size and channel count), the example indices of all
replicas (M×B) and each replica's augmentation seed, and returns the M×B×C×H×W batch, channels-last
in memory, normalised.
Three backends compute it bit for bit alike: a Triton kernel (one launch, uint8 read once, output
written once) on CUDA; one fused C loop on a CPU (cpu.c, built on first use where a C
compiler is found); and a batched torch reference, the kernels' test oracle and the fallback.

Every random draw of an example is a counter-based hash of (augmentation seed, epoch, example index,
draw number), so an example's augmentation depends on nothing else: not on its position in the
batch, not on the data order, not on the other replicas.

All augmentation happens in pixel space: padding and cutout blank pixels to the value 0, as
torchvision's RandomCrop pads. Normalisation comes last and gives exactly what ToTensor + Normalize
give, (v / 255 - mean) / std in float32, rounded once to the output dtype: the kernels gather it from
a per-channel table of 256 values that torch computes (no arithmetic left in Triton or C to round
differently, e.g. the interpreter's truncating bfloat16 downcast); the reference computes the same
float32 operations elementwise, equal by construction. The C loop and the reference take the same
draws (example_draws); the Triton kernel computes them itself from the same hash.
"""
import functools
from dataclasses import asdict

import torch
import torch.nn.functional as F

from . import cpu as augment_cpu

# Draw numbers: which random value of an example is used for what.
DRAW_FLIP, DRAW_SHIFT_Y, DRAW_SHIFT_X, DRAW_CUT_Y, DRAW_CUT_X = range(5)
MIX = 0x45D9F3B  # below 2**27, so that a 32-bit value times MIX fits an int64 exactly
MASK32 = 0xFFFFFFFF


@functools.lru_cache(maxsize=16)
def normalize_table(mean, std, dtype=torch.float32, device="cpu"):
    """C×256 table: entry [c, v] is (v / 255 - mean[c]) / std[c], rounded once to `dtype`. Made once
    per (mean, std, dtype, device), tuples: a copy to the GPU at every step would wait for the GPU."""
    values = torch.arange(256, dtype=torch.float32) / 255  # as ToTensor computes it, in float32
    table = (values[None, :] - torch.tensor(mean)[:, None]) / torch.tensor(std)[:, None]
    return table.to(dtype=dtype, device=device)


def mix32(x):
    """A 32-bit integer hash (two multiply-xorshift rounds), on int64 tensors holding 32-bit values."""
    x = (((x >> 16) ^ x) * MIX) & MASK32
    x = (((x >> 16) ^ x) * MIX) & MASK32
    return (x >> 16) ^ x


def draw(seeds, epoch, indices, number):
    """Uniform 32-bit draws: seeds, indices int64 tensors (broadcast), epoch and number ints."""
    h = mix32(seeds & MASK32)
    h = mix32(h ^ (seeds >> 32))
    h = mix32(h ^ epoch)
    h = mix32(h ^ indices)
    return mix32(h ^ number)


def check_options(images, flip, pad, translate, cutout, pad_mode, mean, std):
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 N×H×W×C, not {images.dtype} {tuple(images.shape)}")
    side, channels = min(images.shape[1:3]), images.shape[3]
    if pad and translate:
        raise ValueError("pad and translate both shift the image; choose one")
    if pad_mode not in ("zeros", "reflect"):
        raise ValueError(f"pad_mode must be 'zeros' or 'reflect', not {pad_mode!r}")
    if not 0 <= max(pad, translate) < side or not 0 <= cutout <= side:
        raise ValueError(f"pad and translate must be in [0, {side}), cutout in [0, {side}] for {side}-pixel images")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need one value per channel ({channels}), not {len(mean)} and {len(std)}")


def augment(images, indices, seeds, epoch, *, flip=False, pad=0, translate=0, cutout=0, pad_mode="zeros",
            mean, std, dtype=torch.float32, backend="auto"):
    """images N×H×W×C uint8; indices M×B int64; seeds M int64 → M×B×C×H×W in `dtype`.

    flip: horizontal flip with probability 0.5. pad: random crop after padding by `pad` pixels,
    zeros as torchvision's RandomCrop (or `pad_mode="reflect"`). translate: airbench's random
    translation, i.e. a crop after reflect padding. cutout: a k×k square, inside the image, blanked.
    mean, std: C floats in the [0, 1] pixel scale. backend: "auto" (Triton on CUDA, the C loop on
    a CPU where a compiler built it, else torch), "triton", "c", "torch".
    """
    check_options(images, flip, pad, translate, cutout, pad_mode, mean, std)
    shift, reflect = max(pad, translate), bool(translate) or pad_mode == "reflect"
    if backend not in ("auto", "triton", "c", "torch"):
        raise ValueError(f"unknown backend {backend!r}; choose from auto, triton, c, torch")
    if backend == "auto":
        backend = "triton" if images.is_cuda else "c" if augment_cpu.load() else "torch"
    if backend == "triton":
        from .triton_kernel import augment_triton
        table = normalize_table(tuple(mean), tuple(std), dtype, images.device)
        out = augment_triton(images, indices, seeds, epoch, table, flip, shift, reflect, cutout)
    else:
        example = indices.reshape(-1)
        draws = example_draws(seeds, epoch, indices, flip, shift, cutout, images.shape[1:3])
        if backend == "torch":
            out = augment_torch(images, example, draws, mean, std, dtype, shift, reflect, cutout)
        else:
            out = augment_c(images, example, draws, mean, std, dtype, shift, reflect, cutout)
    return out.view(*indices.shape, *images.shape[1:]).movedim(-1, -3)  # channels-last: M×B×H×W×C in memory


def augment_c(images, example, draws, mean, std, dtype, shift, reflect, cutout):
    library = augment_cpu.load()
    if library is None or images.device.type != "cpu":
        raise RuntimeError("the C augmentation runs on CPU tensors, where a C compiler built it")
    # C reads memory unchecked (torch's index_select checks its own, with no read on the host)
    if len(example) and not 0 <= int(example.min()) <= int(example.max()) < len(images):
        raise IndexError(f"example indices must lie in [0, {len(images)})")
    table = normalize_table(tuple(mean), tuple(std), dtype, images.device)
    return augment_cpu.augment_cpu(library, images, example, draws, table, shift, reflect, cutout)


def pad_images(x, shift, reflect):
    """E×H×W×C → E×(H+2s)×(W+2s)×C, zeros (torchvision's RandomCrop) or reflected (airbench)."""
    if not reflect or not shift:
        return F.pad(x, (0, 0, shift, shift, shift, shift))
    for dim in (1, 2):  # rows, then columns: the edge row or column itself is not repeated
        before, after = x.narrow(dim, 1, shift).flip(dim), x.narrow(dim, x.shape[dim] - 1 - shift, shift).flip(dim)
        x = torch.cat([before, x, after], dim)
    return x


def example_draws(seeds, epoch, indices, flip, shift, cutout, size):
    """Each example's integer draws (int64 [E], None where the option is off): crop offsets dy, dx in
    [0, 2·shift], flip in {0, 1}, cutout corner cut_y in [0, H - cutout], cut_x in [0, W - cutout]
    for images of `size` (H, W); E = M×B, row-major."""
    example = indices.reshape(-1)
    seed = seeds.to(indices.device).repeat_interleave(indices.shape[1])

    def uniform(number, n, on):  # one integer draw in [0, n) per example
        return draw(seed, epoch, example, number) % n if on else None
    return {"dy": uniform(DRAW_SHIFT_Y, 2 * shift + 1, shift), "dx": uniform(DRAW_SHIFT_X, 2 * shift + 1, shift),
            "flip": uniform(DRAW_FLIP, 2, flip),
            "cut_y": uniform(DRAW_CUT_Y, size[0] + 1 - cutout, cutout),
            "cut_x": uniform(DRAW_CUT_X, size[1] + 1 - cutout, cutout)}


def augment_torch(images, example, draws, mean, std, dtype, shift, reflect, cutout):
    """The reference: all E examples at once in block copies, no per-example Python or per-pixel
    index arithmetic. Returns E×H×W×C."""
    x = images.index_select(0, example)  # E×H×W×C uint8, a copy
    height, width = x.shape[1:3]
    every = torch.arange(len(example), device=x.device)
    if shift:
        windows = pad_images(x, shift, reflect).unfold(1, height, 1).unfold(2, width, 1)  # E×(2s+1)²×C×H×W
        x = windows.permute(0, 1, 2, 4, 5, 3)[every, draws["dy"], draws["dx"]]
    if draws["flip"] is not None:  # of the crop, as RandomHorizontalFlip after RandomCrop
        flipped = draws["flip"].bool()
        x[flipped] = x[flipped].flip(2)
    if cutout:  # in place, through a view of all k×k squares: one index per example, no mask
        squares = x.unfold(1, cutout, 1).unfold(2, cutout, 1)  # E×(H+1-k)×(W+1-k)×C×k×k
        squares[every, draws["cut_y"], draws["cut_x"]] = 0
    return normalize_rows(x.reshape(len(x), -1), mean, std, dtype).view(x.shape)


def normalize_rows(x, mean, std, dtype, cpu_chunk=64):
    """E×(H·W·C) uint8 (HWC rows) → the same in `dtype`, by the float32 operations that build
    normalize_table, elementwise, so each pixel equals its table entry.

    In place, on a CPU `cpu_chunk` images at a time: the float32 intermediates stay in cache (passes
    over the whole batch are memory-bound there; docs/performance.md); on a GPU in one chunk. Mean and std
    as whole rows: a broadcast over an inner dimension of C is slow. A row of 255s too:
    CUDA divides by a scalar as a multiplication by its reciprocal, which rounds differently."""
    chunk = cpu_chunk if x.device.type == "cpu" else max(len(x), 1)
    pixels = x.shape[1] // len(mean)
    mean_row = torch.tensor(mean, device=x.device).repeat(pixels)
    std_row = torch.tensor(std, device=x.device).repeat(pixels)
    scale_row = torch.full_like(mean_row, 255)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    scratch = None if dtype == torch.float32 else torch.empty(min(chunk, len(x)), x.shape[1], device=x.device)
    for start in range(0, len(x), chunk):
        rows = x[start:start + chunk]
        part = out[start:start + chunk] if scratch is None else scratch[:len(rows)]
        part.copy_(rows).div_(scale_row).sub_(mean_row).div_(std_row)
        if scratch is not None:  # rounded once, from float32, to the output dtype
            out[start:start + chunk].copy_(part)
    return out


def batch_inputs(x, indices, aug_seeds, epoch, recipe, dtype, backend="auto", augmented=True):
    """The M×B batch the replicas train on: uint8 N×H×W×C images augmented as `recipe` (a
    fastvar.Recipe) says (unless not `augmented`) and normalised (M×B×C×H×W), float features N×D
    as they are, in `dtype` (M×B×D), or int64 tokens N×T as they are (M×B×T). `backend` as augment
    takes it."""
    if not x.is_floating_point() and x.dtype != torch.uint8:
        return x[indices]
    if x.dtype != torch.uint8:
        return x[indices].to(dtype)
    mean, std = (per_channel(values, x.shape[3]) for values in (recipe.mean, recipe.std))
    options = asdict(recipe.augment) if augmented else {}
    return augment(x, indices, aug_seeds, epoch, **options, mean=mean, std=std, dtype=dtype, backend=backend)


def per_channel(values, channels):
    """A recipe's mean or std for images of `channels` channels: as given, or one value for every
    channel where the recipe gives the same value for each (the seed recipe's 0.5)."""
    return values if len(values) == channels or len(set(values)) != 1 else [values[0]] * channels


def normalized(images, indices, recipe, dtype, backend="auto"):
    """images[indices] as the model sees them in evaluation: normalised, not augmented (uint8 NHWC),
    or features and tokens as they are."""
    return batch_inputs(images, indices[None], torch.zeros(1, dtype=torch.int64), 0, recipe, dtype, backend,
                        augmented=False)[0]
