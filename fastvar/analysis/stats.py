"""Inference on run-level numbers: Student's t, Welch and paired comparisons, sample sizes, and the
variance components of a crossed init × order grid.

numpy and the standard library only: Student's t comes from the regularised incomplete beta function
(a continued fraction, as in Numerical Recipes), checked against scipy in the tests.
"""
import math
from dataclasses import dataclass

import numpy as np

ALPHA, POWER = 0.05, 0.8


def _beta_fraction(a, b, x, steps=300, tiny=1e-300):
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, steps):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return result


def incomplete_beta(a, b, x):
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _beta_fraction(b, a, 1 - x) / b


def t_cdf(t, df):
    """P(T <= t) for Student's t with `df` (not necessarily integer) degrees of freedom."""
    # P(T <= -|t|), from whichever argument of the beta function is far from 1 (no cancellation).
    if t * t < df:
        tail = 0.5 - 0.5 * incomplete_beta(0.5, df / 2, t * t / (df + t * t))
    else:
        tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p, df):
    """The t with t_cdf(t, df) = p, by bisection (monotone, so it cannot miss)."""
    low, high = -1.0, 1.0
    while t_cdf(low, df) > p:
        low *= 2
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
        if high - low < 1e-12 * max(1.0, abs(middle)):
            break
    return (low + high) / 2


@dataclass
class Comparison:
    """B minus A: the difference of means, its 95 % interval, and the test's p-value."""
    test: str
    n: int  # runs (Welch: both arms together) or pairs (paired)
    difference: float
    low: float
    high: float
    p_value: float
    df: float


def _t_comparison(test, n, difference, se, df):
    half = t_quantile(1 - ALPHA / 2, df) * se
    if se == 0:  # every difference equal: certain, either way
        return Comparison(test, n, difference, difference, difference, float(difference == 0), df)
    p = 2 * (1 - t_cdf(abs(difference) / se, df))
    return Comparison(test, n, difference, difference - half, difference + half, p, df)


def welch(a, b):
    """Welch's unequal-variance t-test of mean(b) - mean(a)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(len(a), len(b)) < 2:
        raise ValueError("Welch's test needs at least 2 runs in each folder")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else float(len(a) + len(b) - 2)
    return _t_comparison("welch", len(a) + len(b), b.mean() - a.mean(), math.sqrt(va + vb), df)


def paired(a, b):
    """Paired t-test of b - a, element k of `a` paired with element k of `b`."""
    d = np.asarray(b, float) - np.asarray(a, float)
    if len(d) < 2:
        raise ValueError("a paired test needs at least 2 pairs")
    return _t_comparison("paired", len(d), d.mean(), d.std(ddof=1) / math.sqrt(len(d)), len(d) - 1)


def runs_per_arm(sd, difference, alpha=ALPHA, power=POWER):
    """Runs per arm for a two-sided two-sample t-test to detect `difference` with this power, when each
    run's SD is `sd`: n = 2 sd² (t_{1-alpha/2} + t_{power})² / difference², iterated on df = 2n - 2
    (the textbook approximation; Cohen's table gives 64 per arm for d = 0.5)."""
    if not sd > 0:
        return 2
    n = 2.0
    for _ in range(100):
        df = max(2 * n - 2, 1)
        z = t_quantile(1 - alpha / 2, df) + t_quantile(power, df)
        new = max(2.0, math.ceil(2 * (sd * z / difference) ** 2))
        if new == n:
            break
        n = new
    return int(n)


@dataclass
class Component:
    name: str
    variance: float  # estimate, may be negative (method of moments); SDs below clip it at 0
    low: float  # 95 % parametric-bootstrap interval of the variance
    high: float

    @property
    def sd(self):
        return math.sqrt(max(self.variance, 0.0))


def _anova_moments(grid):
    """Method-of-moments variances (rows, columns, rest) of I×J tables, one per leading index."""
    i, j = grid.shape[-2:]
    grand = grid.mean((-2, -1), keepdims=True)
    rows, cols = grid.mean(-1, keepdims=True), grid.mean(-2, keepdims=True)
    ms_rows = j * ((rows - grand) ** 2).sum((-2, -1)) / (i - 1)
    ms_cols = i * ((cols - grand) ** 2).sum((-2, -1)) / (j - 1)
    ms_rest = ((grid - rows - cols + grand) ** 2).sum((-2, -1)) / ((i - 1) * (j - 1))
    return (ms_rows - ms_rest) / j, (ms_cols - ms_rest) / i, ms_rest


def variance_components(grid, names=("init", "order", "rest"), resamples=2000, seed=0):
    """Two-way random-effects ANOVA of an I×J table (one run per cell, rows and columns crossed):
    the variance due to the row factor, the column factor, and the rest (their interaction and every
    other source), each with a 95 % interval from a seeded parametric bootstrap of the fitted model.

    A variance estimate is a scaled chi-square, skewed to the right, so where the simulated estimates
    are all positive the interval uses their ratio to the estimate as the pivot; otherwise their
    percentiles. Planted components fall inside at close to the nominal rate (tested)."""
    grid = np.asarray(grid, float)
    if grid.ndim != 2 or min(grid.shape) < 2:
        raise ValueError("variance components need an I×J grid with I, J >= 2")
    estimates = _anova_moments(grid)
    rng = np.random.default_rng(seed)
    i, j = grid.shape
    sds = [math.sqrt(max(v, 0.0)) for v in estimates]
    simulated = (rng.normal(0, sds[0], (resamples, i, 1)) + rng.normal(0, sds[1], (resamples, 1, j))
                 + rng.normal(0, sds[2], (resamples, i, j)))
    result = []
    for name, estimate, draws in zip(names, estimates, _anova_moments(simulated)):
        low, high = np.percentile(draws, [2.5, 97.5])
        if estimate > 0 and low > 0:
            low, high = estimate * estimate / high, estimate * estimate / low
        result.append(Component(name, float(estimate), float(low), float(high)))
    return result
