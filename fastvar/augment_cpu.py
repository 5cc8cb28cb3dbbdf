"""The augmentation as one fused C loop for CPUs (augment_cpu.c), built on first use with the
system's C compiler and loaded through ctypes; equal bit for bit to the torch reference, whose
draws it takes. Where no compiler is found, `load` returns None and the torch reference serves.

Why C: the torch reference makes five passes over each batch (gather, pad, crop, flip, normalise),
which on a CPU cost about 8 µs an image; one pass costs about 3 (benchmarks/augment.py).
"""
import ctypes
import functools
import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("augment_cpu.c")


def cache_dir():
    return Path(os.environ.get("FASTVAR_CACHE") or Path.home() / ".cache" / "fastvar") / "kernels"


@functools.cache
def load():
    """The compiled library, or None (with one line on stderr) where it cannot be built."""
    source = SOURCE.read_bytes()
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    key = hashlib.sha256(source + " ".join(compiler).encode()).hexdigest()[:16]
    library = cache_dir() / f"augment-{key}-{sys.platform}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
            built = Path(scratch) / library.name
            # OpenMP where the compiler has it; a compiler without it still builds the serial loop.
            for flags in (["-fopenmp"], []):
                command = [*compiler, "-O3", "-shared", "-fPIC", *flags, str(SOURCE), "-o", str(built)]
                if compiles(command):
                    built.replace(library)  # atomic: processes building at once each rename a whole file
                    break
            else:
                print("fastvar: no C compiler built the CPU augmentation kernel; using the slower torch "
                      "reference", file=sys.stderr)
                return None
    return ctypes.CDLL(str(library))


def compiles(command):
    try:
        return subprocess.run(command, capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):  # no such compiler, or one that hangs
        return False


def augment_cpu(library, images, example, draws, table, shift, reflect, cutout):
    """E examples (indices `example`) → E×32×32×3 in the table's dtype; `draws` as example_draws gives."""
    n = len(example)
    zeros = torch.zeros(n, dtype=torch.int32)
    ints = {k: zeros if v is None else v.to(torch.int32) for k, v in draws.items()}  # an option off: zeros
    out = torch.empty(n, 32, 32, 3, dtype=table.dtype)
    arrays = [images.contiguous(), example.contiguous(), *(ints[k] for k in ("dy", "dx", "flip", "cut_y", "cut_x"))]
    kernel = getattr(library, f"augment_{table.element_size()}byte")  # 8, 4 or 2: the table's entry size
    kernel(*(ctypes.c_void_p(a.data_ptr()) for a in arrays), ctypes.c_int64(n), ctypes.c_int32(shift),
           ctypes.c_int32(reflect), ctypes.c_int32(cutout), ctypes.c_void_p(table.contiguous().data_ptr()),
           ctypes.c_void_p(out.data_ptr()), ctypes.c_int32(torch.get_num_threads()))
    return out
