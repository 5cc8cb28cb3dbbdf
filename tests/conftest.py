import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # Triton kernels run on the CPU, through numpy; read at import

from fastvar.data import Dataset, default_data_dir, load_dataset  # noqa: E402
from fastvar.engine.replicas import whole_weight  # noqa: E402


def needs_triton():
    """Triton, imported, or a skip where it is not installed (the gpu extra); in CI on Linux, where the
    test extra installs it, a missing Triton is a failure."""
    try:
        import triton
    except ImportError:
        if os.environ.get("CI") and sys.platform == "linux":
            pytest.fail("CI installs the test extra, which holds triton on Linux")
        pytest.skip("triton is not installed (the gpu extra)")
    return triton


def logits_of(output):
    """What a user reads of a model's output in plain PyTorch: a tensor as it is, a tuple's first
    element, else `.logits` (a Hugging Face ModelOutput)."""
    if isinstance(output, tuple):
        return output[0]
    return output if isinstance(output, torch.Tensor) else output.logits


def random_arrays(n_train, n_test, seed=0):
    """CIFAR-shaped random images with every class present: for mechanics, not accuracy."""
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
            "y_train": np.arange(n_train) % 10,
            "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
            "y_test": np.arange(n_test) % 10}


def random_dataset(n_train, n_test, seed=0):
    arrays = random_arrays(n_train, n_test, seed)
    return Dataset(*(torch.from_numpy(arrays[k]) for k in ("x_train", "y_train", "x_test", "y_test")))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test reaches the internet: a download goes to a closed port on this machine and fails at once."""
    monkeypatch.setattr("fastvar.data.CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")


@pytest.fixture
def synthetic_dir(tmp_path):
    """A data folder holding a small random cifar10.npz."""
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez(folder / "cifar10.npz", **random_arrays(320, 100))
    return folder


@pytest.fixture(scope="session")
def real_data_dir():
    """The real CIFAR-10 folder. Missing data skips locally and fails in CI, where it must be fetched."""
    folder = default_data_dir()
    if not (folder / "cifar10.npz").is_file():
        message = f"real CIFAR-10 not found in {folder}; run `python run.py download` (the README's set-up)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def real_subset(real_data_dir):
    return load_dataset("cifar10", real_data_dir, train_subset=200, test_subset=100)


def named_gradients(replicas, grads):
    """A step's flat gradient (Replicas.train_step_grads) as {parameter name: M × its shape}, dead taps 0."""
    views = replicas.layout.views(*grads)
    dead = replicas.dead_layout.views(torch.zeros_like(replicas.dead))
    return {n: torch.stack([whole_weight(g[r].to(replicas.master.dtype), dead[n][r], replicas.live[n])
                            if n in replicas.live else g[r].to(replicas.master.dtype) for r in range(replicas.size)])
            for n, g in views.items()}
