"""Triton is the GPU extra: without it fastvar imports, trains on a CPU and analyses (a subprocess in
which `import triton` fails, as on a machine where it was never installed)."""
import json
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT, random_arrays

BLOCKED = """
import importlib.abc, sys
class NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoTriton())
"""

SCRIPT = BLOCKED + """
import json, sys
import fastvar
from fastvar import cli
study = fastvar.Study  # the attribute the issue found raising ModuleNotFoundError
out = sys.argv[1]
trained = cli.main(["--experiment", "fixed-init", "--runs", "2", "--batch-models", "2", "--width", "2",
                    "--epochs", "1", "--data", sys.argv[2], "--out", out, "--strategy", "vmap"])
analysed = cli.main(["analyze", out])
print(json.dumps({"trained": trained, "analysed": analysed,
                  "triton_loaded": any(m == "triton" or m.startswith("triton.") for m in sys.modules)}))
"""


def test_fastvar_imports_trains_and_analyses_without_triton(tmp_path):
    arrays = random_arrays(64, 20)
    np.savez(tmp_path / "data.npz", **arrays)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "out"), str(tmp_path / "data.npz")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    assert verdict == {"trained": 0, "analysed": 0, "triton_loaded": False}


def test_the_blocker_blocks():
    """The test above proves something only if its blocker makes `import triton` fail."""
    done = subprocess.run([sys.executable, "-c", BLOCKED + "import triton"], capture_output=True, text=True)
    assert done.returncode != 0 and "No module named 'triton'" in done.stderr
