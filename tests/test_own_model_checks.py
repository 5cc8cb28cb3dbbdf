"""Your own model and data without a traceback (issue 22, parts 1-2): what would fail mid-study is
refused before any run in one line, and a start that fails before its first stored run leaves no
folder behind, so the corrected command runs."""
import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from conftest import random_arrays
from fastvar import Study, cli
from fastvar.data import Dataset
from fastvar.errors import FastvarError


class Head(nn.Module):
    def __init__(self, outputs=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.fc = nn.Linear(4, outputs)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def seven_outputs():
    return Head(7)


def twelve_outputs():
    return Head(12)


class ConvolutionalHead(nn.Module):
    """No nn.Linear at all: a 1x1 convolution to the classes, then a mean."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


class FailsOnFullBatches(Head):
    """Passes the two-example dry step, then fails in training: a failure no check can foresee."""

    def forward(self, x):
        if x.shape[0] > 2:
            raise RuntimeError("this model fails on batches of more than two")
        return super().forward(x)


def digest(folder):
    return hashlib.md5(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


@pytest.mark.parametrize("factory", [seven_outputs, twelve_outputs], ids=["fewer", "more"])
def test_a_model_with_other_than_one_output_per_class_is_refused_before_any_run(factory, tmp_path):
    data = Dataset.from_arrays(**random_arrays(16, 10))
    with pytest.raises(FastvarError, match=r"gives (7|12) outputs an example for 10 classes"):
        Study(model=factory, runs=1, epochs=1).run(tmp_path / "out", data=data)
    assert not (tmp_path / "out").exists()


def test_a_test_label_no_training_example_has_is_refused(tmp_path, capsys):
    arrays = random_arrays(16, 10)
    arrays["y_test"] = arrays["y_test"].copy()
    arrays["y_test"][3] = 10
    with pytest.raises(FastvarError, match=r"y_test holds 1 label\(s\) no training example has \(10\)"):
        Dataset.from_arrays(**arrays)
    np.savez(tmp_path / "data.npz", **arrays)
    code = cli.main(["--runs", "1", "--epochs", "1", "--width", "2", "--data", str(tmp_path / "data.npz"),
                     "--out", str(tmp_path / "out")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "y_test holds" in errors[0] and not (tmp_path / "out").exists()


def test_a_model_without_a_linear_layer_trains_unless_dropout_asks_for_one(tmp_path):
    data = Dataset.from_arrays(**random_arrays(16, 10))
    rows = Study(model=ConvolutionalHead, runs=1, epochs=1).run(tmp_path / "plain", data=data).runs()
    assert len(rows) == 1
    with pytest.raises(FastvarError, match="no nn.Linear"):
        Study(model=ConvolutionalHead, runs=1, epochs=1, dropout=0.1).run(tmp_path / "dropout", data=data)
    assert not (tmp_path / "dropout").exists()


def test_a_start_that_fails_before_its_first_run_leaves_nothing_in_the_way(tmp_path):
    data = Dataset.from_arrays(**random_arrays(16, 10))
    with pytest.raises(RuntimeError, match="fails on batches"):
        Study(model=FailsOnFullBatches, runs=1, epochs=1).run(tmp_path / "new", data=data)
    assert not (tmp_path / "new").exists()
    Study(model=Head, runs=1, epochs=1).run(tmp_path / "new", data=data)  # the corrected study, same folder
    before = digest(tmp_path / "new")
    with pytest.raises(FastvarError, match="another config"):  # an existing folder is left as it was
        Study(model=FailsOnFullBatches, runs=1, epochs=1).run(tmp_path / "new", data=data)
    assert digest(tmp_path / "new") == before


def test_a_dataset_prints_as_one_line():
    data = Dataset.from_arrays(**random_arrays(16, 10))
    assert repr(data).count("\n") == 0 and "16 training and 10 test examples" in repr(data)
    assert "uint8 images 32×32×3, 10 classes" in repr(data) and len(repr(data)) < 150
    features = Dataset.from_arrays(np.zeros((4, 5), np.float32), np.arange(4) % 2, np.zeros((2, 5), np.float32),
                                   np.arange(2))
    assert "features of 5, 2 classes" in repr(features)


OWN = "test_own_model_checks"  # this module, as an import path the command line takes


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A folder holding one run of a model and data of the user's own, and the npz files of the bad inputs."""
    root = tmp_path_factory.mktemp("own")
    good = random_arrays(16, 10)
    np.savez(root / "good.npz", **good)
    np.savez(root / "labels.npz", **{**good, "y_test": np.where(np.arange(10) == 3, 10, good["y_test"])})
    np.savez(root / "malformed.npz", **{k: v for k, v in good.items() if k != "y_test"})
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 a zip in name only")
    np.savez(root / "small.npz", **{**good, "x_train": good["x_train"][:, :8, :8], "x_test": good["x_test"][:, :8, :8]})
    np.savez(root / "half.npz", **good, x_eval_far=good["x_test"])
    base = ["--runs", "1", "--epochs", "1", "--out", str(root / "study")]
    assert cli.main([*base, "--model", f"{OWN}:Head", "--data", str(root / "good.npz")]) == 0
    return root, base


BAD = {  # the bad inputs, each against the stored folder
    "fewer outputs": ["--model", f"{OWN}:seven_outputs", "--data", "good.npz"],
    "more outputs": ["--model", f"{OWN}:twelve_outputs", "--data", "good.npz"],
    "a test label no training example has": ["--model", f"{OWN}:Head", "--data", "labels.npz"],
    "dropout without nn.Linear": ["--model", f"{OWN}:ConvolutionalHead", "--data", "good.npz", "--dropout", "0.1"],
    "--dataset beside --data": ["--model", f"{OWN}:Head", "--data", "good.npz", "--dataset", "mnist"],
    "a malformed npz": ["--model", f"{OWN}:Head", "--data", "malformed.npz"],
    "a corrupt npz": ["--model", f"{OWN}:Head", "--data", "corrupt.npz"],
    "an abbreviated flag": ["--model", f"{OWN}:Head", "--data", "good.npz", "--batch", "8"],
    "no runs": ["--model", f"{OWN}:Head", "--data", "good.npz", "--runs", "0"],
    "another config": ["--model", f"{OWN}:Head", "--data", "good.npz", "--lr", "2e-3"],
    "graphs without CUDA": ["--model", f"{OWN}:Head", "--data", "good.npz", "--cuda-graphs", "on"],
    "analyze into a folder": ["analyze", "{study}", "--report", "{study}"],
    "a built-in model the images do not fit": ["--model", "linear", "--data", "small.npz"],
    "half an eval set": ["--model", f"{OWN}:Head", "--data", "half.npz"],
    "an unknown test set": ["compare", "{study}", "{study}", "--test-set", "far"],
}


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_each_bad_input_is_one_line_and_exit_2_and_leaves_the_folder_as_it_was(stored, bad, capsys):
    root, base = stored
    before = digest(root / "study")
    args = [str(root / a) if a.endswith(".npz") else a.format(study=root / "study") for a in bad]
    capsys.readouterr()
    try:
        code = cli.main(args if args[0] in ("analyze", "compare") else [*base, *args])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("fastvar: loading")]
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert digest(root / "study") == before
