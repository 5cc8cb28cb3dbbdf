"""Recipes: every hyperparameter of a run, typed, with its defaults in one place.

    recipe = fastvar.Recipe(model=make_net, epochs=20, batch_size=256,
                            optimizer=fastvar.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4),
                            schedule=fastvar.Cosine(), augment=fastvar.Augment(flip=True, pad=4))
    recipe.replace(lr=2e-3)

The engine reads a Recipe as it is. `to_dict` is what a study's config records (a setting at its
declared default is left out, so the configs of older folders keep their hashes) and `from_dict`
reads that back. Learning rates are peaks; the schedule's `factor` shapes them over the run.
"""
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, ClassVar

from .canonical import declared_defaults, without_defaults
from .errors import ConfigError
from .models import model_name

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# The hyperparameters a study or a sweep point may replace, each with its allowed range [low, high);
# a batch of replicas holds all but batch_size per replica (as vectors: Recipe.per_replica).
SETTABLE = {"lr": (1e-12, math.inf), "weight_decay": (0, math.inf), "label_smoothing": (0, 1),
            "clip_grad_norm": (0, math.inf), "batch_size": (1, math.inf)}
PER_REPLICA = ("lr", "weight_decay", "label_smoothing", "clip_grad_norm")


@dataclass(frozen=True)
class Adam:
    """Adam as torch.optim.Adam has it by default; `decoupled`: AdamW's weight decay."""
    name: ClassVar[str] = "adam"
    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False

    def to_dict(self):
        d = {"name": "adam", "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
             "weight_decay": self.weight_decay}
        return {**d, "decoupled": True} if self.decoupled else d


@dataclass(frozen=True)
class SGD:
    """SGD as torch.optim.SGD has it by default (no dampening)."""
    name: ClassVar[str] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def to_dict(self):
        return {"name": "sgd", "lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


@dataclass(frozen=True)
class Constant:
    name: ClassVar[str] = "constant"

    def factor(self, step, steps_per_epoch, total_steps):
        """The multiplier of the peak learning rate at `step` (0-based)."""
        return 1.0

    def to_dict(self):
        return {"name": self.name}


@dataclass(frozen=True)
class LinearDecay:
    """Decayed linearly to zero over the run."""
    name: ClassVar[str] = "linear"

    def factor(self, step, steps_per_epoch, total_steps):
        return 1 - step / total_steps

    def to_dict(self):
        return {"name": self.name}


@dataclass(frozen=True)
class Cosine:
    """Cosine to zero, after a linear warm-up over min(warmup_epochs, warmup_fraction of the run);
    with `cycles`, restarted that many times, the warm-up in the first."""
    warmup_epochs: int = 0
    warmup_fraction: float = 0.0
    cycles: int | None = None  # restarted this many times (snapshot ensembles; Study's `snapshots`)
    name: ClassVar[str] = "cosine"

    def factor(self, step, steps_per_epoch, total_steps):
        cycle_steps = total_steps // (self.cycles or 1)
        warmup = min(self.warmup_epochs * steps_per_epoch, int(self.warmup_fraction * cycle_steps))
        if step < warmup:
            return (step + 1) / warmup
        start = step // cycle_steps * cycle_steps
        offset = warmup if start == 0 else 0  # the warm-up belongs to the first cycle
        return 0.5 * (1 + math.cos(math.pi * (step - start - offset) / (cycle_steps - offset)))

    def snapshot_epochs(self, epochs):
        """The epochs (0-based) after which a cycle ends; empty without cycles."""
        return [(k + 1) * epochs // self.cycles - 1 for k in range(self.cycles or 0)]

    def to_dict(self):
        return {"name": self.name, **without_defaults(asdict(self), declared_defaults(Cosine))}


@dataclass(frozen=True)
class Augment:
    """fastvar.augment.augment's options: flip, a random crop after `pad` pixels of padding (zeros, or
    `pad_mode="reflect"`), airbench's `translate`, a `cutout` square. The default: none."""
    flip: bool = False
    pad: int = 0
    translate: int = 0
    cutout: int = 0
    pad_mode: str = "zeros"

    def to_dict(self):
        return without_defaults(asdict(self), declared_defaults(Augment))


@dataclass(frozen=True)
class Recipe:
    """Everything a run is trained with but its seeds. `mean` and `std` are per channel on the [0, 1]
    pixel scale (one value serves every channel); `lr_scale_1d` scales the learning rate of biases
    and normalisation parameters; `clip_grad_norm`: each step's gradient scaled to at most this 2-norm,
    as torch.nn.utils.clip_grad_norm_ scales it (None or 0: not clipped)."""
    model: str | Callable = "resnet18"
    epochs: int = 10
    batch_size: int = 128
    optimizer: Adam | SGD = field(default_factory=Adam)
    schedule: Constant | LinearDecay | Cosine = field(default_factory=Constant)
    augment: Augment = field(default_factory=Augment)
    mean: tuple = (0.5,)
    std: tuple = (0.5,)
    lr_scale_1d: float | None = None
    dropout: float | None = None
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = None

    def replace(self, **changes):
        """A new recipe with `changes`; lr, weight_decay and the optimizer's other settings by name too."""
        own = {k: v for k, v in changes.items() if k in {f.name for f in fields(self)}}
        for_optimizer = {k: v for k, v in changes.items() if k not in own}
        unknown = set(for_optimizer) - {f.name for f in fields(self.optimizer)}
        if unknown:
            raise ConfigError(f"a recipe has no setting {', '.join(sorted(unknown))}")
        optimizer = replace(own.pop("optimizer", self.optimizer), **for_optimizer)
        return replace(self, **own, optimizer=optimizer)

    def per_replica(self):
        """The hyperparameters a batch holds per replica (PER_REPLICA), this recipe's values."""
        values = {"lr": self.optimizer.lr, "weight_decay": self.optimizer.weight_decay,
                  "label_smoothing": self.label_smoothing, "clip_grad_norm": self.clip_grad_norm}
        return {name: values[name] for name in PER_REPLICA}

    def snapshot_epochs(self):
        """The epochs (0-based) after which a cyclic schedule ends a cycle; empty without cycles."""
        cyclic = getattr(self.schedule, "snapshot_epochs", None)
        return cyclic(self.epochs) if cyclic else []

    def to_dict(self):
        d = {"model": model_name(self.model), "epochs": self.epochs, "batch_size": self.batch_size,
             "optimizer": self.optimizer.to_dict(), "schedule": self.schedule.to_dict(),
             "augment": self.augment.to_dict(), "mean": list(self.mean), "std": list(self.std)}
        optional = {"lr_scale_1d": self.lr_scale_1d, "dropout": self.dropout, "label_smoothing": self.label_smoothing,
                    "clip_grad_norm": self.clip_grad_norm}
        return {**d, **without_defaults(optional, declared_defaults(Recipe))}

    @classmethod
    def from_dict(cls, recorded):
        """The Recipe a config's `hyperparameters` record (a model of the user's own: by its name)."""
        def typed(kinds, settings):
            kind = next(k for k in kinds if k.name == settings["name"])
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k != "name"})
        optional = {k: recorded[k] for k in ("lr_scale_1d", "dropout", "label_smoothing", "clip_grad_norm")
                    if k in recorded}
        return cls(model=recorded["model"], epochs=recorded["epochs"], batch_size=recorded["batch_size"],
                   optimizer=typed((Adam, SGD), recorded["optimizer"]),
                   schedule=typed((Constant, LinearDecay, Cosine), recorded["schedule"]),
                   augment=Augment(**recorded["augment"]), mean=tuple(recorded["mean"]),
                   std=tuple(recorded["std"]), **optional)


