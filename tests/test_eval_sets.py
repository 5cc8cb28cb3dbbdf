"""Several test sets: a user's eval sets (Dataset.from_arrays, npz keys x_eval_NAME) and the built-in
shifted one (--eval-shift) are scored for every run, stored, analysed per set, compared, plotted and
exported; they change nothing else a run stores."""
import json
import sqlite3

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastvar
from fastvar import cli, shift
from fastvar.analysis.compare import sweep_sections
from fastvar.analysis.compute import planned_runs
from fastvar.analysis.metrics import summarize
from fastvar.analysis.plots import binomial_figure
from fastvar.analysis.report import json_line
from fastvar.data import load_arrays
from fastvar.store import Store, merge


def images(n, seed, classes=3, size=8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % classes


def two_set_data():  # 32×32 images: the built-in linear model reads 3072 inputs
    (x, y), (xt, yt), (a, b), (c, d) = (images(n, seed, size=32) for n, seed in ((48, 0), (12, 1), (9, 2), (7, 3)))
    return fastvar.Dataset.from_arrays(x, y, xt, yt, eval_sets={"night": (a, b), "far": (c, d)})


STUDY = dict(experiment="fixed-init", model="linear", runs=3, epochs=1, overrides={"batch_size": 16})


# --- the shifted set --------------------------------------------------------------------------------------------

def test_each_corruption_has_its_severity():
    gray = np.full((30, 16, 16, 3), 128, dtype=np.uint8)
    noise = shift.shifted(gray)[0::3].astype(float) - 128
    assert abs(noise.std() / (shift.NOISE_SD * 255) - 1) < 0.02 and abs(noise.mean()) < 0.3
    assert np.array_equal(shift.shifted(gray)[1::3], gray[1::3])  # blur and contrast keep a flat image
    assert np.array_equal(shift.shifted(gray)[2::3], gray[2::3])
    x, _ = images(12, 5, size=16)
    contrast = shift.shifted(x)[2::3].astype(float)
    original = x[2::3].astype(float)
    assert np.allclose(contrast.mean((1, 2, 3)), original.mean((1, 2, 3)), atol=0.5)
    assert np.allclose(contrast.std((1, 2, 3)), shift.CONTRAST * original.std((1, 2, 3)), rtol=0.02)


def test_the_blur_is_a_gaussian_convolution_away_from_the_border():
    x, _ = images(6, 6, size=20)
    blurred = shift.shifted(x)[1::3].astype(np.float64)
    taps = torch.from_numpy(shift.gaussian_taps(shift.BLUR_SD))
    kernel = (taps[:, None] * taps[None, :]).expand(3, 1, -1, -1)  # plain PyTorch, one 2-D convolution
    by_hand = F.conv2d(torch.from_numpy(x[1::3]).permute(0, 3, 1, 2).double(), kernel, groups=3)
    by_hand = by_hand.permute(0, 2, 3, 1).round().numpy()
    r = len(taps) // 2
    inner = blurred[:, r:-r, r:-r]
    assert np.abs(inner - by_hand).max() <= 1 and (inner == by_hand).mean() > 0.99  # ties may round apart


def test_the_shifted_set_is_fixed_and_takes_any_image_count():
    x, _ = images(10, 7)
    assert np.array_equal(shift.shifted(x), shift.shifted(x.copy()))
    assert not np.array_equal(shift.shifted(x), x)
    for n in (1, 2):
        assert shift.shifted(x[:n]).shape == x[:n].shape


# --- eval sets in the data ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("eval_sets, message", [
    ({"test": images(4, 1)}, "eval set name 'test'"),
    ({"a b": images(4, 1)}, "eval set name 'a b'"),
    ({"far": images(4, 1)[0]}, "must be a pair"),
    ({"far": (images(4, 1)[0], np.arange(3))}, "y_eval_far must be 4 integer labels"),
    ({"far": (images(4, 1, size=6)[0], np.arange(4) % 3)}, "x_eval_far"),
    ({"far": (images(4, 1)[0], np.arange(4) + 5)}, "y_eval_far holds 4 label"),
    ({"far": (images(4, 1)[0][:0], np.arange(0))}, "x_eval_far holds no examples"),
])
def test_an_eval_set_is_checked_as_the_test_set_is(eval_sets, message):
    (x, y), (xt, yt) = images(12, 0), images(6, 1)
    with pytest.raises(fastvar.DataError, match=message):
        fastvar.Dataset.from_arrays(x, y, xt, yt, eval_sets=eval_sets)


