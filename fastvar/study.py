"""A study: what it measures (recipe, sources, seeds, precision, subsets), a results folder, and the
runs still to train, trained M at a time as its Execution says.

    from fastvar import Execution, Study
    Study(experiment="fixed-init", runs=64).run("results/fixed-init", execution=Execution(batch_models=16))
"""
import shutil
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple
from pathlib import Path
from types import MappingProxyType
from typing import Callable

import torch

from .canonical import declared_defaults, without_defaults
from .data import DATASETS, load_dataset
from .engine.dry_step import check_replicable
from .errors import ConfigError, Param, check_choices, first_line
from .execution import Execution
from .models import BUILTIN_MODELS, LANGUAGE_MODELS, architecture_digest, has_own_dropout, model_name, model_spec
from .precisions import COMPUTE_DTYPE, PRECISIONS
from .progress import progress_of
from .recipes import PER_REPLICA, RECIPES, SETTABLE, Cosine, Recipe
from .runner import train_runs
from .sources import EPOCH_ORDERS, SOURCES, experiment_sources, run_seeds
from .store import Store, config_hash, db_name, run_key

@dataclass(frozen=True)
class Study:
    experiment: str | None = "all-random"  # a preset; None with `vary`
    recipe: str | Recipe = "seed"  # a name of RECIPES, or a Recipe
    runs: int | None = None  # None: 1000, or rows × columns for a grid
    epochs: int | None = None  # None: the recipe's
    model: str | Callable | None = None  # a registered name, an import path or a factory; None: the recipe's
    width: int | None = None  # None: the model's (64 for the ResNet-18s)
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    precision: str = "auto"  # auto: bf16-mixed on CUDA, float32 on the CPU
    grid: tuple[int, int] | None = None  # (init seeds, order seeds) of the `grid` experiment
    save_weights: int = 0  # keep the final weights of runs 0 .. save_weights-1 (for CKA)
    eval_every_epoch: bool = False  # test accuracy and loss after every epoch (changes no result)
    token_logits: bool = False  # a language model keeps its whole test logits (changes no result)
    snapshots: int | None = None  # a cosine schedule restarted this many times, logits kept per cycle
    vary: tuple[str, ...] | None = None  # the sources to vary, instead of a preset
    fixed_seed: int = 0  # the constant that fixed sources draw from
    onset_epoch: int | None = None  # varied sources follow the fixed ones before this epoch
    dropout: float | None = None  # dropout probability on the classifier's input
    dataset: str = "cifar10"  # or mnist; run on a Dataset.from_arrays, its arrays-<digest>
    overrides: dict | None = None  # the recipe's lr, weight_decay, label_smoothing or batch_size, replaced
    epoch_order: str = "fresh"  # fresh: a new permutation each epoch; same: the first one every epoch (seed's exp2)
    eval_shift: bool = False  # score every run on the built-in shifted test set too (fastvar.shift)

    def __post_init__(self):
        """Check every setting and put the study in its one form (a named experiment for `vary`, the
        run count, read-only overrides): a Study never changes after this."""
        if self.vary is not None:
            self._name_custom_experiment()
        if self.overrides is not None:
            self._set("overrides", MappingProxyType(dict(self.overrides)))
        if self.grid is not None:
            self._set("grid", tuple(self.grid))
        experiment_sources(self.experiment)  # an unknown name: ConfigError
        choices = {"recipe": (*RECIPES, *[self.recipe] * isinstance(self.recipe, Recipe)),
                   "precision": ("auto", *PRECISIONS),
                   "dataset": (*DATASETS, *[self.dataset] * self.dataset.startswith("arrays-")),
                   "epoch_order": EPOCH_ORDERS}
        check_choices(self, choices)
        self._check_overrides()  # before the recipe is resolved with them
        self._set("_recipe", self._resolve_recipe())
        self._set("_own_dropout", own_dropout(self.model_factory()))  # the model's own nn.Dropout: a source
        self._set("_on_device", {})  # Study.resolve's, by device
        spec = model_spec(self.model_factory())  # an unknown name or a bad import path: one line, now
        if self.width is not None and not spec.width:  # linear's width 0: it takes none either
            raise ConfigError("{} sets the width of fastvar's own models; this model takes none", Param("width"))
        self._check_grid()
        for name in ("runs", "epochs", "width", "train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{{}} must be at least 1, not {value}", Param(name))
        epochs = self.resolved_recipe().epochs
        if self.snapshots is not None and (self.snapshots < 1 or epochs % self.snapshots):
            raise ConfigError(f"{{}} must divide the {epochs} epochs into whole cycles",
                              Param("snapshots", self.snapshots))
        if self.dropout is not None and not 0 < self.dropout < 1:
            raise ConfigError(f"{{}} must be a probability between 0 and 1, not {self.dropout}", Param("dropout"))
        if self.save_weights < 0:
            raise ConfigError(f"{{}} must be at least 0, not {self.save_weights}", Param("save_weights"))
        self._check_sources(epochs)

    def _check_overrides(self):
        for name, value in (self.overrides or {}).items():
            if name not in SETTABLE:
                raise ConfigError(f"cannot set {name!r}; settable: {', '.join(SETTABLE)}, epochs, width")
            low, high = SETTABLE[name]
            if not (isinstance(value, (int, float)) and low <= value < high):
                raise ConfigError(f"{name} must be a number in [{low}, {high}), not {value!r}")

    def _set(self, name, value):
        object.__setattr__(self, name, value)  # only while __post_init__ puts the study in its one form

    def _name_custom_experiment(self):
        vary = tuple(sorted(set(self.vary)))
        named = f"vary-{'+'.join(vary)}"  # the name its run keys carry; checked as any other
        if self.experiment not in (None, named):  # a copy (dataclasses.replace) brings its own name
            raise ConfigError("{} and {} both name what varies; give one of them", Param("experiment"), Param("vary"))
        unknown = sorted(set(vary) - set(SOURCES))
        if unknown:
            raise ConfigError(f"{{}}: unknown source {', '.join(map(repr, unknown))}; choose from {', '.join(SOURCES)}",
                              Param("vary"))
        self._set("vary", vary)
        self._set("experiment", named)

    def present_sources(self):
        """The sources this recipe has: augmentation only if it augments, dropout only with --dropout or
        in a model with nn.Dropout of its own."""
        recipe = self.resolved_recipe()
        absent = {source for source, has in (("aug", recipe.augment.to_dict()),
                                             ("dropout", recipe.dropout or self._own_dropout)) if not has}
        return set(SOURCES) - absent

    def varied(self):
        return experiment_sources(self.experiment) & self.present_sources()

    def _check_sources(self, epochs):
        named = experiment_sources(self.experiment) if self.experiment.startswith("vary-") else set()
        absent = named - self.present_sources()
        if absent:
            raise ConfigError(f"{self.experiment} varies {', '.join(sorted(absent))}, which the {self.recipe_name()} "
                              f"recipe does not have; see --list-experiments")
        if self.onset_epoch is not None:
            if "init" in self.varied():
                raise ConfigError("init has no onset: a model is initialised once, before epoch 0; "
                                  "use an experiment that fixes init (fixed-init, vary-order, one-ulp, ...)")
            if not 1 <= self.onset_epoch < epochs:
                raise ConfigError(f"{{}} must be between 1 and {epochs - 1}, not {self.onset_epoch}",
                                  Param("onset_epoch"))

    def _check_grid(self):
        if (self.experiment == "grid") != (self.grid is not None):
            raise ConfigError("the grid experiment takes its shape from {}, and only it does", Param("grid"))
        if self.grid is None:
            self._set("runs", 1000 if self.runs is None else self.runs)
            return
        if len(self.grid) != 2 or min(self.grid) < 2:
            raise ConfigError(f"{{}} needs at least 2 init seeds and 2 order seeds, not {self.grid}", Param("grid"))
        cells = self.grid[0] * self.grid[1]
        if self.runs not in (None, cells):
            raise ConfigError(f"a {self.grid[0]}x{self.grid[1]} grid has {cells} runs, not {{}}",
                              Param("runs", self.runs))
        self._set("runs", cells)

    def resolved_recipe(self):
        """The recipe with this study's changes, one typed Recipe: every hyperparameter a run is trained
        with, as the engine reads it."""
        return self._recipe

    def _resolve_recipe(self):
        """The study's model, epochs, dropout and overrides go through Recipe.replace; snapshots restart
        the recipe's cosine (warm-up included), or a plain one, that many times."""
        recipe = self.recipe if isinstance(self.recipe, Recipe) else RECIPES[self.recipe]
        changes = dict(self.overrides or {})
        for name in ("model", "epochs", "dropout"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        if self.snapshots is not None:
            cosine = recipe.schedule if isinstance(recipe.schedule, Cosine) else Cosine()
            changes["schedule"] = replace(cosine, cycles=self.snapshots)
        return recipe.replace(**changes)

    def recipe_dict(self):
        """The resolved recipe as the config records it."""
        recipe = self.resolved_recipe().to_dict()
        smoothing = (self.overrides or {}).get("label_smoothing")
        if smoothing == 0:  # an explicit 0 has always been recorded: folders made with one keep their hash
            recipe["label_smoothing"] = smoothing
        return recipe

    def model_factory(self):
        """The model as Replicas takes it: a name or a factory (kept as given)."""
        return self.resolved_recipe().model

    def recipe_name(self):
        return "custom" if isinstance(self.recipe, Recipe) else self.recipe

    def resolved_width(self):
        return self.width or model_spec(self.model_factory()).width

    def config(self, device=None):
        """Everything that changes a run's result beyond rounding, for a study trained on `device` (which
        resolves the precision `auto`; default: Execution's); not the run count nor how it runs (the
        Execution, recorded in each row)."""
        config = {"recipe": self.recipe_name(), "hyperparameters": self.recipe_dict(), "width": self.resolved_width(),
                  "train_subset": self.train_subset, "test_subset": self.test_subset, "seed": self.seed,
                  "experiment": self.experiment, "precision": self.resolved_precision(device)}
        # Newer settings only where not at their defaults, so that older folders keep their config hash.
        optional = {"grid": self.grid and list(self.grid), "vary": self.vary and list(self.vary),
                    "fixed_seed": self.fixed_seed, "onset_epoch": self.onset_epoch, "dataset": self.dataset,
                    "epoch_order": self.epoch_order, "eval_shift": self.eval_shift,
                    # a model of the user's own: its parameters' names and shapes, beside its name
                    "architecture": None if self.builtin_model() else architecture_digest(self.model_factory())}
        return {**config, **without_defaults(optional, {**declared_defaults(Study), "architecture": None})}

    def resolve(self, device):
        """This study as it trains on `device`, worked out once (a user's model is built on the meta
        device for its digest): what the runner and every stored row read."""
        key = str(device)
        if key not in self._on_device:
            config = self.config(device)
            recipe = self.resolved_recipe()
            shared = recipe.replace(**dict.fromkeys(PER_REPLICA, 0)).to_dict()  # what a batch cannot hold per replica
            self._on_device[key] = OnDevice(
                recipe=recipe, precision=config["precision"], width=config["width"], config_hash=config_hash(config),
                batch_settings={**config, "hyperparameters": shared, "eval_every_epoch": self.eval_every_epoch,
                                "token_logits": self.token_logits})
        return self._on_device[key]

    def builtin_model(self):
        return model_name(self.model_factory()) in BUILTIN_MODELS

    def notes(self, device):
        """What a user should know before the study runs on `device`: lines for the command line to print."""
        if "kernels" in experiment_sources(self.experiment) and device.type == "cpu" and self.varied() <= {"kernels"}:
            return ["kernels on the CPU are deterministic: varying them changes nothing, so every run of "
                    f"{self.experiment} will come out identical"]
        return []

    def resolved_precision(self, device=None):
        """auto: bfloat16 convolutions over float32 weights on CUDA (tensor cores), float32 on the CPU."""
        if self.precision != "auto":
            return self.precision
        device = device or Execution().resolved_device()
        return "bf16-mixed" if device.type == "cuda" else "float32"

    def for_data(self, data):
        """This study as it trains on `data`, whose identity is then part of the config (one folder, one
        data set): a user's own arrays by their digest; a built-in dataset by its name and the subsets it
        was loaded with (its archive is checked, its subsets a fixed rule), so that a folder refuses
        another. A subset the study names that the data are not is one line."""
        if data.name.startswith("arrays-"):
            return replace(self, dataset=data.name)
        changes = {"dataset": data.name} if data.name != self.dataset else {}
        for name in ("train_subset", "test_subset"):
            wanted, loaded = getattr(self, name), getattr(data, name)
            if wanted is not None and wanted != loaded:
                given = "the whole set" if loaded is None else f"a subset of {loaded:,}"
                raise ConfigError(f"{{}} asks for {wanted:,} examples, but the data given are {given}; load them "
                                  f"with {name}={wanted} or leave it out", Param(name, wanted))
            if loaded is not None and wanted is None:
                changes[name] = loaded
        return replace(self, **changes) if changes else self

    def load_data(self, data_dir=None, download=False):
        return load_dataset(self.dataset, data_dir, download=download, train_subset=self.train_subset,
                            test_subset=self.test_subset)

    def with_test_sets(self, data):
        """`data` with every test set this study scores: the built-in shifted one with `eval_shift`."""
        return data.with_shift() if self.eval_shift else data

    def open_store(self, out, data, execution):
        """The results folder for this study's config (created if new, this shard's file with a shard),
        checked against `data` and locked for this process."""
        store = Store(out, self.config(execution.resolved_device()), execution.shard)
        store.lock()
        store.check_labels(data.y_test)
        store.check_eval_labels({name: y for name, (_, y) in data.eval_sets.items()})
        return store

    def check_model(self, data, execution):
        """Before any run: a recipe that augments needs images, and a model of the user's own is tried on
        `data`'s shapes (fastvar.engine.dry_step.check_replicable)."""
        recipe = self.resolved_recipe()
        augment = recipe.augment.to_dict()
        if data.kind != "images" and augment:
            raise ConfigError(f"the recipe augments images ({', '.join(augment)}), but the data "
                              f"are {data.kind} {tuple(data.x_train.shape)}; use a recipe without augmentation")
        if self.builtin_model() and (model_name(recipe.model) in LANGUAGE_MODELS) != (data.kind == "tokens"):
            wanted = "token sequences (--dataset pydoc-chars, or your own)" if data.kind != "tokens" else "images"
            raise ConfigError(f"the built-in {model_name(recipe.model)} model reads {wanted}, not {data.kind}; "
                              f"choose another {{}} or other data", Param("model"))
        if self.builtin_model() and data.kind != "tokens" and data.example_shape != (3, 32, 32):
            check_fits(recipe.model, self.resolved_width(), data)
        if self.token_logits and not data.token_targets:
            raise ConfigError(f"{{}} keeps a language model's whole logits; with {data.kind} and a label each, every "
                              f"run keeps its logits anyway", Param("token_logits", True, flag="--token-logits"))
        if data.token_targets and self.snapshots and not self.token_logits:
            raise ConfigError("{} keeps each cycle's test logits, which a language model's runs keep only with {}",
                              Param("snapshots", self.snapshots), Param("token_logits", True, flag="--token-logits"))
        if not self.builtin_model():
            device = execution.resolved_device()
            fixed_kernels_on_cuda = device.type == "cuda" and "kernels" not in self.varied()
            check_replicable(self.model_factory(), execution.resolved_strategy(device), data.num_classes,
                             data.example_shape, deterministic_cuda=fixed_kernels_on_cuda, dropout=recipe.dropout,
                             vocabulary=data.vocabulary if data.kind == "tokens" else None,
                             target_shape=tuple(data.y_train.shape[1:]),
                             compute_dtype=COMPUTE_DTYPE.get(self.resolved_precision(device)), pad_id=data.pad_id)

    def unfinished(self, store, execution):
        """The runs of this process (its shard's) that `store` does not hold yet, in run order."""
        finished = store.finished_indices()
        return [i for i in range(self.runs) if i not in finished and execution.trains(i)]

    def run(self, out, *, execution=None, data_dir=None, download=False, data=None, progress=True):
        """Train the runs `out` does not hold yet as `execution` says (default: Execution()); return the
        store. `progress`: a tqdm bar on stderr (True), none (False), or your own `progress(done, todo)`,
        called as training starts (done 0) and advances: runs done so far in this call (fractions
        included) of the `todo` it had left."""
        execution = execution or Execution()
        execution.start()
        data = self.with_test_sets(self.load_data(data_dir, download) if data is None else data)
        study = self.for_data(data)
        study.check_model(data, execution)
        folder, store = Path(out), None
        made = (not folder.exists(), not (folder / db_name(execution.shard)).exists())
        report, end_report = progress_of(progress, study.runs, f"{study.experiment} in {out}")
        try:
            store = study.open_store(out, data, execution)
            train_runs([(study, store, i) for i in study.unfinished(store, execution)], data, execution, report)
        except BaseException:
            if store is None or not store.finished_indices():  # nothing stored: leave no folder behind
                discard(folder, execution.shard, store, *made)
            raise
        finally:  # training is over: a second run into the folder in this process (a notebook) may start
            end_report()
            if store is not None:
                store.unlock()
        return store

    def seeds(self, run_index):
        return run_seeds(self.varied(), run_index, self.seed, self.fixed_seed, self.grid and self.grid[1])

    def row(self, seeds, result, how):
        """The runs-table row of a trained run: its seeds, results, hyperparameters and `how` it trained
        (the how columns, `device` among them). The one place a row is assembled."""
        resolved, present = self.resolve(torch.device(how["device"])), self.present_sources()
        return {**asdict(seeds), **result, **resolved.recipe.per_replica(), **how,
                "run_key": run_key(self.experiment, seeds.run_index), "experiment": self.experiment,
                # a source the recipe does not have gets no seed
                "aug_seed": seeds.aug_seed if "aug" in present else None,
                "dropout_seed": seeds.dropout_seed if "dropout" in present else None,
                "epochs": resolved.recipe.epochs, "width": resolved.width, "batch_size": resolved.recipe.batch_size,
                "config_hash": resolved.config_hash, "precision": resolved.precision}


class OnDevice(NamedTuple):
    """A study resolved for one device (Study.resolve)."""
    recipe: Recipe
    precision: str
    width: int | None
    config_hash: str
    batch_settings: dict  # what every replica of one batch must share: the config less PER_REPLICA


def check_fits(model, width, data):
    """A built-in image model (made for 3×32×32 images) tried on one example of `data`'s shape: one line
    where it cannot read it (a linear layer sized for 3072 inputs, five poolings of 8 pixels)."""
    net = model_spec(model).build(width, data.num_classes).eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, *data.example_shape))
    except RuntimeError as e:
        raise ConfigError(f"the built-in {model} model cannot read {data.kind} of shape {data.example_shape} "
                          f"({first_line(e)}); choose another {{}}, or give one of your own", Param("model")) from None


def own_dropout(model):
    """has_own_dropout, or False for a factory that cannot be built here (the dry step says why, later)."""
    try:
        return has_own_dropout(model)
    except Exception:
        return False


def discard(folder, shard, store, made_folder, made_file):
    """Undo what a failed start made before its first stored run, so the corrected command can use
    `folder`: the folder if it made it, else the results file it made (and its lock and journal)."""
    if store is not None:
        store.close()
    if made_folder:
        shutil.rmtree(folder, ignore_errors=True)
    elif made_file:
        name = db_name(shard)
        for leftover in (name, f"{name}.lock", f"{name}-journal"):
            (folder / leftover).unlink(missing_ok=True)
