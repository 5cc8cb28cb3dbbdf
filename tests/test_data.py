"""CIFAR-10 parsing: the official python layout (folder and archive), .npz, and bad data."""
import io
import pickle
import tarfile

import numpy as np
import pytest

from fastvar import cli
from fastvar.data import DataError, load_dataset
from test_failures import error_lines
from conftest import random_arrays


def official_batch(x, y):
    """A batch as the official release pickles it: CHW rows of 3072 bytes, labels as a list,
    protocol 2 with numpy's pre-2.0 module name, as the files of 2009 have it."""
    raw = pickle.dumps({b"batch_label": b"test", b"labels": [int(v) for v in y],
                        b"data": x.transpose(0, 3, 1, 2).reshape(len(x), 3072),
                        b"filenames": [b"x.png"] * len(x)}, protocol=2)
    return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def official_files(arrays):
    chunks = np.array_split(np.arange(len(arrays["x_train"])), 5)
    files = {f"data_batch_{i + 1}": official_batch(arrays["x_train"][c], arrays["y_train"][c])
             for i, c in enumerate(chunks)}
    files["test_batch"] = official_batch(arrays["x_test"], arrays["y_test"])
    return files


def write_archive(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def assert_same(data, arrays):
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(data, key).numpy(), arrays[key]), key


def test_official_archive_and_folder(tmp_path):
    arrays = random_arrays(50, 20, seed=1)
    write_archive(tmp_path / "cifar-10-python.tar.gz", official_files(arrays))
    assert_same(load_dataset("cifar10", tmp_path), arrays)
    folder = tmp_path / "extracted"
    (folder / "cifar-10-batches-py").mkdir(parents=True)
    for name, raw in official_files(arrays).items():
        (folder / "cifar-10-batches-py" / name).write_bytes(raw)
    assert_same(load_dataset("cifar10", folder), arrays)


def test_pixel_layout_is_red_plane_first(tmp_path):
    arrays = random_arrays(10, 10)
    arrays["x_train"][:] = 0
    arrays["x_train"][0, 1, 2] = (10, 20, 30)  # row 1, column 2: R, G, B
    write_archive(tmp_path / "cifar-10-python.tar.gz", official_files(arrays))
    row = official_files(arrays)["data_batch_1"]
    data = load_dataset("cifar10", tmp_path)
    assert tuple(data.x_train[0, 1, 2].tolist()) == (10, 20, 30)
    assert len(row) > 3072


def test_balanced_subset(synthetic_dir):
    data = load_dataset("cifar10", synthetic_dir, train_subset=45, test_subset=20)
    assert data.y_train.bincount().tolist() == [5] * 5 + [4] * 5
    assert data.y_test.bincount().tolist() == [2] * 10
    again = load_dataset("cifar10", synthetic_dir, train_subset=45)
    assert np.array_equal(again.x_train.numpy(), data.x_train.numpy())  # fixed, not random
    with pytest.raises(DataError, match="needs"):
        load_dataset("cifar10", synthetic_dir, train_subset=10_000)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))
    files = official_files(random_arrays(10, 10))
    files["test_batch"] = pickle.dumps({b"data": Evil(), b"labels": []})
    write_archive(tmp_path / "cifar-10-python.tar.gz", files)
    with pytest.raises(DataError, match="unexpected object"):
        load_dataset("cifar10", tmp_path)


def run_cli(capsys, *args):
    code = cli.main(["train", "--runs", "1", "--width", "4", "--epochs", "1", *args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("damage", ["missing", "truncated archive", "not gzip", "incomplete archive",
                                    "corrupt npz", "wrong shape npz", "bad labels"])
def test_bad_data_gives_one_line_and_exit_2(tmp_path, capsys, damage):
    archive, npz = tmp_path / "cifar-10-python.tar.gz", tmp_path / "cifar10.npz"
    files = official_files(random_arrays(10, 10))
    if damage == "truncated archive":
        write_archive(archive, files)
        archive.write_bytes(archive.read_bytes()[:200])
    elif damage == "not gzip":
        archive.write_bytes(b"this is not an archive")
    elif damage == "incomplete archive":
        write_archive(archive, {k: v for k, v in files.items() if k != "test_batch"})
    elif damage == "corrupt npz":
        npz.write_bytes(b"PK\x03\x04 broken")
    elif damage == "wrong shape npz":
        np.savez(npz, **{**random_arrays(10, 10), "x_train": np.zeros((10, 3, 32, 32), np.uint8)})
    elif damage == "bad labels":
        np.savez(npz, **{**random_arrays(10, 10), "y_test": np.full(10, 12)})
    out = tmp_path / "results"
    code, err = run_cli(capsys, "--data-dir", str(tmp_path), "--out", str(out), "--no-download")
    err = error_lines("\n".join(err))
    assert code == 2
    assert len(err) == 1 and err[0].startswith("fastvar: error:") and str(tmp_path) in err[0]
    assert not out.exists()  # nothing written for a study that could not start
