"""C kernels for CPUs (the package's `*.c` files), built on first use with the system's C compiler
into a cache folder and loaded through ctypes. Each has a torch reference it equals bit for bit, so
where no compiler is found `load` returns None (with one line on stderr) and the reference serves.

Flags: -O3 vectorises with IEEE-exact instructions only; -ffp-contract=off forbids fused
multiply-adds, which round once where the torch reference rounds twice; -fno-math-errno lets
sqrtf be the one instruction it is (it changes no result, only errno for negative inputs).
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

FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]


def cache_dir():
    return Path(os.environ.get("FASTVAR_CACHE") or Path.home() / ".cache" / "fastvar") / "kernels"


@functools.cache
def load(source_path, purpose):
    """The C file at `source_path` compiled, or None (with one line on stderr naming its `purpose`)."""
    name = f"{source_path.parent.name}_{source_path.stem}"  # augment_cpu, engine_optim_cpu
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    key = hashlib.sha256(source_path.read_bytes() + " ".join(compiler + FLAGS).encode()).hexdigest()[:16]
    library = cache_dir() / f"{name}-{key}-{sys.platform}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
            built = Path(scratch) / library.name
            # OpenMP where the compiler has it; a compiler without it still builds the serial loop.
            for openmp in (["-fopenmp"], []):
                if compiles([*compiler, *FLAGS, *openmp, str(source_path), "-o", str(built)]):
                    built.replace(library)  # atomic: processes building at once each rename a whole file
                    break
            else:
                print(f"fastvar: no C compiler built the CPU {purpose} kernel; using the slower torch reference",
                      file=sys.stderr)
                return None
    return ctypes.CDLL(str(library))


def compiles(command):
    try:
        return subprocess.run(command, capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):  # no such compiler, or one that hangs
        return False


def pointer(tensor):
    return ctypes.c_void_p(tensor.data_ptr())


def retain_freed_memory():
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the system. By
    default a freed block of more than 128 kB goes back to the system, and the next step's identical
    temporaries fault in fresh zeroed pages (its cost: docs/performance.md). A
    process-wide setting, so the command line and the benchmark make it, not the library; a no-op
    where the C library is not glibc."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        for option in (-1, -3):  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
            mallopt(option, 1 << 30)
