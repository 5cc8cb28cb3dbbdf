"""The spread of a study, from its runs' test accuracies, losses and logits: Summers & Dinneen's
metrics (SDs with bootstrap errors, disagreement, Spearman correlation, ensemble gain) and Jordan's
split of test-set variance into what a binomial model predicts and what is left for the distribution.

Inputs are numpy arrays: `acc`, `loss` (one per run), `logits` R×n×C, `labels` n. Pairwise means
that are sums of dot products (disagreement, Spearman) are exact over all pairs at any R; ensemble
gain, which is not, uses every pair up to MAX_PAIRS and a seeded sample of that many beyond.
"""
import numpy as np

RESAMPLES = 10_000
MAX_PAIRS = 19_900  # every pair of 200 runs
ECE_BINS = 15
ENSEMBLE_SIZES = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


def softmax(logits):
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def resample_counts(runs, resamples=RESAMPLES, seed=0):
    """Bootstrap resamples of runs as counts: row b says how often each run was drawn."""
    return np.random.default_rng(seed).multinomial(runs, np.full(runs, 1 / runs), size=resamples)


def weighted_sd(values, counts):
    """The sample SD (ddof 1) of each resample given as counts over `values`."""
    r = counts.sum(1)
    values = values - values.mean()  # shift-invariant; centring keeps equal values at exactly 0
    mean = counts @ values / r
    return np.sqrt(np.maximum(counts @ values ** 2 - r * mean ** 2, 0) / (r - 1))


