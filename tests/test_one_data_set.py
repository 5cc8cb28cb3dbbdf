"""A folder holds one data set: what a study trained and scored on (the dataset's name and subsets, or
a digest of the user's arrays) is part of its config, however the data reached the study."""
import pytest

import fastvar
from fastvar.store import Store


def test_a_built_in_subset_given_as_data_is_recorded_and_another_refused(synthetic_dir, tmp_path):
    out = tmp_path / "s"
    study = fastvar.Study(model="linear", runs=1, epochs=1)
    five = fastvar.load_dataset("cifar10", synthetic_dir, train_subset=200)
    study.run(out, data=five, progress=False)
    assert Store(out).config["train_subset"] == 200 and Store(out).config["test_subset"] is None
    before = (out / "runs.sqlite").read_bytes()
    for other in (fastvar.load_dataset("cifar10", synthetic_dir, train_subset=100),
                  fastvar.load_dataset("cifar10", synthetic_dir, test_subset=50),
                  fastvar.load_dataset("cifar10", synthetic_dir)):
        with pytest.raises(fastvar.FastvarError, match="another config.*subset") as caught:
            fastvar.Study(model="linear", runs=2, epochs=1).run(out, data=other, progress=False)
        assert "\n" not in str(caught.value)
    assert (out / "runs.sqlite").read_bytes() == before  # nothing stored was touched
    fastvar.Study(model="linear", runs=2, epochs=1).run(out, data=five, progress=False)  # the same data: resumes
    assert len(Store(out).runs()) == 2
    from fastvar.analysis.report import what_was_trained
    assert "cifar10: 200 training" in str(what_was_trained(fastvar.analyze(out)))


def test_a_subset_the_study_names_that_the_data_are_not_is_one_line(synthetic_dir, tmp_path):
    data = fastvar.load_dataset("cifar10", synthetic_dir, train_subset=200)
    with pytest.raises(fastvar.ConfigError, match="train_subset=100 asks for 100 examples, but the data given are "
                                                  "a subset of 200") as caught:
        fastvar.Study(model="linear", runs=1, epochs=1, train_subset=100).run(tmp_path / "s", data=data)
    assert "\n" not in str(caught.value) and not (tmp_path / "s").exists()
    whole = fastvar.load_dataset("cifar10", synthetic_dir)
    with pytest.raises(fastvar.ConfigError, match="the data given are the whole set"):
        fastvar.Study(model="linear", runs=1, epochs=1, train_subset=100).run(tmp_path / "s", data=whole)
    assert not (tmp_path / "s").exists()


def test_the_command_lines_subset_and_the_librarys_are_one_config(synthetic_dir, tmp_path):
    """--train-subset 200 on the command line and load_dataset(train_subset=200) as data: one folder."""
    from fastvar import cli
    out = tmp_path / "s"
    cli.main(["--model", "linear", "--runs", "1", "--epochs", "1", "--train-subset", "200", "--data-dir",
              str(synthetic_dir), "--out", str(out), "--no-download"])
    data = fastvar.load_dataset("cifar10", synthetic_dir, train_subset=200)
    fastvar.Study(model="linear", runs=2, epochs=1).run(out, data=data, progress=False)
    assert len(Store(out).runs()) == 2
