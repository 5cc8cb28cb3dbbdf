"""The augmentation: Triton kernel == torch reference bit for bit, both == a plain numpy oracle,
independent of batch and order, with the right statistics."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import needs_triton
from fastvar.augment import cpu as augment_cpu
from fastvar.augment.reference import DRAW_CUT_X, DRAW_CUT_Y, DRAW_FLIP, DRAW_SHIFT_X, DRAW_SHIFT_Y, augment, draw

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
OPTIONS = [dict(), dict(flip=True), dict(pad=4), dict(pad=4, flip=True), dict(pad=3, pad_mode="reflect"),
           dict(translate=2), dict(cutout=12), dict(flip=True, translate=2, cutout=12),
           dict(flip=True, pad=4, cutout=8)]
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU runs it under TRITON_INTERPRET=1


def random_input(n_images, m, b, seed, size=(32, 32, 3)):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_images, *size), dtype=torch.uint8, generator=g)
    indices = torch.randint(0, n_images, (m, b), generator=g)
    seeds = torch.randint(0, 2 ** 63 - 1, (m,), generator=g)
    return images, indices, seeds


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "+".join(f"{k}{v}" for k, v in o.items()) or "none")
@pytest.mark.parametrize("backend", ["triton", "c"])
def test_kernels_equal_torch_reference(options, dtype, backend):
    if backend == "triton":
        needs_triton()
    elif os.environ.get("CI"):
        assert augment_cpu.load() is not None, "CI has a C compiler: the CPU kernel must build"
    elif augment_cpu.load() is None:
        pytest.skip("no C compiler on this machine")
    for epoch in (1, 7):  # 1: a compiled kernel must not take the epoch for a constant
        compare_kernel_and_reference(options, dtype, epoch, backend)


def compare_kernel_and_reference(options, dtype, epoch, backend):
    images, indices, seeds = random_input(40, 3, 5, seed=len(str(options)))  # odd batch size
    kwargs = dict(options, mean=MEAN, std=STD, dtype=dtype)
    reference = augment(images, indices, seeds, epoch, backend="torch", **kwargs)
    on_device = [t.to(KERNEL_DEVICE if backend == "triton" else "cpu") for t in (images, indices, seeds)]
    kernel = augment(*on_device, epoch, backend=backend, **kwargs)
    assert kernel.shape == (3, 5, 3, 32, 32) and kernel.dtype == dtype
    assert torch.equal(kernel.cpu(), reference)
    assert kernel[1].is_contiguous(memory_format=torch.channels_last)
    if backend == "triton" and KERNEL_DEVICE == "cuda":  # the reference on the GPU too: the same function
        assert torch.equal(augment(*on_device, epoch, backend="torch", **kwargs).cpu(), reference)


def numpy_oracle(image, seed, epoch, index, flip=False, pad=0, translate=0, cutout=0, pad_mode="zeros",
                 mean=MEAN, std=STD):
    """One example (H×W×C) rebuilt from its draws alone: pad, slice, flip, blank the cutout, normalise."""
    height, width = image.shape[:2]
    def uniform(number, n):
        return int(draw(torch.tensor(seed), epoch, torch.tensor(index), number)) % n
    shift = max(pad, translate)
    mode = "reflect" if translate or pad_mode == "reflect" else "constant"
    padded = np.pad(image, ((shift, shift), (shift, shift), (0, 0)), mode=mode)
    top, left = (uniform(DRAW_SHIFT_Y, 2 * shift + 1), uniform(DRAW_SHIFT_X, 2 * shift + 1)) if shift else (0, 0)
    out = padded[top:top + height, left:left + width].copy()
    if flip and uniform(DRAW_FLIP, 2):
        out = out[:, ::-1]
    if cutout:
        y, x = uniform(DRAW_CUT_Y, height + 1 - cutout), uniform(DRAW_CUT_X, width + 1 - cutout)
        out[y:y + cutout, x:x + cutout] = 0
    scaled = out.astype(np.float32) / np.float32(255)
    return ((scaled - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)


@pytest.mark.parametrize("options", OPTIONS[1:], ids=lambda o: "+".join(f"{k}{v}" for k, v in o.items()))
def test_reference_matches_a_plain_numpy_oracle(options):
    images, indices, seeds = random_input(30, 2, 6, seed=1)
    out = augment(images, indices, seeds, 3, mean=MEAN, std=STD, backend="torch", **options)
    for r in range(2):
        for j in range(6):
            expected = numpy_oracle(images[indices[r, j]].numpy(), int(seeds[r]), 3, int(indices[r, j]), **options)
            assert np.array_equal(out[r, j].numpy(), expected), (options, r, j)


SIZES = [(28, 28, 1), (40, 40, 3), (24, 36, 2)]  # MNIST, larger, and neither square nor RGB


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("options", [dict(flip=True, pad=4, cutout=8), dict(flip=True, translate=3, cutout=5)],
                         ids=["pad", "translate"])
def test_every_image_size_gives_the_same_bits_on_every_path_and_the_oracles(size, options):
    channels = size[2]
    mean, std = MEAN[:channels] + (0.5,) * (channels - len(MEAN)), STD[:channels] + (0.25,) * (channels - len(STD))
    images, indices, seeds = random_input(20, 2, 5, seed=channels, size=size)
    kwargs = dict(options, mean=mean, std=std)
    reference = augment(images, indices, seeds, 2, backend="torch", **kwargs)
    assert reference.shape == (2, 5, channels, *size[:2])
    for r in range(2):
        for j in range(5):
            expected = numpy_oracle(images[indices[r, j]].numpy(), int(seeds[r]), 2, int(indices[r, j]), **kwargs)
            assert np.array_equal(reference[r, j].numpy(), expected), (r, j)
    needs_triton()
    backends = ["triton"] + (["c"] if augment_cpu.load() is not None else [])
    for backend in backends:
        device = KERNEL_DEVICE if backend == "triton" else "cpu"
        out = augment(*(t.to(device) for t in (images, indices, seeds)), 2, backend=backend, **kwargs)
        assert torch.equal(out.cpu(), reference), backend


def test_the_oracle_catches_a_shift_by_one():
    images, indices, seeds = random_input(30, 1, 16, seed=2)
    out = augment(images, indices, seeds, 0, pad=4, mean=MEAN, std=STD)
    moved = torch.roll(out, 1, dims=-1)
    oracle = [numpy_oracle(images[i].numpy(), int(seeds[0]), 0, int(i), pad=4) for i in indices[0]]
    assert not all(np.array_equal(moved[0, j].numpy(), oracle[j]) for j in range(16))
    plain = augment(images, indices, seeds, 0, mean=MEAN, std=STD)  # a no-op augmentation
    assert not all(np.array_equal(plain[0, j].numpy(), oracle[j]) for j in range(16))


def test_order_and_batch_independence():
    images, indices, seeds = random_input(600, 1, 512, seed=3)
    options = dict(flip=True, translate=2, cutout=12, mean=MEAN, std=STD)
    full = augment(images, indices, seeds, 5, **options)
    perm = torch.randperm(512, generator=torch.Generator().manual_seed(0))
    assert torch.equal(augment(images, indices[:, perm], seeds, 5, **options), full[:, perm])
    for j in (0, 77, 511):
        alone = augment(images, indices[:, j:j + 1], seeds, 5, **options)
        assert torch.equal(alone[0, 0], full[0, j])
    other = torch.stack([seeds[0], seeds[0] + 1])  # a second replica does not change the first
    assert torch.equal(augment(images, indices.expand(2, -1), other, 5, **options)[0], full[0])


def test_draw_statistics():
    n = 20_000
    index = torch.arange(n)
    flips = (draw(torch.tensor(11), 0, index, DRAW_FLIP) % 2).double()
    assert abs(flips.mean().item() - 0.5) < 4 * (0.25 / n) ** 0.5
    offsets = draw(torch.tensor(11), 0, index, DRAW_SHIFT_X) % 9  # pad 4: nine offsets
    counts = torch.bincount(offsets, minlength=9).double()
    chi_square = ((counts - n / 9) ** 2 / (n / 9)).sum().item()
    assert chi_square < 26.1  # 8 degrees of freedom, p = 0.001
    base = draw(torch.tensor(11), 0, index, DRAW_FLIP)
    for changed in (draw(torch.tensor(12), 0, index, DRAW_FLIP), draw(torch.tensor(11), 1, index, DRAW_FLIP)):
        assert (changed != base).double().mean() > 0.99  # another seed or epoch: other draws


def test_without_a_c_compiler_auto_falls_back_to_the_reference(tmp_path):
    """A fresh process with no usable compiler: one line on stderr, then the torch reference's output."""
    script = """
import sysconfig, torch
sysconfig.get_config_vars()["CC"] = "no-such-compiler"
from fastvar.augment import augment
g = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8, generator=g)
args = (images, torch.arange(6).view(2, 3), torch.tensor([1, 2]), 0)
kw = dict(flip=True, pad=2, mean=(0.5,) * 3, std=(0.5,) * 3)
assert torch.equal(augment(*args, **kw), augment(*args, backend="torch", **kw))
"""
    env = dict(os.environ, FASTVAR_CACHE=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("fastvar: no C compiler") == 1 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("backend", ["torch", "c"])
def test_an_index_outside_the_images_is_an_error_not_a_stray_read(backend):
    images, indices, seeds = random_input(10, 1, 4, seed=0)
    indices[0, 2] = 10
    if backend == "c" and augment_cpu.load() is None:
        pytest.skip("no C compiler on this machine")
    with pytest.raises(IndexError):
        augment(images, indices, seeds, 0, mean=MEAN, std=STD, backend=backend)
