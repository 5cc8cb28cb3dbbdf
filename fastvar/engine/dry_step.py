"""The dry step: before a study of a user's own model starts, prove on two replicas and a random batch
of the data's shapes that the replicas compute what the model computes, and that a run is defined by
its seeds. Every finding is one line (ConfigError), never a stored run.

1. The model itself, called twice on one batch in training (its dropout seeded as the replicas seed
   it), must give the same output; where it does not, a dispatch mode names the module and the op
   that drew from the global generator.
2. Two replicas take a dry step (eval logits, then two training losses) by the study's strategy; an
   op that fails there, an output of the wrong shape, or an op that throws on CUDA under
   deterministic algorithms is refused.
3. Each replica's logits and first loss must equal those of the model the factory builds from the
   same init seed, to the tolerance of the precision (TOLERANCE); a mismatch names the first
   parameter or buffer that differs, or that the replicas never filled.
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import ConfigError, Param, first_line
from ..models import build_model, model_name, set_training
from .determinism import ThrowingOps, describe
from .dropout import functional_dropout, seed_dropout
from .replicas import Replicas, forward_options, logits_of, loss_of
from .tied import tied_names

# |replica - model| <= TOLERANCE * (1 + max |model|): reordered float32 sums differ by ~1e-6 of the
# scale, bfloat16 compute by ~1e-2; a parameter the replicas missed moves logits by the scale itself
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2}


def check_replicable(model, strategy, num_classes, input_shape, deterministic_cuda=False, dropout=None,
                     vocabulary=None, target_shape=(), compute_dtype=None, pad_id=None):
    """Find, before a study starts, what would make `model` (a user's own) fail as replicas, compute
    other than the model does, or make a run depend on more than its seeds: the dry step above, on
    two random examples (tokens below `vocabulary` where given; targets of `target_shape` each, () for
    a label; with the study's `dropout` and mixed precision's `compute_dtype`); with
    `deterministic_cuda` (a CUDA study with its kernels fixed), an op of the step or the evaluation
    that throws there under deterministic algorithms (fastvar.engine.determinism); `pad_id`, the
    data's padding token (the dry batch pads its last position). Raises ConfigError."""
    name = model_name(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, *input_shape, generator=generator) if vocabulary is None \
        else torch.randint(0, vocabulary, (2, 2, *input_shape), generator=generator)
    if pad_id is not None:
        x[..., -1] = pad_id
    y = torch.zeros(2, 2, *target_shape, dtype=torch.int64)
    own_randomness(model, name, x[0], num_classes, dropout, pad_id)
    try:
        replicas = Replicas(model, [0, 1], strategy=strategy, num_classes=num_classes, input_shape=input_shape,
                            dropout=dropout, compute_dtype=compute_dtype, pad_id=pad_id)
        x = x if vocabulary is not None else x.to(replicas.input_dtype())
        masks = torch.ones(2, 2, *replicas.classifier_input(x[0][:1])) if dropout else None
        with ThrowingOps() as throwing:
            logits = replicas.logits(x[0])
            first, second = (replicas.train_step_grads(x, y, masks)[0] for _ in range(2))
    except ConfigError:
        raise
    except Exception as e:  # whatever the model raised: one line naming it, before any run starts
        cause = first_line(e).replace("{}", "{ }")  # a template's placeholder is ours alone
        if strategy == "vmap":  # an op vmap cannot run (a host read, no batching rule): the loop needs none
            raise ConfigError(f"{name} cannot be trained as replicas (vmap strategy): {cause}; the loop strategy "
                              f"trains one replica at a time and needs no batching rule ({{}})",
                              Param("strategy", "loop")) from None
        raise ConfigError(f"{name} cannot be trained as replicas ({strategy} strategy): {cause}") from None
    check_output_shape(name, logits, num_classes, target_shape)
    if deterministic_cuda and throwing.found:
        raise ConfigError(f"{name} runs {describe(throwing.found)}, which throws on CUDA under deterministic "
                          f"algorithms, as a study with fixed kernels sets them; vary the kernels (an experiment "
                          f"that varies them, such as all-random, or {{}}) or use another op",
                          Param("vary", ("kernels",), flag="--vary kernels"))
    check_same_as_model(replicas, model, name, x, y, masks, logits, first, num_classes, dropout, compute_dtype, pad_id)
    if not torch.equal(first, second):
        raise ConfigError(f"{name}'s replicas give another loss for the same weights and batch, though the model "
                          f"alone does not; please report it, with the model")


def check_output_shape(name, logits, num_classes, target_shape):
    if tuple(logits.shape[2:]) == (*target_shape, num_classes):
        return
    if target_shape:
        raise ConfigError(f"{name} gives outputs of shape {tuple(logits.shape[2:])} for a sequence of "
                          f"{target_shape[0]} target tokens; a language model gives T×{num_classes} logits "
                          f"(one per token of the vocabulary) for a sequence of T")
    outputs = logits.shape[-1] if logits.dim() == 3 else tuple(logits.shape[2:])
    raise ConfigError(f"{name} gives {outputs} outputs an example for {num_classes} classes; its last layer "
                      f"needs one output per class")


def seeded_model(model, init_seed, num_classes, dropout):
    """The model the factory builds from `init_seed`, its dropout seeded as a replica's is (seed and step
    0; FunctionalDropout around its calls changes nothing where it calls no functional dropout)."""
    built = build_model(model, init_seed=init_seed, num_classes=num_classes, dropout=dropout)
    seed_dropout(built, functional=True)
    return built


def call(module, x, pad_id=None):
    """The module's logits for x, called as the replicas call it, its functional dropout seeded as theirs is."""
    with functional_dropout(module):
        return logits_of(module(x, **forward_options(module, x, pad_id)))


def own_randomness(model, name, x, num_classes, dropout, pad_id):
    """Refuse a model whose own training forward, called on `x` from several states of the global
    generator, differs: naming the module and the op that drew (the first seen)."""
    try:
        module = set_training(seeded_model(model, 0, num_classes, dropout))
        if dropout:
            head = next(m for m in module.modules() if hasattr(m, "dropout_mask"))
            head.dropout_mask = torch.ones(())
        outputs, x = [], torch.cat([x] * 4)  # 8 examples: a draw that leaves 2 alike might not show
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for seed in (1, 2, 3):
                torch.manual_seed(seed)
                with RandomOps(module) as drawn:
                    outputs.append(call(module, x, pad_id))
    except Exception:
        return  # the replicas' dry step names what fails
    if all(torch.equal(outputs[0], other) for other in outputs[1:]):
        return
    where = drawn.found[0] if drawn.found else ("its forward", "an op fastvar does not know")
    raise ConfigError(f"{name} draws randomness of its own in {where[0]} ({where[1]}), from the global generator, "
                      f"so a run would not be defined by its seeds; turn it off{settings_of(module, where[0])}: "
                      f"fastvar seeds every dropout (layers, F.dropout, attention's dropout_p) from the run's "
                      f"dropout seed, and adds one before the classifier ({{}})", Param("dropout", flag="--dropout P"))


def settings_of(model, path):
    """' (its settings: a=0.1, ...)': the module's probabilities, where one of them likely turns it off."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return ""
    found = [f"{k}={v}" for k, v in vars(module).items()
             if not k.startswith("_") and isinstance(v, float) and 0 < v <= 1]
    return f" (its settings: {', '.join(found)})" if found else ""


class RandomOps(TorchDispatchMode):
    """Records (module path, ATen op) of every op that draws from a generator, while `model` runs."""

    def __init__(self, model):
        super().__init__()
        self.found, self.path = [], ["its forward"]
        self.hooks = [h for n, m in model.named_modules() if n
                      for h in (m.register_forward_pre_hook(lambda m, a, n=n: self.enter(n)),
                                m.register_forward_hook(lambda m, a, o: self.leave()))]

    def enter(self, path):  # hooks return None: the module's inputs and output go on as they are
        self.path.append(path)

    def leave(self):
        self.path.pop()

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if torch.Tag.nondeterministic_seeded in func.tags:
            self.found.append((self.path[-1], func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def check_same_as_model(replicas, model, name, x, y, masks, logits, first, num_classes, dropout, compute_dtype,
                        pad_id):
    """Each replica's eval logits and first training loss against the model the factory builds from its
    init seed, in the same order (eval, then a training forward)."""
    tolerance = TOLERANCE[compute_dtype or replicas.master.dtype]
    x = x.to(replicas.master.dtype) if x.is_floating_point() else x  # the model's own precision
    for r in range(replicas.size):
        reference = seeded_model(model, r, num_classes, dropout)
        with torch.no_grad():
            expected = call(set_training(reference, False), x[0], pad_id)
            differs = not close(logits[r], expected, tolerance)
            if not differs:
                if dropout:
                    next(m for m in reference.modules() if hasattr(m, "dropout_mask")).dropout_mask = masks[r]
                loss = loss_of(call(set_training(reference), x[r], pad_id), y[r])
                differs = not close(first[r], loss, tolerance)
        if differs:
            raise ConfigError(f"{name}'s replicas do not compute what the model computes: replica {r} "
                              f"{first_difference(replicas, r, reference)}, against the model the factory builds from "
                              f"the same init seed; a run would train something else, so none is started")


def close(actual, expected, tolerance):
    actual, expected = actual.double(), expected.double()
    if actual.shape != expected.shape or not torch.isfinite(actual).all():
        return False
    return bool(((actual - expected).abs() <= tolerance * (1 + expected.abs().max())).all())


def first_difference(replicas, r, reference):
    """What the replicas got wrong, in words: the first parameter or buffer they never filled or hold
    otherwise than the model, else that the logits differ though every one of them is the model's."""
    state, wanted = replicas.state_dict(r), reference.state_dict()
    filled = set(replicas.layout.names) | set(replicas.buffers) | set(replicas.dead_layout.names)
    aliases = tied_names(replicas.template)
    for key, value in wanted.items():
        if key not in state or aliases.get(key, key) not in filled:
            return f"never filled {key}"
        if not torch.equal(state[key].to(value.dtype), value):
            return f"holds another {key}"
    return "gives other logits, though every parameter and buffer is the model's"