RECIPES = {
    # The seed study: torchvision ResNet-18, Adam 1e-3, batch 128, 10 epochs, no augmentation.
    "seed": Recipe(model="resnet18", epochs=10, batch_size=128, optimizer=Adam(lr=1e-3),
                   mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    # Summers & Dinneen: ResNet-14, SGD, cosine after a warm-up, biases and BatchNorm at 0.1 × LR.
    "summers": Recipe(model="resnet14", epochs=500, batch_size=512,
                      optimizer=SGD(lr=0.4, momentum=0.9, weight_decay=5e-4),
                      schedule=Cosine(warmup_epochs=3, warmup_fraction=0.2), lr_scale_1d=0.1,
                      augment=Augment(flip=True, pad=4), mean=CIFAR_MEAN, std=CIFAR_STD),
    # Jordan's 60k-run study: ResNet-9, SGD, learning rate decayed linearly to zero.
    "jordan": Recipe(model="resnet9", epochs=64, batch_size=500, optimizer=SGD(lr=0.5, momentum=0.9, weight_decay=5e-4),
                     schedule=LinearDecay(), augment=Augment(flip=True, translate=2, cutout=12), mean=CIFAR_MEAN,
                     std=CIFAR_STD),
    # A character-level language model (the pydoc-chars dataset): a small causal transformer, AdamW.
    "char": Recipe(model="char-transformer", epochs=4, batch_size=64,
                   optimizer=Adam(lr=2e-3, weight_decay=0.01, decoupled=True), schedule=Cosine(warmup_fraction=0.05)),
    # The usual CIFAR ResNet-18 (3x3 stem), SGD with a cosine schedule.
    "resnet18-cifar": Recipe(model="resnet18-cifar", epochs=30, batch_size=128,
                             optimizer=SGD(lr=0.1, momentum=0.9, weight_decay=5e-4), schedule=Cosine(),
                             augment=Augment(flip=True, pad=4), mean=CIFAR_MEAN, std=CIFAR_STD),
}
