"""Comparing folders: B minus A with Welch's and the paired test, and a sweep's points against its best."""
import numpy as np

from ..data import TEST_SET
from ..errors import AnalysisError
from ..store import folder_name, holds_runs, sweep_points
from .load import eval_results, is_sweep_folder, on_test_set, read_runs
from .report import fmt, markdown_table
from .stats import paired, welch


SEED_COLUMNS = ("init_seed", "order_seed", "aug_seed", "dropout_seed", "perturb_seed")


def run_seeds_key(row):
    """Run k of one folder pairs with run k of another when every seed of theirs is the same."""
    return (row["run_index"], *(row[c] for c in SEED_COLUMNS))


def compare(folder_a, folder_b, test_set=TEST_SET):
    """B minus A in accuracy on `test_set` (the test set, or an eval set's name): Welch's test, and the
    paired test over runs with the same seeds."""
    return compare_rows(read_runs(folder_a, test_set)[1], read_runs(folder_b, test_set)[1])


def compare_rows(rows_a, rows_b):
    """compare's, over the runs' rows."""
    acc_a, acc_b = [r["test_acc"] for r in rows_a], [r["test_acc"] for r in rows_b]
    if min(len(acc_a), len(acc_b)) < 2:
        raise AnalysisError(f"compare needs at least 2 runs in each folder ({len(acc_a)} and {len(acc_b)})")
    results = [welch(acc_a, acc_b)]
    by_seeds = {run_seeds_key(r): r["test_acc"] for r in rows_a}
    pairs = [(by_seeds[run_seeds_key(r)], r["test_acc"]) for r in rows_b if run_seeds_key(r) in by_seeds]
    if len(pairs) >= 2:
        results.append(paired(*zip(*pairs)))
    return acc_a, acc_b, results


def comparison_lines(folder_a, folder_b, acc_a, acc_b, results, test_set=TEST_SET):
    on = "" if test_set == TEST_SET else f" on {test_set}"

    def describe(folder, acc):
        acc = np.asarray(acc) * 100
        return f"{folder}: {len(acc)} runs, {acc.mean():.2f} % ± {acc.std(ddof=1):.2f}{on}"
    lines = [f"A  {describe(folder_a, acc_a)}", f"B  {describe(folder_b, acc_b)}"]
    for c in results:
        what = "Welch's t-test" if c.test == "welch" else f"paired t-test over {c.n} runs with the same seeds"
        lines.append(f"B - A: {c.difference * 100:+.3f} pp, 95 % interval [{c.low * 100:+.3f}, {c.high * 100:+.3f}], "
                     f"{what}: p = {c.p_value:.3g} (df {c.df:.1f})")
    if len(results) == 1:
        lines.append("no runs with the same seeds in both folders: no paired test")
    return lines


def sweep_summary(folder, test_set=TEST_SET):
    """Each point's mean ± SD of accuracy on `test_set`, and its difference to the best point (paired
    over runs with the same seeds) with a 95 % interval; and the points not distinguishable from the best."""
    return points_summary(folder, [(point, read_runs(path, test_set)[1]) for point, path in sweep_points(folder)
                                   if holds_runs(path)])


def points_summary(folder, points):
    """sweep_summary's table and verdict, from each point with finished runs and its rows on one test set."""
    if not points:
        raise AnalysisError(f"{folder}: no point has finished runs yet")
    best_point, best_runs = max(points, key=lambda p: np.mean([r["test_acc"] for r in p[1]]))
    rows, tied = [], []
    for point, runs in points:
        acc = np.asarray([r["test_acc"] for r in runs]) * 100
        cells = [folder_name(point), len(acc), f"{acc.mean():.2f} ± {fmt(acc.std(ddof=1) if len(acc) > 1 else None)}"]
        if point is best_point:
            rows.append(cells + ["best", "–"])
            continue
        test = compare_rows(best_runs, runs)[2][-1] if len(acc) > 1 else None
        if test is None:
            rows.append(cells + ["–", "–"])
            continue
        if test.low <= 0 <= test.high:
            tied.append(folder_name(point))
        rows.append(cells + [f"{test.difference * 100:+.2f} [{test.low * 100:+.2f}, {test.high * 100:+.2f}]",
                             f"{test.test}, p = {test.p_value:.3g}"])
    table = markdown_table(["point", "runs", "test acc. (%), mean ± SD", "minus best (pp) [95 %]", "test"], rows)
    verdict = (f"not distinguishable from the best ({folder_name(best_point)}) at 95 %: "
               + (", ".join(tied) if tied else "none"))
    return table, verdict


def sweep_sections(folders):
    """For each sweep's folder among `folders` and each of its test sets: (title, its points' table and
    verdict) for `analyze`. Each point's runs and eval sets are read once."""
    sections = []
    for folder in (f for f in folders if is_sweep_folder(f)):
        read = [(point, rows, eval_results(stores))
                for point, path in sweep_points(folder) if holds_runs(path) for stores, rows in [read_runs(path)]]
        for test_set in [TEST_SET, *(read[0][2] if read else ())]:  # the first point's eval sets, in order
            on = "" if test_set == TEST_SET else f" on the eval set '{test_set}'"
            points = [(point, rows if test_set == TEST_SET else on_test_set(rows, evals, folder, test_set))
                      for point, rows, evals in read]
            sections.append((f"Sweep {folder}: each point against the best{on}",
                             "\n\n".join(points_summary(folder, points))))
    return sections