def test_eval_sets_are_part_of_the_datas_name_and_absent_ones_change_nothing():
    (x, y), (xt, yt), (a, b) = images(12, 0), images(6, 1), images(5, 2)
    plain = fastvar.Dataset.from_arrays(x, y, xt, yt)
    assert fastvar.Dataset.from_arrays(x, y, xt, yt, eval_sets={}).name == plain.name
    named = fastvar.Dataset.from_arrays(x, y, xt, yt, eval_sets={"far": (a, b)})
    assert named.name != plain.name
    assert fastvar.Dataset.from_arrays(x, y, xt, yt, eval_sets={"far": (a, (b + 1) % 3)}).name != named.name
    assert "eval set 'far' of 5" in repr(named)


def test_an_npz_brings_its_eval_sets_and_a_half_pair_is_one_line(tmp_path):
    data = two_set_data()
    arrays = {k: getattr(data, k).numpy() for k in ("x_train", "y_train", "x_test", "y_test")}
    sets = {f"{xy}_eval_{n}": t.numpy() for n, pair in data.eval_sets.items() for xy, t in zip("xy", pair)}
    np.savez(tmp_path / "d.npz", **arrays, **sets)
    loaded = load_arrays(tmp_path / "d.npz")
    assert loaded.name == data.name and set(loaded.eval_sets) == {"night", "far"}
    np.savez(tmp_path / "half.npz", **arrays, x_eval_far=sets["x_eval_far"])
    with pytest.raises(fastvar.DataError, match="holds x_eval_far but no y_eval_far"):
        load_arrays(tmp_path / "half.npz")


