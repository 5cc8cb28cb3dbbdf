"""Every Triton kernel compiled ahead of time for sm_80 and sm_90 on this CPU-only machine (issue 21,
part 4), through fastvar's own launchers at the shapes of each built-in recipe and model and the
edges (benchmarks/compile_kernels.py, in a subprocess: the tests' TRITON_INTERPRET=1 would make
every kernel an interpreted one)."""
import json
import os
import re
import subprocess
import sys

from conftest import ROOT, needs_triton
from fastvar.recipes import RECIPES

SHARED_LIMIT = 227 * 1024  # bytes of shared memory a block may hold on an H100 (sm_90); an A100 has 163 KB


def launched_kernels():
    """fastvar's @triton.jit functions that no other one calls: the kernels, by name (the rest are helpers)."""
    bodies = {}
    for path in (ROOT / "fastvar").rglob("*.py"):
        text = path.read_text()
        for found in re.finditer(r"^@triton\.jit.*\ndef (\w+)", text, re.MULTILINE):
            rest = text[found.end():]
            end = re.search(r"\n\S", rest)  # the next top-level line
            bodies[found.group(1)] = rest[:end.start() if end else len(rest)]
    return {name for name in bodies
            if not any(re.search(rf"\b{name}\(", body) for other, body in bodies.items() if other != name)}


def test_every_kernel_compiles_for_sm80_and_sm90_within_the_limits():
    needs_triton()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_kernels.py"), "--width", "16"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    kernels = report["kernels"]
    expected = launched_kernels()
    assert len(expected) == 6  # the update (Adam, SGD), augmentation and the three implicit convolutions
    for arch in (80, 90):
        assert {k["kernel"] for k in kernels if k["arch"] == arch} == expected, arch
        assert {f"sm_{arch} {name}" for name in RECIPES} <= set(report["studies"])
    for k in kernels:
        assert k["registers"] <= 255 and k["shared"] <= SHARED_LIMIT and k["cubin"] > 0, k
        if k["low_precision"]:  # the bf16 paths, CUDA's default: no spills
            assert k["spill_stores"] == k["spill_loads"] == 0, k
        if k["kernel"] in ("_adam_kernel", "_sgd_kernel"):
            assert all(k["ieee"].values()), k  # div.rn, sqrt.rn, no fma, no approximations
    assert all(g["within"] for g in report["grids"])
    assert max(g["grid"][0] for g in report["grids"]) > 65535  # launches past the old limits were made
    assert max(g["grid"][1] for g in report["grids"]) == 256  # M = 256 on the replica axis
