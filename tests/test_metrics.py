"""The spread metrics on small logits whose answers are known or brute-forced."""
import itertools
import json

import numpy as np
import pytest
import scipy.stats

from fastvar.analysis import metrics


def random_logits(runs=6, n=40, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    # float16, as stored: ties among logits, which Spearman's rho must rank fairly
    return rng.normal(size=(runs, n, classes)).astype(np.float16).astype(np.float32), rng.integers(0, classes, n)


def summary(logits, labels, seed=0):
    acc = (logits.argmax(-1) == labels).mean(1)
    loss = -np.log(metrics.softmax(logits)[:, np.arange(len(labels)), labels]).mean(1)
    return metrics.summarize(acc, loss, logits, labels, seed=seed)


def test_identical_runs_have_no_spread():
    logits, labels = random_logits(runs=1)
    m = summary(np.repeat(logits, 5, axis=0), labels)
    assert m["acc_sd"] == m["ce_sd"] == m["acc_sd_err"] == m["disagreement"] == m["ensemble_gain"] == 0
    assert m["spearman"] == pytest.approx(1)
    assert m["binomial_sd"] == 0 and m["distribution_sd"] == 0  # every p_i is 0 or 1
    assert m["ensemble_acc"] == pytest.approx(m["acc_mean"]) and m["pairs"] == 10


def test_hand_built_flips():
    labels = np.zeros(4, dtype=int)
    # runs × examples: predicted classes; example 0 always right, 1 always wrong, 2 and 3 right in 2 of 4
    predictions = np.array([[0, 1, 0, 0], [0, 1, 0, 1], [0, 1, 1, 0], [0, 1, 1, 1]])
    logits = np.eye(3)[predictions] * 5
    m = summary(logits, labels)
    # pairs that differ, per example: 0, 0, 4 of 6, 4 of 6
    assert m["disagreement"] == pytest.approx((4 / 6 + 4 / 6) / 4)
    assert m["binomial_sd"] == pytest.approx(np.sqrt(0.25 + 0.25) / 4)
    acc = np.array([0.75, 0.5, 0.5, 0.25])
    assert m["acc_sd"] == pytest.approx(acc.std(ddof=1))
    assert m["distribution_sd"] == pytest.approx(np.sqrt(acc.var(ddof=1) - 0.5 / 16))


def test_pairwise_means_equal_brute_force():
    logits, labels = random_logits()
    m = summary(logits, labels)
    pairs = list(itertools.combinations(range(len(logits)), 2))
    probs, predictions = metrics.softmax(logits), logits.argmax(-1)
    rho = [scipy.stats.spearmanr(logits[a].ravel(), logits[b].ravel())[0] for a, b in pairs]
    assert m["spearman"] == pytest.approx(np.mean(rho), abs=1e-12)
    assert m["disagreement"] == pytest.approx(np.mean([(predictions[a] != predictions[b]).mean() for a, b in pairs]))
    correct = predictions == labels
    gain = [((probs[a] + probs[b]).argmax(-1) == labels).mean() - (correct[a].mean() + correct[b].mean()) / 2
            for a, b in pairs]
    assert m["ensemble_gain"] == pytest.approx(np.mean(gain))


def test_distribution_sd_bootstrap_equals_resampling_runs():
    logits, labels = random_logits(runs=7, n=60)
    correct = logits.argmax(-1) == labels
    acc = correct.mean(1)
    counts = metrics.resample_counts(7, resamples=200, seed=3)
    _, low, high = metrics.distribution_sd(acc, correct, counts)
    draws = []
    for w in counts:
        picked = np.repeat(np.arange(7), w)
        draws.append(np.sqrt(max(0, acc[picked].var(ddof=1) - metrics.binomial_sd(correct[picked]) ** 2)))
    assert (low, high) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))


def test_bootstrap_is_reproducible_from_its_seed():
    logits, labels = random_logits()
    assert json.dumps(summary(logits, labels, seed=1)) == json.dumps(summary(logits, labels, seed=1))  # NaN too
    assert summary(logits, labels, seed=1)["acc_sd_err"] != summary(logits, labels, seed=2)["acc_sd_err"]


def test_many_runs_sample_pairs_reproducibly():
    all_pairs = metrics.run_pairs(10)
    assert len(all_pairs) == 45 and len({tuple(p) for p in all_pairs}) == 45
    sampled = metrics.run_pairs(300, max_pairs=1000, seed=4)
    assert len(sampled) == 1000 and (sampled[:, 0] != sampled[:, 1]).all()
    assert (sampled == metrics.run_pairs(300, max_pairs=1000, seed=4)).all()


def test_calibration_error_of_known_confidences():
    labels = np.zeros(10, dtype=int)
    sure = np.tile([1.0, 0.0], (10, 1))
    assert metrics.expected_calibration_error(sure, labels) == 0
    hesitant = np.tile([0.6, 0.4], (10, 1))  # 60 % confident, always right
    assert metrics.expected_calibration_error(hesitant, labels) == pytest.approx(0.4)


def test_ensembles_are_disjoint_groups():
    logits, labels = random_logits(runs=7)
    probs = metrics.softmax(logits)
    table = metrics.ensembles_by_size(probs, labels)
    assert set(table) == {"1", "2", "3", "5"}
    assert [table[s]["groups"] for s in ("1", "2", "3", "5")] == [7, 3, 2, 1]
    single = (logits.argmax(-1) == labels).mean(1)
    assert table["1"]["acc"] == pytest.approx(single.mean()) and table["1"]["sd"] == pytest.approx(single.std(ddof=1))


def test_snapshot_ensembles():
    logits, labels = random_logits(runs=5)
    repeated = np.repeat(logits[:, None], 3, axis=1)  # three identical snapshots: nothing to gain
    s = metrics.snapshot_ensembles(repeated, labels)
    single = (logits.argmax(-1) == labels).mean(1)
    assert s["cycles"] == 3 and s["gain"] == 0 and s["acc"] == pytest.approx(single.mean())
    assert s["sd"] == pytest.approx(single.std(ddof=1))
    assert s["disagreement"] == pytest.approx(metrics.disagreement(logits.argmax(-1), 10))
    other, _ = random_logits(runs=5, seed=9)
    mixed = metrics.snapshot_ensembles(np.stack([other, logits], axis=1), labels)
    ensemble = (metrics.softmax(np.stack([other, logits], axis=1)).mean(1).argmax(-1) == labels).mean(1)
    assert mixed["gain"] == pytest.approx((ensemble - single).mean())


def test_the_single_model_row_of_the_ensembles_is_the_runs_own_accuracy():
    """From float16 logits a tie or a rounding can flip a prediction; the stored accuracies are the runs'
    own (float32 logits), and the one-model row takes them, so it equals the spread table's SD."""
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 50, 3)).astype(np.float16)
    labels = rng.integers(0, 3, 50)
    stored = (logits.argmax(-1) == labels).mean(1) + np.array([0.02, 0, 0, 0, 0, -0.02])  # as if float32 differed
    m = metrics.summarize(stored, np.ones(6), logits, labels, seed=0)
    assert m["ensembles"]["1"] == {"groups": 6, "acc": pytest.approx(stored.mean()), "sd": m["acc_sd"]}
    assert m["ensembles"]["2"]["groups"] == 3