def test_eval_shift_on_features_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", x_train=rng.normal(size=(20, 4)).astype(np.float32), y_train=np.arange(20) % 2,
             x_test=rng.normal(size=(6, 4)).astype(np.float32), y_test=np.arange(6) % 2)
    out = tmp_path / "out"
    assert cli.main(["--data", str(tmp_path / "f.npz"), "--model", "linear", "--runs", "1", "--eval-shift",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "fastvar: error: --eval-shift corrupts images; these data are features" and not out.exists()


# --- stored, analysed, compared, plotted, exported ------------------------------------------------------------------

def test_every_run_is_scored_on_each_eval_set_as_plain_pytorch_scores_it(tmp_path):
    data = two_set_data()
    out = tmp_path / "two"
    fastvar.Study(**STUDY, precision="float64", save_weights=3).run(out, data=data, progress=False)
    evals = Store(out).evals()
    assert set(evals) == {"night", "far"} and all(len(by_run) == 3 for by_run in evals.values())
    for row in Store(out).runs():
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32 * 3, 3)).double()
        model.load_state_dict({f"1.{k.split('.')[-1]}": v for k, v in fastvar.weights(out, row["run_index"]).items()})
        for name, (x, y) in data.eval_sets.items():
            logits = model(((x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5).double())  # normalised in float32
            stored = evals[name][row["run_key"]]
            assert stored["n_test"] == len(y)
            by_hand = F.cross_entropy(logits.float(), y, reduction="none").double().mean()  # as the test set's
            assert abs(stored["test_loss"] - by_hand.item()) < 1e-10
            assert stored["test_acc"] == (logits.argmax(1) == y).double().mean().item()
            assert np.array_equal(stored["test_logits"], logits.half().float().detach().numpy())


def test_eval_sets_change_nothing_else_a_run_stores(tmp_path):
    data = two_set_data()
    plain = fastvar.Dataset.from_arrays(data.x_train, data.y_train, data.x_test, data.y_test)
    with_sets = fastvar.Study(**STUDY).run(tmp_path / "a", data=data, progress=False).runs()
    without = fastvar.Study(**STUDY).run(tmp_path / "b", data=plain, progress=False).runs()
    for a, b in zip(with_sets, without):
        assert np.array_equal(a["test_logits"], b["test_logits"]) and a["train_loss_curve"] == b["train_loss_curve"]
        assert (a["test_acc"], a["test_loss"], a["init_seed"], a["order_seed"]) == \
               (b["test_acc"], b["test_loss"], b["init_seed"], b["order_seed"])


def test_each_eval_set_is_analysed_with_every_metric(tmp_path, capsys):
    data = two_set_data()
    out = tmp_path / "two"
    fastvar.Study(**STUDY).run(out, data=data, progress=False)
    (analysis,) = fastvar.analyze(out)
    evals, labels = Store(out).evals(), Store(out).eval_labels()
    for name in ("night", "far"):
        rows = [evals[name][k] for k in sorted(evals[name])]
        expected = summarize([r["test_acc"] for r in rows], [r["test_loss"] for r in rows],
                             np.stack([r["test_logits"] for r in rows]), labels[name])
        expected["runs_per_arm"] = planned_runs(expected)
        assert json.dumps(analysis.eval_sets[name], sort_keys=True) == json.dumps(expected, sort_keys=True)  # NaN too
        assert np.array_equal(labels[name], data.eval_sets[name][1].numpy())
    assert analysis.eval_sets["far"]["binomial_sd"] != analysis.metrics["binomial_sd"]
    on_sets = json.loads(json_line(analysis))["eval_sets"]
    assert set(on_sets) == {"night", "far"} and on_sets["far"]["runs_per_arm"]["0.5"] > 1
    assert cli.main(["analyze", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Spread on the eval set 'night'" in printed and "Spread on the eval set 'far'" in printed
    for title in ("Runs needed per arm", "Ensembles of disjoint groups"):  # a row per folder and test set
        rows = printed.split(title)[1].split("\n\n")[1].splitlines()[2:]
        assert [row.split("|")[1].strip() for row in rows] == [str(out), f"{out}: night", f"{out}: far"]
    table = printed.split("on every test set")[1].split("\n\n")[1]
    assert [line.split("|")[2].strip() for line in table.splitlines()[2:]] == ["test", "night", "far"]
    bars = [p for p in binomial_figure([analysis]).axes[0].patches if p.get_gid() == "binomial_sd"]
    assert [b.get_height() for b in bars] == pytest.approx(
        [m["binomial_sd"] * 100 for m in (analysis.metrics, analysis.eval_sets["night"], analysis.eval_sets["far"])])


def test_compare_plot_and_export_take_a_test_set(tmp_path, capsys):
    data = two_set_data()
    a, b = tmp_path / "a", tmp_path / "b"
    fastvar.Study(**STUDY).run(a, data=data, progress=False)
    fastvar.Study(**{**STUDY, "overrides": {"batch_size": 8}}).run(b, data=data, progress=False)
    far = [r["test_acc"] for r in fastvar.results(b, "far")]
    assert far == [Store(b).evals()["far"][k]["test_acc"] for k in sorted(Store(b).evals()["far"])]
    assert cli.main(["compare", str(a), str(b), "--test-set", "far"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith(f"{np.mean(far) * 100:.2f} % ± {np.std(far, ddof=1) * 100:.2f} on far")
    assert cli.main(["plot", str(a), "--test-set", "night"]) == 0
    assert (a / "plots-night" / "test_acc.png").is_file()
    assert cli.main(["export", str(a)]) == 0
    with np.load(a / "logits.npz") as f:
        assert f["logits_far"].shape == (3, 7, 3) and np.array_equal(f["labels_night"], data.eval_sets["night"][1])
        assert np.array_equal(f["test_acc_far"], [r["test_acc"] for r in fastvar.results(a, "far")])
    capsys.readouterr()
    assert cli.main(["compare", str(a), str(b), "--test-set", "near"]) == 2
    assert capsys.readouterr().err.strip() == f"fastvar: error: {a} has no test set 'near'; it holds test, night, far"


def test_shards_merge_with_their_eval_sets(tmp_path):
    data = two_set_data()
    out = tmp_path / "sharded"
    for shard in ((0, 2), (1, 2)):
        fastvar.Study(**STUDY).run(out, data=data, execution=fastvar.Execution(shard=shard), progress=False)
    assert merge(out) == (3, 0, [])
    assert {name: len(by_run) for name, by_run in Store(out).evals().items()} == {"night": 3, "far": 3}
    assert set(Store(out).eval_labels()) == {"night", "far"}


def test_a_sweeps_points_are_scored_on_every_set(tmp_path):
    sweep = fastvar.Sweep({"lr": [1e-3, 2e-3]}, runs_per_point=2, study={"model": "linear", "epochs": 1,
                                                                          "eval_shift": True})
    sweep.run(tmp_path / "sweep", data=two_set_data(), progress=False)
    assert [list(a.eval_sets) for a in fastvar.analyze(tmp_path / "sweep")] == [["night", "far", "shift"]] * 2
    assert sorted(r["lr"] for r in fastvar.results(tmp_path / "sweep", "shift")) == [1e-3, 1e-3, 2e-3, 2e-3]
    titles = [title for title, _ in sweep_sections([tmp_path / "sweep"])]
    assert titles == [f"Sweep {tmp_path / 'sweep'}: each point against the best{on}"
                      for on in ("", " on the eval set 'night'", " on the eval set 'far'", " on the eval set 'shift'")]


def test_the_command_line_adds_the_shifted_set_and_a_folder_without_it_refuses_it(tmp_path, capsys):
    (x, y), (xt, yt) = images(48, 0, size=32), images(12, 1, size=32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    out = tmp_path / "shifted"
    common = ["--data", str(tmp_path / "d.npz"), "--model", "linear", "--runs", "2", "--epochs", "1", "--out", str(out)]
    assert cli.main(common + ["--eval-shift"]) == 0
    store = Store(out)
    assert store.config["eval_shift"] is True and set(store.evals()) == {"shift"}
    assert np.array_equal(store.eval_labels()["shift"], yt)
    before = (out / "runs.sqlite").read_bytes()
    capsys.readouterr()
    assert cli.main(common + ["--runs", "3"]) == 2
    assert "eval_shift True -> None" in capsys.readouterr().err and (out / "runs.sqlite").read_bytes() == before


def test_a_language_models_eval_set_keeps_its_token_outputs(tmp_path):
    rng = np.random.default_rng(0)

    def tokens(n):
        x = rng.integers(0, 11, (n, 12))
        return x, np.roll(x, -1, axis=1)
    (x, y), (xt, yt), (a, b) = tokens(32), tokens(8), tokens(5)
    b[:, -1] = -100  # the last position has no target
    data = fastvar.Dataset.from_arrays(x, y, xt, yt, vocab_size=11, eval_sets={"later": (a, b)})
    out = tmp_path / "lm"
    fastvar.Study(experiment="fixed-init", recipe="char", runs=2, epochs=1, width=16,
                  overrides={"batch_size": 8}).run(out, data=data, progress=False)
    stored = Store(out).evals()["later"]
    assert all(r["test_token_logprob"].shape == (5, 12) and (r["test_token_logprob"][:, -1] == 0).all()
               for r in stored.values())
    (analysis,) = fastvar.analyze(out)
    m = analysis.eval_sets["later"]
    assert m["tokens"] == 5 * 11 and np.isclose(m["ppl_mean"], np.mean([np.exp(r["test_loss"]) for r in stored.values()]))
    with sqlite3.connect(out / "runs.sqlite") as db:
        assert db.execute("SELECT length(test_logits) FROM evals").fetchall() == [(0,), (0,)]
