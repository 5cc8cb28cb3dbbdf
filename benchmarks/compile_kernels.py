"""Every Triton kernel of fastvar compiled ahead of time for sm_80 and sm_90, on a machine with no GPU.

    python benchmarks/compile_kernels.py              # every built-in recipe and the edges
    python benchmarks/compile_kernels.py --quick      # the seed recipe and the edges only

The kernels are reached through fastvar's own launchers: a short study of each built-in recipe and
model runs on CPU tensors down the path CUDA takes (vmap, bf16-mixed and float32, the implicit
convolutions, the Triton update and augmentation), with a stand-in driver that names a CUDA target.
Each launch is compiled for that target, as Triton would compile it (its own argument specialisation
and options), and not run: outputs stay unwritten, which no check here reads. Edges: batch 1, a last
partial batch, epoch 1, width 1, odd image sizes, M = 1 and 3 (M changes a launch's grid only), and
launches past the grid limits the kernels once had (a 70 M-entry stack, 70,400 output tiles, M = 256);
every launch's grid is checked against CUDA's limits.

Per compiled kernel: registers, spill bytes (ptxas -v, the ptxas in the Triton wheel), shared memory
and, for the update kernels, whether the PTX keeps IEEE division and square root and no fused
multiply-add. Prints a table and one JSON line. Run it without TRITON_INTERPRET (it refuses with it).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ARCHS = (80, 90)
GRID_LIMITS = (2 ** 31 - 1, 65535, 65535)
M_LIMIT = 256  # the largest M a row's grid is checked for
UPDATE_KERNELS = ("_adam_kernel", "_sgd_kernel")


class StandInDriver:
    """What Triton's launch path asks of a driver before it compiles: a device (the architecture's
    number, so each target keeps its own cache), a stream, and the target."""

    def __init__(self, arch):
        from triton.backends.compiler import GPUTarget
        self.arch, self.target = arch, GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


class Compiler:
    """Patches JITFunction so that a launch compiles for the stand-in's target and launches nothing."""

    def __init__(self):
        self.compiled, self.grids, self.seconds = {}, [], 0.0

    def __enter__(self):
        from triton.runtime.jit import JITFunction
        self.jit, self.saved = JITFunction, (JITFunction._do_compile, JITFunction.run)
        compiler = self

        def compile_only(fn, key, signature, device, constexprs, options, attrs, warmup):
            _, _, target, _, _ = fn.device_caches[device]
            name = (fn.__name__, target.arch, repr(key))
            if name not in compiler.compiled:
                started = time.perf_counter()
                kernel = fn.compile(fn.ASTSource(fn, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)
                compiler.seconds += time.perf_counter() - started
                compiler.compiled[name] = {"kernel": fn.__name__, "arch": target.arch, "signature": signature,
                                           "constexprs": {str(k): v for k, v in constexprs.items()},
                                           "compiled": kernel}
            return None  # nothing to launch

        def run(fn, *args, grid, warmup, **kwargs):
            compiler.grids.append((fn.__name__, tuple(grid) if not callable(grid) else None))
            return compiler.saved[1](fn, *args, grid=grid, warmup=warmup, **kwargs)
        JITFunction._do_compile, JITFunction.run = compile_only, run
        return self

    def __exit__(self, *exc):
        self.jit._do_compile, self.jit.run = self.saved


def studies(quick, width=None):
    """(label, recipe name, recipe changes, model, width, image shape (a language model's: its
    sequence length), batch, examples, dtype, M); `width` for every recipe's model (default: the recipe's)."""
    from fastvar.models import LANGUAGE_MODELS
    from fastvar.recipes import RECIPES
    edges = [("batch 1, M 1", "seed", {}, "resnet6", 1, (32, 32, 3), 1, 2, torch.bfloat16, 1),
             ("odd 17x13, partial batch, M 3", "summers", {}, "resnet6", 2, (17, 13, 3), 4, 6, torch.bfloat16, 3),
             ("28x28, float32", "jordan", {}, "resnet9", 1, (28, 28, 3), 4, 6, torch.float32, 1)]
    recipes = [(name, name, {}, RECIPES[name].model, width,
                (16,) if RECIPES[name].model in LANGUAGE_MODELS else (32, 32, 3), RECIPES[name].batch_size,
                RECIPES[name].batch_size + 8, dtype, 1)
               for name in RECIPES for dtype in (torch.bfloat16, torch.float32)]
    return edges + ([r for r in recipes if r[1] == "seed"] if quick else recipes)


def run_study(label, recipe_name, changes, model, width, shape, batch, examples, dtype, m):
    """Down CUDA's path, each launch compiled, none run: two epochs of an edge (epoch 1 is one), one of
    a recipe (a full batch and a partial one)."""
    from fastvar.data import Dataset
    from fastvar.engine.train import train_replicas
    from fastvar.recipes import RECIPES
    from fastvar.sources import run_seeds
    g = torch.Generator().manual_seed(0)
    if len(shape) == 1:  # a language model's tokens and next tokens
        x = torch.randint(0, 97, (examples, *shape), generator=g)
        y = x.roll(-1, 1)
    else:
        x = torch.randint(0, 256, (examples, *shape), dtype=torch.uint8, generator=g)
        y = torch.arange(examples) % 10
    data = Dataset(x, y, x[:3], y[:3])
    epochs = 1 if label == recipe_name else 2
    recipe = RECIPES[recipe_name].replace(**changes, epochs=epochs, batch_size=batch, model=model)
    seeds = [run_seeds("all-random", i) for i in range(m)]
    compute = dtype if dtype == torch.bfloat16 else None
    train_replicas(data, recipe, seeds, width=width, strategy="vmap", dtype=torch.float32, compute_dtype=compute,
                   conv="implicit", cuda_path=True)


def ptxas_report(ptx, arch):
    """(registers, spill store bytes, spill load bytes) from ptxas -v on the PTX."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        done = subprocess.run([ptxas_path(arch), "-v", f"--gpu-name=sm_{arch}{'a' if arch == 90 else ''}", f.name,
                               "-o", os.devnull], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if done.returncode:
        raise RuntimeError(f"ptxas failed on sm_{arch}: {done.stderr.strip()}")
    registers = int(re.search(r"Used (\d+) registers", done.stderr).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", done.stderr)
    return registers, int(spills.group(1)), int(spills.group(2))


def ptxas_path(arch):
    """The ptxas Triton itself assembles `arch` with (its wheel carries two)."""
    from triton.backends.nvidia.compiler import get_ptxas
    return get_ptxas(arch).path


def ptxas_version(arch):
    done = subprocess.run([ptxas_path(arch), "--version"], capture_output=True, text=True, check=True)
    return re.search(r"release ([\d.]+)", done.stdout).group(1)


def ieee_update(kernel, ptx):
    """The update kernels' arithmetic as the torch reference rounds it: IEEE division and square root
    (div.rn, sqrt.rn: Adam's), no fused multiply-add, no approximations."""
    adam = kernel == "_adam_kernel"
    return {"div_rn": not adam or "div.rn.f32" in ptx, "sqrt_rn": not adam or "sqrt.rn.f32" in ptx,
            "no_fma": not re.search(r"\bfma\.[a-z.]*f32", ptx),
            "no_approx": not re.search(r"\b(div|sqrt|rcp|rsqrt)\.(approx|full)", ptx)}


def low_precision(entry):
    """Whether a kernel works on bfloat16 data (the paths that must not spill)."""
    signature = entry["signature"]
    return any("bf16" in str(t) for t in signature.values()) or entry["constexprs"].get("WRITE_LOW") is True or \
        any(k == "WRITE_LOW" and v for k, v in entry["constexprs"].items())


def past_the_old_limits():
    """Launches whose grids broke CUDA's limits before the tiles moved to the first axis: an update of a
    stack of 70 M entries (the second axis held its blocks: 68,360 > 65,535), a convolution over 70,400
    tiles of output pixels (1,100 images of 64x64), and M_LIMIT replicas of the seed model's first layer."""
    from fastvar.engine.implicit_conv import stacked_conv2d
    from fastvar.engine.optim import BatchedAdam
    params = torch.zeros(1, 70_000_000)
    BatchedAdam(params, 1e-3, lr_factors=[1.0], triton=True).step((torch.zeros_like(params),))
    del params
    stacked_conv2d(torch.zeros(1, 1100, 64, 64, 16, dtype=torch.bfloat16),
                   torch.zeros(1, 3, 3, 16, 16, dtype=torch.bfloat16), 1, 1)
    stacked_conv2d(torch.zeros(M_LIMIT, 128, 32, 32, 3, dtype=torch.bfloat16).expand(M_LIMIT, -1, -1, -1, -1),
                   torch.zeros(M_LIMIT, 3, 3, 3, 64, dtype=torch.bfloat16), 1, 1)


def grid_rows(grids):
    """Each launch's grid against CUDA's limits (2**31 - 1 programs on the first axis, 65,535 on the others)."""
    rows = []
    for name, grid in grids:
        if grid is None:
            continue
        grid = tuple(grid) + (1,) * (3 - len(grid))
        rows.append({"kernel": name, "grid": grid, "within": all(g <= limit for g, limit in zip(grid, GRID_LIMITS))})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the seed recipe and the edges only")
    parser.add_argument("--width", type=int, help="every recipe's model at this width (16 keeps the channel "
                        "counts multiples of 16, as at 64, so Triton specialises the same)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("compile_kernels: unset TRITON_INTERPRET (interpreted kernels do not compile)")
    import triton
    from triton.runtime import driver
    started = time.perf_counter()
    rows, labels = [], []
    with Compiler() as compiler:
        for arch in ARCHS:
            driver.set_active(StandInDriver(arch))
            try:
                for study in studies(args.quick, args.width):
                    run_study(*study)
                    labels.append(f"sm_{arch} {study[0]}")
                past_the_old_limits()
            finally:
                driver._active = None  # as before: resolved again on next use (reset_active wants a GPU)
    entries = list(compiler.compiled.values())
    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda e: ptxas_report(e["compiled"].asm["ptx"], e["arch"]), entries))
    for entry, (registers, stores, loads) in zip(entries, reports):
        ptx = entry["compiled"].asm["ptx"]
        rows.append({"kernel": entry["kernel"], "arch": entry["arch"], "registers": registers, "spill_stores": stores,
                     "spill_loads": loads, "shared": entry["compiled"].metadata.shared,
                     "low_precision": low_precision(entry), "cubin": len(entry["compiled"].asm.get("cubin", b"")),
                     "ieee": ieee_update(entry["kernel"], ptx) if entry["kernel"] in UPDATE_KERNELS else None,
                     "constexprs": {k: v for k, v in entry["constexprs"].items() if isinstance(v, (int, bool, str))}})
    print(f"{'kernel':22} {'sm':>3} {'regs':>5} {'spill':>6} {'shared':>7}  bf16  constexprs")
    for r in sorted(rows, key=lambda r: (r["kernel"], r["arch"], -r["registers"])):
        print(f"{r['kernel']:22} {r['arch']:>3} {r['registers']:>5} {r['spill_stores'] + r['spill_loads']:>6} "
              f"{r['shared']:>7}  {'yes' if r['low_precision'] else 'no ':4}  {r['constexprs']}")
    summary = {"triton": triton.__version__, "torch": torch.__version__,
               "ptxas": {f"sm_{arch}": ptxas_version(arch) for arch in ARCHS}, "studies": labels, "kernels": rows,
               "launches": len(compiler.grids), "grids": grid_rows(compiler.grids),
               "compile_s": round(compiler.seconds, 1), "total_s": round(time.perf_counter() - started, 1)}
    print("ptxas (CUDA release) by target: " + ", ".join(f"{k} {v}" for k, v in summary["ptxas"].items()))
    print(f"{len(rows)} compiled kernels from {len(compiler.grids)} launches in {summary['total_s']} s "
          f"({summary['compile_s']} s compiling)")
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
