"""A sweep: one study per point of a hyperparameter grid, in one folder, trained together.

    from fastvar import Execution, Sweep
    Sweep({"lr": [5e-4, 1e-3, 2e-3]}, runs_per_point=32, study={"width": 16}).run(
        "results/sweep", execution=Execution(batch_models=16))

Each point is an ordinary study in its own subfolder (`lr=0.001/`), so `analyze`, `compare`, `plot`
and resume work on it unchanged. Points share their seeds (run k of every point has the same seeds),
so they compare pairwise. Points that differ only in what a batch holds per replica (learning rate,
weight decay, label smoothing) train in the same batches, run k of every point side by side; points
that change shapes or step counts (epochs, width, batch size) train in batches of their own.
"""
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from .canonical import declared_defaults, without_defaults
from .errors import ConfigError, Param, StoreError
from .progress import progress_of
from .recipes import PER_REPLICA, SETTABLE
from .store import DEFINITION, folder_name, grid_points
from .execution import Execution
from .runner import train_runs
from .study import Study

STUDY_FIELDS = ("epochs", "width")  # set on the Study itself; the rest replace recipe values
SETTINGS = (*SETTABLE, *STUDY_FIELDS)
ALIASES = {"wd": "weight_decay", "ls": "label_smoothing", "clip": "clip_grad_norm"}
# How a sweep runs, which older sweep folders recorded beside what it measures: never part of a definition
HOW = tuple(f.name for f in fields(Execution))


def parse_setting(text):
    """`lr=5e-4,1e-3` -> ("lr", [0.0005, 0.001]); integers stay integers."""
    name, sep, values = text.partition("=")
    name = ALIASES.get(name.strip(), name.strip())
    if not sep or name not in SETTINGS or not values:
        raise ConfigError(f"--set takes NAME=V1,V2,... with NAME one of {', '.join(SETTINGS)}, not {text!r}")
    try:
        return name, [int(v) if v.strip().lstrip("-").isdigit() else float(v) for v in values.split(",")]
    except ValueError:
        raise ConfigError(f"--set {name}: values must be numbers, not {values!r}") from None


@dataclass(frozen=True)
class Sweep:
    settings: dict  # name -> list of values; the grid is their product
    runs_per_point: int = 32
    study: dict = field(default_factory=dict)  # Study keyword arguments every point shares

    def __post_init__(self):
        unknown = set(self.settings) - set(SETTINGS)
        if unknown or not self.settings:
            raise ConfigError(f"a sweep sets some of {', '.join(SETTINGS)}, not {', '.join(sorted(unknown)) or 'nothing'}")
        shared = set(self.study.get("overrides") or {}) & set(self.settings)
        if shared:
            raise ConfigError(f"{', '.join(sorted(shared))} is both set for every point and swept; give it once")
        if self.runs_per_point < 2:
            raise ConfigError(f"{{}} must be at least 2 to measure a spread, not {self.runs_per_point}",
                              Param("runs_per_point"))
        studies = [(point, self.point_study(point)) for point in self.points()]  # checks every point
        object.__setattr__(self, "studies", studies)  # frozen: set once, here

    def points(self):
        return grid_points(self.settings)

    def point_study(self, point):
        own = {k: v for k, v in point.items() if k in STUDY_FIELDS}
        overrides = {**(self.study.get("overrides") or {}), **{k: v for k, v in point.items() if k not in STUDY_FIELDS}}
        return Study(**{**self.study, **own, "runs": self.runs_per_point, "overrides": overrides or None})

    def definition(self):
        """What makes a sweep folder this sweep (not the run count: more runs extend it)."""
        return definition(self.settings, self.study)

    def claim(self, out):
        """Create `out` for this sweep, or check that it holds this sweep."""
        out.mkdir(parents=True, exist_ok=True)
        path = out / DEFINITION
        if path.is_file():
            stored = json.loads(path.read_text())
            if definition(stored["settings"], stored["study"]) != json.loads(json.dumps(self.definition())):
                raise StoreError(f"{out} holds another sweep ({path}); choose another {{}}", Param("out"))
        else:
            path.write_text(json.dumps(self.definition(), indent=1, sort_keys=True))

    def run(self, out, *, execution=None, data_dir=None, download=False, data=None, progress=True):
        """Train every point's unfinished runs as `execution` says (default: Execution()); return the
        sweep's stores (SweepStores: `runs()` as a Study's store has it). `progress` as Study.run takes
        it, over the runs of every point."""
        out, execution = Path(out), execution or Execution()
        execution.start()
        lead = self.studies[0][1]
        data = lead.with_test_sets(lead.load_data(data_dir, download) if data is None else data)
        studies = [(point, study.for_data(data)) for point, study in self.studies]
        studies[0][1].check_model(data, execution)
        self.claim(out)
        stores = [(point, study, study.open_store(out / folder_name(point), data, execution))
                  for point, study in studies]
        groups = {}
        for point, study, store in stores:
            key = json.dumps({k: v for k, v in point.items() if k not in PER_REPLICA}, sort_keys=True)
            groups.setdefault(key, []).append((study, store))
        entries = []
        for members in groups.values():  # run k of every point side by side: paired in one batch
            todo = [set(study.unfinished(store, execution)) for study, store in members]
            group = [(study, store, i) for i in range(self.runs_per_point)
                     for (study, store), left in zip(members, todo) if i in left]
            entries.append(group)
        total = sum(len(g) for g in entries)
        report, end_report = progress_of(progress, len(self.studies) * self.runs_per_point, f"sweep in {out}")
        done = 0
        try:
            for group in entries:
                train_runs(group, data, execution, report and (lambda d, t, base=done: report(base + d, total)))
                done += len(group)
        finally:  # as Study.run: the folders are free again once it returns
            end_report()
            for _, _, store in stores:
                store.unlock()
        return SweepStores(out, tuple((point, store) for point, _, store in stores))


@dataclass(frozen=True)
class SweepStores:
    """What Sweep.run returns, as Study.run returns its Store: the folder and `runs()`, every point's
    rows, each named by its `point` as fastvar.results names them; iterated, its (point, Store) pairs."""
    folder: Path
    points: tuple  # (point, Store) pairs, in grid order

    def runs(self):
        return [{**row, "point": folder_name(point)} for point, store in self.points for row in store.runs()]

    def __iter__(self):
        return iter(self.points)

    def __len__(self):
        return len(self.points)


def definition(settings, study):
    """A sweep's settings and the Study arguments its points share that change results: not how they
    run (HOW, such as the shard), and not those left at Study's defaults, so that a setting added to
    Study later leaves every earlier sweep folder this sweep's."""
    kept = without_defaults(study, declared_defaults(Study))
    return {"settings": settings, "study": {k: v for k, v in kept.items() if k not in HOW}}
