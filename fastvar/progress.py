"""Progress of a study's training as a tqdm bar: runs done of the total, runs per hour and the ETA.
Study.run and Sweep.run show one unless told `progress=False`; the command line adds the line naming
what runs and, once steps are timed, the projected total."""
import sys
import time

from tqdm.auto import tqdm

PROJECT_AFTER_S = 15  # seconds of steps measured before the projected total time is printed


class ProgressBar:
    """A bar of `total` runs, the runs/h and the ETA both from one estimate: the runs done since the
    first step over the time since it (setup and the first step, where compiles happen, left out).
    `describe(todo)`, if given, is the line printed before training; `project(todo, rate)` the lines
    printed once PROJECT_AFTER_S seconds of steps are measured."""

    def __init__(self, total, describe=None, project=None, label=None):
        self.total, self.describe, self.project, self.label = total, describe, project, label
        self.bar = self.first = None
        self.projected = False

    def update(self, done, todo):
        """`done` runs (fractions included) of the `todo` this call had left."""
        now = time.perf_counter()
        if self.bar is None:  # the first call: training is about to start
            if self.describe:
                tqdm.write(self.describe(todo), file=sys.stderr)
            self.bar = tqdm(total=self.total, initial=self.total - todo, unit="run", dynamic_ncols=True,
                            desc=self.label, file=sys.stderr,
                            bar_format="{l_bar}{bar}| {n:.1f}/{total} runs [{elapsed}{postfix}]")
        self.bar.update(self.total - todo + done - self.bar.n)
        if done and self.first is None:
            self.first = now, done
            return
        if self.first is None or now == self.first[0] or done == self.first[1]:
            return
        rate = (done - self.first[1]) / (now - self.first[0]) * 3600
        self.bar.set_postfix_str(f"{per_hour(rate)}, ETA {duration((todo - done) / rate)}", refresh=False)
        if self.project and not self.projected and now - self.first[0] >= PROJECT_AFTER_S:
            self.projected = True
            for line in self.project(todo, rate):
                tqdm.write(line, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def progress_of(progress, total, label):
    """What a run() reports its progress to, from its `progress` argument: a bar of `total` runs
    (True), nothing (False or None), or the caller's own `progress(done, todo)`. Returns the callable
    (or None) and what ends it."""
    if progress is True:
        bar = ProgressBar(total, label=label)
        return bar.update, bar.close
    return progress or None, lambda: None


def per_hour(rate):
    return f"{rate:,.0f} runs/h" if rate >= 100 else f"{rate:.3g} runs/h"


def duration(hours):
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h" if hours < 10 else f"{hours:.0f} h"
