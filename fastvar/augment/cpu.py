"""The augmentation as one fused C loop for CPUs (cpu.c), built on first use with the
system's C compiler (fastvar.native); equal bit for bit to the torch reference, whose
draws it takes. Where no compiler is found, `load` returns None and the torch reference serves.

Why C: the torch reference makes five passes over each batch (gather, pad, crop, flip, normalise),
which on a CPU cost about 8 µs an image; one pass costs about 3 (benchmarks/augment.py).
"""
import ctypes
from pathlib import Path

import torch

from .. import native


def load():
    """The compiled augmentation kernel, or None where no compiler builds it."""
    return native.load(Path(__file__).with_name("cpu.c"), "augmentation")


def augment_cpu(library, images, example, draws, table, shift, reflect, cutout):
    """E examples (indices `example`) of N×H×W×C `images` → E×H×W×C in the table's dtype; `draws` as
    example_draws gives."""
    n = len(example)
    zeros = torch.zeros(n, dtype=torch.int32)
    ints = {k: zeros if v is None else v.to(torch.int32) for k, v in draws.items()}  # an option off: zeros
    height, width, channels = images.shape[1:]
    out = torch.empty(n, height, width, channels, dtype=table.dtype)
    # Held in variables, not passed as temporaries, which would be freed before the kernel reads them
    arrays = [images.contiguous(), example.contiguous(), *(ints[k] for k in ("dy", "dx", "flip", "cut_y", "cut_x"))]
    table = table.contiguous()
    kernel = getattr(library, f"augment_{table.element_size()}byte")  # 8, 4 or 2: the table's entry size
    kernel(*(native.pointer(a) for a in arrays), ctypes.c_int64(n), *map(ctypes.c_int32, (height, width, channels)),
           ctypes.c_int32(shift),
           ctypes.c_int32(reflect), ctypes.c_int32(cutout), native.pointer(table),
           native.pointer(out), ctypes.c_int32(torch.get_num_threads()))
    return out
