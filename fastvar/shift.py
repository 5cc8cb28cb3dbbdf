"""The built-in shifted test set (`--eval-shift`): the test images under fixed corruptions, made here,
no download. Image i of the test set as trained (after any --test-subset) takes corruption i mod 3:

- 0, Gaussian noise of SD NOISE_SD (of the 0..255 range), drawn from a generator seeded SHIFT_SEED;
- 1, Gaussian blur of SD BLUR_SD pixels (separable, reflected at the border);
- 2, contrast scaled by CONTRAST about the image's mean.

The severities are those of CIFAR-10-C's middle-to-high levels (Hendrycks & Dietterich, 2019). Every
step is exact in float64 (integer means, a fixed order of additions), then rounded to uint8, so the
set is the same bytes on every machine; a folder's config records that it was used.
"""
import numpy as np

NAME = "shift"
SHIFT_SEED = 20190328  # any fixed number: the noise is part of the set
NOISE_SD = 0.08  # CIFAR-10-C gaussian_noise, severity 3
BLUR_SD = 1.0  # CIFAR-10-C gaussian_blur, severity 5
CONTRAST = 0.3  # CIFAR-10-C contrast, severity 4
CORRUPTIONS = ("noise", "blur", "contrast")  # image i: CORRUPTIONS[i % 3]


def shifted(images):
    """The shifted copy of uint8 images N×H×W×C (numpy), each under its corruption."""
    images = np.asarray(images)
    out = images.copy()
    for k, corrupt in enumerate((noisy, blurred, low_contrast)):
        out[k::3] = corrupt(images[k::3])
    return out


def to_uint8(values):
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def noisy(images):
    noise = np.random.default_rng(SHIFT_SEED).standard_normal(images.shape)
    return to_uint8(images + noise * (NOISE_SD * 255))


def gaussian_taps(sd):
    radius = int(np.ceil(3 * sd))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sd) ** 2)
    return taps / taps.sum()


def blurred(images):
    """A separable Gaussian blur: along the rows, then the columns, the taps added in a fixed order."""
    taps = gaussian_taps(BLUR_SD)
    radius = len(taps) // 2
    out = images.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        size = out.shape[axis]
        out = sum(w * padded.take(np.arange(k, k + size), axis=axis) for k, w in enumerate(taps))
    return to_uint8(out)


def low_contrast(images):
    if not len(images):
        return images
    total = images.reshape(len(images), -1).sum(1, dtype=np.int64)  # exact
    mean = (total / images[0].size).reshape(-1, *[1] * (images.ndim - 1))
    return to_uint8((images - mean) * CONTRAST + mean)