def sd_with_error(values, counts):
    """Sample SD of `values` and the SD of that SD over the bootstrap resamples `counts`."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return float("nan"), float("nan")
    return float(values.std(ddof=1)), float(weighted_sd(values, counts).std(ddof=1))


def disagreement(predictions, classes):
    """Mean over pairs of runs of the fraction of examples whose predicted class differs (exact:
    the agreeing pairs of example i are sum over classes of count·(count - 1) / 2)."""
    runs, n = predictions.shape
    counts = np.stack([(predictions == c).sum(0) for c in range(classes)]).astype(float)
    agreeing = (counts * (counts - 1)).sum() / 2
    return float(1 - agreeing / (n * runs * (runs - 1) / 2))


def average_ranks(x):
    """Ranks 1..len(x), ties sharing the mean of their ranks (as Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def spearman(logits):
    """Mean over pairs of runs of Spearman's rho between their flattened logits: exact, since the
    sum over pairs of z_a·z_b (standardised ranks) is (|sum z|² - sum |z|²) / 2."""
    runs = len(logits)
    total, squares, length = 0.0, 0.0, logits[0].size
    for run in logits:
        ranks = average_ranks(run.ravel())
        z = (ranks - ranks.mean()) / ranks.std()
        total, squares = total + z, squares + z @ z
    return float((total @ total - squares) / (length * runs * (runs - 1)))


def run_pairs(runs, max_pairs=MAX_PAIRS, seed=0):
    """Every pair of distinct runs if there are at most `max_pairs`, else a seeded sample of that many."""
    if runs * (runs - 1) // 2 <= max_pairs:
        return np.stack(np.triu_indices(runs, k=1), axis=1)
    rng = np.random.default_rng(seed)
    first = rng.integers(0, runs, max_pairs)
    second = (first + rng.integers(1, runs, max_pairs)) % runs  # never the same run
    return np.stack([first, second], axis=1)


def ensemble_gain(probs, correct, labels, pairs, chunk=256):
    """Mean over pairs of the accuracy of the pair's averaged softmax minus their mean accuracy."""
    gains = []
    for start in range(0, len(pairs), chunk):
        a, b = pairs[start:start + chunk].T
        together = ((probs[a] + probs[b]).argmax(-1) == labels).mean(-1)
        gains.append(together - (correct[a].mean(-1) + correct[b].mean(-1)) / 2)
    return float(np.concatenate(gains).mean())


def binomial_sd(correct):
    """The test-accuracy SD that independent per-example coin flips with the observed per-example
    accuracies p_i would give: sqrt(sum p_i (1 - p_i)) / n (Jordan)."""
    p = correct.mean(0)
    return float(np.sqrt((p * (1 - p)).sum()) / correct.shape[1])


def distribution_sd(acc, correct, counts):
    """sqrt(max(0, acc SD² - binomial SD²)) and its 95 % bootstrap percentile interval. Each resample's
    binomial variance comes from the Gram matrix of the runs' correctness, so no resample touches the
    R×n matrix: sum_i p_i² = wᵀ G w / R² for resample counts w."""
    runs, n = correct.shape
    estimate = np.sqrt(max(0.0, np.var(acc, ddof=1) - binomial_sd(correct) ** 2))
    c = correct.astype(np.float64)
    gram, per_run = c @ c.T, c.sum(1)
    r = counts.sum(1)
    sum_p = counts @ per_run / r
    sum_p2 = np.einsum("br,rs,bs->b", counts, gram, counts, optimize=True) / r ** 2
    binomial_var = (sum_p - sum_p2) / n ** 2
    draws = np.sqrt(np.maximum(0, weighted_sd(acc, counts) ** 2 - binomial_var))
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(estimate), float(low), float(high)


def expected_calibration_error(probs, labels, bins=ECE_BINS):
    """Confidence-binned |accuracy - confidence|, weighted by the bins' shares of examples."""
    confidence, hit = probs.max(-1), probs.argmax(-1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(hit[members].mean() - confidence[members].mean())
    return float(error)


def ensembles(probs, labels, size, seed=0):
    """Accuracies of disjoint ensembles of `size` runs (softmax averaged), from a seeded shuffle."""
    order = np.random.default_rng(seed).permutation(len(probs))
    groups = order[:len(order) // size * size].reshape(-1, size)
    return np.array([(probs[g].mean(0).argmax(-1) == labels).mean() for g in groups])


def summarize(acc, loss, logits, labels, seed=0):
    """Every metric of one study, as a flat dict of plain floats (see the README for the keys)."""
    acc, loss, labels = np.asarray(acc, float), np.asarray(loss, float), np.asarray(labels)
    logits = np.asarray(logits, np.float32)
    runs = len(acc)
    probs, correct = softmax(logits), logits.argmax(-1) == labels
    counts = resample_counts(runs, seed=seed)
    out = {"n": runs, "acc_mean": float(acc.mean()), "ce_mean": float(loss.mean())}
    out["acc_sd"], out["acc_sd_err"] = sd_with_error(acc, counts)
    out["ce_sd"], out["ce_sd_err"] = sd_with_error(loss, counts)
    out["binomial_sd"] = binomial_sd(correct)
    ensemble = probs.mean(0)
    out["ensemble_acc"] = float((ensemble.argmax(-1) == labels).mean())
    out["ece"] = expected_calibration_error(ensemble, labels)
    if runs < 2:
        nan = float("nan")
        return {**out, "disagreement": nan, "spearman": nan, "ensemble_gain": nan, "pairs": 0,
                "distribution_sd": nan, "distribution_sd_low": nan, "distribution_sd_high": nan,
                "ensembles": ensembles_by_size(probs, labels, seed, acc)}
    pairs = run_pairs(runs, seed=seed)
    out["disagreement"] = disagreement(logits.argmax(-1), logits.shape[-1])
    out["spearman"] = spearman(logits)
    out["ensemble_gain"] = ensemble_gain(probs, correct, labels, pairs)
    out["pairs"] = len(pairs)
    out["distribution_sd"], out["distribution_sd_low"], out["distribution_sd_high"] = \
        distribution_sd(acc, correct, counts)
    out["ensembles"] = ensembles_by_size(probs, labels, seed, acc)
    return out


def ensembles_by_size(probs, labels, seed=0, single=None):
    """For each size up to the number of runs: mean and SD of the accuracy of disjoint ensembles. A
    single model's row is the runs' own accuracies where given (`single`, as stored: from float32
    logits, where the stored float16 logits may tie or round otherwise), so it equals the spread's."""
    table = {} if single is None else {"1": single_model_row(single)}
    for size in (s for s in ENSEMBLE_SIZES if s <= len(probs) and str(s) not in table):
        accs = ensembles(probs, labels, size, seed)
        table[str(size)] = {"groups": len(accs), "acc": float(accs.mean()),
                            "sd": float(accs.std(ddof=1)) if len(accs) > 1 else float("nan")}
    return table


def single_model_row(acc):
    """The ensembles table's row of one model: each run alone, its accuracy's mean and SD."""
    acc = np.asarray(acc, float)
    return {"groups": len(acc), "acc": float(acc.mean()), "sd": float(acc.std(ddof=1)) if len(acc) > 1 else float("nan")}


def snapshot_ensembles(snapshot_logits, labels, seed=0):
    """Summers & Dinneen's snapshot ensembles, from runs × cycles × n × C logits: each run's ensemble of
    its cycles' snapshots, its accuracy (mean, SD and the SD's bootstrap error over runs), the
    disagreement between runs' snapshot ensembles, and the gain over the run's last snapshot."""
    runs, cycles, _, classes = snapshot_logits.shape
    predictions = softmax(snapshot_logits).mean(1).argmax(-1)
    accuracy = (predictions == labels).mean(1)
    last = (snapshot_logits[:, -1].argmax(-1) == labels).mean(1)
    sd, sd_err = sd_with_error(accuracy, resample_counts(runs, seed=seed))
    return {"cycles": cycles, "runs": runs, "acc": float(accuracy.mean()), "sd": sd, "sd_err": sd_err,
            "disagreement": disagreement(predictions, classes) if runs > 1 else float("nan"),
            "gain": float((accuracy - last).mean())}


def summarize_tokens(acc, loss, target_logprob, predictions, targets, vocabulary, seed=0):
    """summarize's metrics for a language model, over test tokens: `target_logprob` and `predictions`
    R×N (each run's log-probability of the target and its most probable token, at the N scored
    positions), `targets` N. Perplexity is exp of the per-token cross-entropy. Ensembles average the
    runs' probabilities of the target, which is all that their cross-entropy needs; their accuracy
    needs whole distributions, which a language model's runs do not keep (NaN), as ECE and Spearman's ρ."""
    acc, loss = np.asarray(acc, float), np.asarray(loss, float)
    runs, nan = len(acc), float("nan")
    correct = predictions == targets
    counts = resample_counts(runs, seed=seed)
    out = {"n": runs, "tokens": int(len(targets)), "acc_mean": float(acc.mean()), "ce_mean": float(loss.mean()),
           "ensemble_acc": nan, "ece": nan, "spearman": nan, "ensembles": {"1": single_model_row(acc)}}
    out["acc_sd"], out["acc_sd_err"] = sd_with_error(acc, counts)
    out["ce_sd"], out["ce_sd_err"] = sd_with_error(loss, counts)
    out["ppl_mean"] = float(np.exp(loss).mean())
    out["ppl_sd"], out["ppl_sd_err"] = sd_with_error(np.exp(loss), counts)
    out["binomial_sd"] = binomial_sd(correct)
    logprob = target_logprob.astype(np.float64)
    out["ensemble_ce"] = float(-(np.logaddexp.reduce(logprob, axis=0) - np.log(runs)).mean())
    out["ensemble_ppl"] = float(np.exp(out["ensemble_ce"]))
    if runs < 2:
        return {**out, "disagreement": nan, "ensemble_gain": nan, "ensemble_gain_ce": nan, "ensemble_gain_ppl": nan,
                "pairs": 0, "distribution_sd": nan, "distribution_sd_low": nan, "distribution_sd_high": nan}
    pairs = run_pairs(runs, seed=seed)
    out["disagreement"] = disagreement(predictions, vocabulary)
    out["ensemble_gain"] = nan  # in accuracy: needs whole distributions
    out["ensemble_gain_ce"], out["ensemble_gain_ppl"] = pair_ensemble_gains(logprob, pairs)
    out["pairs"] = len(pairs)
    out["distribution_sd"], out["distribution_sd_low"], out["distribution_sd_high"] = \
        distribution_sd(acc, correct, counts)
    return out


def pair_ensemble_gains(logprob, pairs, chunk=256):
    """Mean over pairs of runs of how much their two-run ensemble lowers the per-token cross-entropy
    (nats) and the perplexity, against the pair's mean."""
    ce = -logprob.mean(1)
    gains_ce, gains_ppl = [], []
    for start in range(0, len(pairs), chunk):
        a, b = pairs[start:start + chunk].T
        together = -(np.logaddexp(logprob[a], logprob[b]) - np.log(2)).mean(1)
        gains_ce.append((ce[a] + ce[b]) / 2 - together)
        gains_ppl.append((np.exp(ce[a]) + np.exp(ce[b])) / 2 - np.exp(together))
    return float(np.concatenate(gains_ce).mean()), float(np.concatenate(gains_ppl).mean())
