"""Is Adam's default learning rate the best one for a small ResNet-18? A learning-rate sweep of the
seed recipe with 8 seeds per point, small enough for a laptop CPU (about 5 minutes on 2 cores).

    python examples/sweep.py [OUT]      # default OUT: results/examples/lr-sweep; run again to resume

The three points differ only in learning rate, so run k of every point trains in the same batch, and
they share their seeds, so the summary's differences are paired.
"""
import sys

import fastvar
from fastvar.analysis.compare import sweep_summary

out = sys.argv[1] if len(sys.argv) > 1 else "results/examples/lr-sweep"
sweep = fastvar.Sweep({"lr": [5e-4, 1e-3, 2e-3]}, runs_per_point=8,
                      study={"width": 8, "epochs": 5, "train_subset": 5000})
print(f"{len(sweep.studies)} learning rates x {sweep.runs_per_point} seeds into {out} (a bar shows progress)")
sweep.run(out, execution=fastvar.Execution(batch_models=12))

table, verdict = sweep_summary(out)
print(table)
print(verdict)
for analysis in fastvar.analyze(*(f"{out}/lr={lr:g}" for lr in sweep.settings["lr"])):
    m = analysis.metrics
    print(f"{analysis.folder.name}: SD {m['acc_sd'] * 100:.2f} pp, runs per arm to see 0.2 pp: "
          f"{m['runs_per_arm']['0.2']}")
