"""M models as one: parameters and buffers stacked [M, ...], each replica initialised from its own
init seed, trained by one of two strategies over the same storage.

- `vmap`: one `torch.func.vmap` of `functional_call` over all replicas (few, large kernels: GPUs).
- `loop`: one replica at a time on its own slice (bit-identical to a lone model: CPUs).

Gradients land in stacked [M, ...] tensors either way, so one batched optimizer serves both.
`compute_dtype` (bfloat16) is mixed precision over float32 master weights, as torch.autocast does it:
convolutions and linear layers in bfloat16, BatchNorm and the loss in float32. It is spelled out
(weights cast each step, BatchNorm upcast) because under vmap autocast's casts never happen (its conv
rule runs below them) and vmap's BatchNorm takes one dtype only.
`compile` (a torch.compile mode, or None) runs the forward and loss through `torch.compile`, the
backward included (AOTAutograd).
"""
import functools
import inspect

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ..data import IGNORE
from ..errors import ConfigError
from ..models import BUILTIN_MODELS, build_model, classifier_name, model_name, set_training
from .dropout import SEEDS, calls_functional_dropout, dropout_buffers, functional_dropout, seed_dropout
from .flat import FlatLayout
from .live import live_taps
from .tied import retie, tied_names
from .vmap_layers import GemmConv2d, GroupedConv2d, ImplicitConv2d, at_least_float32, small_convs, use_vmap_layers

STRATEGIES = ("loop", "vmap")
REPLICA_CONVS = {"grouped": GroupedConv2d, "implicit": ImplicitConv2d}
CONVS = ("auto", "gemm", "native", "grouped", "implicit")
PAD_ID = "fastvar_pad_id"  # the template's attribute: the data's padding token, or None


class Replicas:
    def __init__(self, model, init_seeds, *, width=None, strategy="loop", dtype=torch.float32, device="cpu",
                 dropout=None, compute_dtype=None, compile=None, conv="auto", num_classes=10,
                 input_shape=(3, 32, 32), live_only=True, pad_id=None):
        """`model` as fastvar.models.model_spec takes it; `input_shape` (C, H, W, or D for features)
        of one example, for the shapes that pick the GEMM convolutions and their live taps.
        `live_only=False` keeps every tap in the step (the reference the live form equals bit for bit).
        `pad_id`: the data's padding token, where the model's forward takes an attention_mask."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        device = torch.device(device)
        # Written-out BatchNorm where vmap needs it or mixed precision does (vmap_layers says why)
        elementary_norm = strategy == "vmap" or compute_dtype is not None
        self.template = template(model, width, dtype, dropout, elementary_norm, conv_rule(conv, strategy, device),
                                 num_classes, tuple(input_shape), live_only, pad_id)
        models = [build_model(model, init_seed=s, width=width, dtype=dtype, dropout=dropout, num_classes=num_classes)
                  for s in init_seeds]
        for replica in models:  # its own dropout, module or functional, draws from the run's dropout seed
            seed_dropout(replica, functional=hasattr(self.template, SEEDS))
        params, buffers = stack_module_state(models)
        # Parameters the factory froze (requires_grad=False) are read as buffers are: never updated
        frozen = {n: p.detach() for n, p in params.items() if not p.requires_grad}
        params, buffers = {n: p for n, p in params.items() if n not in frozen}, {**buffers, **frozen}
        self.frozen = frozenset(frozen)
        self.size, self.strategy, self.compile = len(init_seeds), strategy, compile
        self.live, live_params, dead_params = split_live(self.template, {n: p.detach() for n, p in params.items()})
        # One flat [M, P] buffer of the trained entries (views are what layers read), and one of the
        # dead taps, which only weight decay moves (fastvar.engine.live)
        self.layout = FlatLayout({n: p.shape[1:] for n, p in live_params.items()}, memory_orders(self.template),
                                 lowered_parameters(self.template))
        self.master, self.params = flat_stack(self.layout, live_params, self.size, dtype, device)
        self.dead_layout = FlatLayout({n: p.shape[1:] for n, p in dead_params.items()})
        self.dead, _ = flat_stack(self.dead_layout, dead_params, self.size, dtype, device)
        self.buffers = {n: b.to(device) for n, b in buffers.items()}
        self.dropout_seeds, self.dropout_steps = dropout_buffers(self.template)
        self.classifier = classifier_name(self.template) if dropout else None  # where dropout acts
        # Mixed precision: the forward reads a copy of the lowered entries in the compute dtype, which
        # the optimizer rewrites after each update; their gradients arrive in that dtype
        self.compute_dtype = compute_dtype
        self.low = self.master[:, :self.layout.lowered].to(compute_dtype) if compute_dtype else None
        # The built-in models' layers are known to take a channels-last input and, under vmap, one shared
        # evaluation batch; a user's may not (vmap's GroupNorm asks for a contiguity vmap cannot answer)
        self.known_layers = model_name(model) in BUILTIN_MODELS
        # nn.GRU's and nn.LSTM's fused ops have no batching rule: under vmap they run decomposed
        self.decomposed = any(isinstance(m, torch.nn.RNNBase) for m in self.template.modules())
        self.channels_last = self.known_layers and channels_last_is_safe(self.template, device, compile)
        # Leaves share storage with the buffers, so the optimizer's in-place updates reach them. Each
        # replica gets leaves of its own: autograd through slices of one stacked leaf would build a
        # zeroed full-size gradient per slice.
        self.stacked_leaves = tuple(p.detach().requires_grad_() for p in self.forward_parts())
        self.replica_leaves = [tuple(p[r].detach().requires_grad_() for p in self.forward_parts())
                               for r in range(self.size)]
        # What the forward reads: the buffers, a frozen lowered parameter as a copy in the compute dtype
        # (the buffers keep it as loaded, for state_dict)
        frozen_low = self.frozen & lowered_parameters(self.template) if compute_dtype else frozenset()
        self.read_buffers = {**self.buffers, **{n: self.buffers[n].to(compute_dtype) for n in frozen_low}}
        self.replica_buffers = [{n: b[r] for n, b in self.read_buffers.items()} for r in range(self.size)]

    def forward_parts(self):
        """The buffers the forward reads, side by side: the master, or the lowered copy and the rest."""
        return (self.master,) if self.low is None else (self.low, self.master[:, self.layout.lowered:])

    def train_step_grads(self, x, y, dropout_masks=None, label_smoothing=None):
        """x M×B×3×H×W, y M×B (dropout masks M×B×features for a model with dropout; label smoothing
        one value per replica, or None) → per-replica mean loss [M], correct count [M], and the
        gradient as stacked parts that match `forward_parts`."""
        set_training(self.template)
        x = x if self.channels_last else x.contiguous()
        extra = {} if dropout_masks is None else {f"{self.classifier}.dropout_mask": dropout_masks}
        if self.strategy == "vmap":
            return self._vmap_grads(x, y, {**self.read_buffers, **extra}, label_smoothing)
        return self._loop_grads(x, y, [{**b, **{k: v[r] for k, v in extra.items()}}
                                       for r, b in enumerate(self.replica_buffers)], label_smoothing)

    def _vmap_grads(self, x, y, buffers, label_smoothing):
        step = stacked_losses_decomposed if self.decomposed else stacked_losses
        losses, logits = self._run(step)(self.template, self.layout.views(*self.stacked_leaves), buffers, x, y,
                                         label_smoothing)
        # Replicas are independent, so d(sum of losses)/d(replica r) is replica r's own gradient.
        # materialised: in mixed precision a model of convolutions and linear layers only leaves the
        # float32 part empty and unused
        grads = torch.autograd.grad(losses.sum(), self.stacked_leaves, materialize_grads=True)
        return losses.detach(), correct_counts(logits, y).flatten(1).sum(1), grads

    def _loop_grads(self, x, y, buffers, label_smoothing):
        grads = tuple(torch.empty_like(p) for p in self.forward_parts()) if self.size > 1 else ()
        losses, correct = [], []
        for r in range(self.size):
            leaves = self.replica_leaves[r]
            smoothing = 0.0 if label_smoothing is None else label_smoothing[r].item()
            loss, logits = self._run(replica_loss)(self.template, self.layout.views(*leaves), buffers[r], x[r], y[r],
                                                   smoothing)
            replica_grads = torch.autograd.grad(loss, leaves, materialize_grads=True)
            if self.size == 1:  # a lone replica's gradient is a stack of one as it is
                grads = tuple(g[None] for g in replica_grads)
            else:
                for stacked, g in zip(grads, replica_grads):
                    stacked[r].copy_(g)
            losses.append(loss.detach())
            correct.append(correct_counts(logits, y[r]).sum())
        return torch.stack(losses), torch.stack(correct), grads

    def _run(self, fn):
        return compiled(fn, self.compile) if self.compile else fn

    def weights_changed(self):
        """After a change to the master weights outside the optimizer: the lowered copy follows."""
        if self.low is not None:
            self.low.copy_(self.master[:, :self.layout.lowered])

    @torch.no_grad()
    def logits(self, x):
        """Eval-mode logits of every replica on one shared batch x (B×C×H×W, or B×D) → M×B×classes."""
        set_training(self.template, False)
        x = x if self.channels_last else x.contiguous()
        params = self.layout.views(*self.forward_parts())
        if self.strategy == "vmap":  # x shared by all replicas, or as a batched view for a user's layers
            shared = self.known_layers
            replica_forward = decomposed_forward if self.decomposed else forward
            return vmap(replica_forward, in_dims=(None, 0, 0, None if shared else 0))(
                self.template, params, self.read_buffers, x if shared else x.expand(self.size, *x.shape))
        return torch.stack([forward(self.template, {n: p[r] for n, p in params.items()},
                                    self.replica_buffers[r], x) for r in range(self.size)])

    def set_dropout(self, seeds, step):
        """Before a training step: each replica's dropout seed (M int64, on the device) and the step
        number that the model's own dropout layers (fastvar.engine.dropout) draw their masks from."""
        for name in self.dropout_seeds:
            self.buffers[name].copy_(seeds)
        for name in self.dropout_steps:
            self.buffers[name].fill_(step)

    @torch.no_grad()
    def classifier_input(self, x):
        """The shape of one example's input to the classifier (what the dropout source's masks cover:
        features, or a sequence model's positions × features), from replica 0's eval forward of x (1×...)."""
        seen = {}

        def record(module, inputs):  # returns None: the inputs go on as they are
            seen.setdefault("shape", inputs[0].shape[1:])
        hook = self.template.get_submodule(self.classifier).register_forward_pre_hook(record)
        try:
            set_training(self.template, False)
            params = self.layout.views(*self.forward_parts())
            forward(self.template, {n: p[0] for n, p in params.items()}, self.replica_buffers[0], x)
        finally:
            hook.remove()
        return tuple(seen["shape"])

    def input_dtype(self):
        """The dtype the first layer computes in: the mixed-precision dtype, else the weights'."""
        return self.compute_dtype or self.master.dtype

    def state_dict(self, r):
        """Replica r as an ordinary state dict (contiguous copies), loadable into the model it was built from."""
        dead = self.dead_layout.views(self.dead)
        params = {n: whole_weight(p[r], dead[n][r], self.live[n]) if n in self.live else p[r]
                  for n, p in self.params.items()}
        kept = set(self.buffers) - set(self.dropout_seeds) - set(self.dropout_steps)  # the model's own buffers
        state = {**params, **{n: self.buffers[n][r] for n in self.buffers if n in kept}}
        state = {n: t.clone(memory_format=torch.contiguous_format) for n, t in state.items()}
        # a shared tensor under each of its names, as the model's own state_dict has it (saved once)
        return {**state, **{alias: state[name] for alias, name in tied_names(self.template).items()}}


def split_live(template, params):
    """({weight name: live tap indices}, live entries, dead entries) of stacked parameters: a weight with
    dead taps (GemmConv2d.live_taps) splits into its live taps and its dead ones, each M×T×C×Cout."""
    live = {f"{name}.weight": module.live_taps for name, module in template.named_modules()
            if getattr(module, "live_taps", None) is not None}
    live_params, dead_params = dict(params), {}
    for name, taps in live.items():
        weight = params[name]
        by_tap = weight.permute(0, 3, 4, 2, 1).flatten(1, 2)  # M × k² × C × Cout
        live_params[name] = by_tap[:, list(taps)]
        dead_params[name] = by_tap[:, [t for t in range(by_tap.shape[1]) if t not in taps]]
    return live, live_params, dead_params


def whole_weight(live, dead, taps):
    """A Cout×C×k×k weight from its live and dead taps (T×C×Cout each, one replica's)."""
    k2 = live.shape[0] + dead.shape[0]
    by_tap = torch.empty(k2, *live.shape[1:], dtype=live.dtype, device=live.device)
    by_tap[list(taps)] = live
    by_tap[[t for t in range(k2) if t not in taps]] = dead
    k = round(k2 ** 0.5)
    return by_tap.view(k, k, *live.shape[1:]).permute(3, 2, 0, 1)


def flat_stack(layout, stacked, m, dtype, device):
    """An [M, P] buffer holding `stacked` ({name: M×...}) as `layout` places it, and its views by name."""
    flat = torch.zeros(m, layout.size, dtype=dtype, device=device)  # the alignment gaps stay 0
    views = layout.views(flat)
    for name, tensor in stacked.items():
        views[name].copy_(tensor)
    return flat, views


@functools.cache
def template(model, width, dtype, dropout, elementary_norm, gemm_rule, num_classes, input_shape, live_only=True,
             pad_id=None):
    """The model's structure without state (parameters and buffers come from the stacks), one per
    configuration in a process: compiled steps are keyed by it, so later batches reuse them.
    `elementary_norm`, `gemm_rule` ("all", "small", "none"; "grouped", "implicit": the small ones GEMM,
    the others that form):
    the layers of fastvar.engine.vmap_layers to swap in; `live_only`: the GEMM ones read their live taps only;
    `pad_id`: what the forward's attention mask is made from (PAD_ID, a plain attribute)."""
    structure = build_model(model, init_seed=0, width=width, dtype=dtype, dropout=dropout, num_classes=num_classes)
    seed_dropout(structure)  # first: an nn.Dropout calls F.dropout, which is not functional dropout of its own
    if model_name(model) not in BUILTIN_MODELS and calls_functional_dropout(structure, input_shape):
        seed_dropout(structure, functional=True)  # a user's forward calls dropout itself
    aliases = tied_names(structure)
    structure = retie(structure.to("meta"), aliases)  # .to gives each module a tensor of its own
    tied = set(aliases) | set(aliases.values())
    small = small_convs(structure, input_shape)
    convs = {"all": set(structure.modules()), "small": small, "none": set()}.get(gemm_rule, small)
    rest = set(structure.modules()) - small if gemm_rule in REPLICA_CONVS else set()
    structure = use_vmap_layers(structure, elementary_norm, convs, rest, REPLICA_CONVS.get(gemm_rule))
    setattr(structure, PAD_ID, pad_id)
    for name, taps in live_taps(structure, input_shape).items() if live_only else ():  # GEMM ones can leave taps out
        module = structure.get_submodule(name)
        # a frozen weight is read whole, and so is a shared one (each use may reach other taps)
        if isinstance(module, GemmConv2d) and module.weight.requires_grad and f"{name}.weight" not in tied:
            module.live_taps = taps
    return structure


def memory_orders(template):
    """{parameter name: memory order} for the layers that declare the order of their weight's
    dimensions in memory (WEIGHT_MEMORY_ORDER, outermost first) in which they use it without copying."""
    tied = tied_names(template)  # a shared weight keeps the plain layout: its layers may read it in other orders
    return {f"{name}.weight": module.WEIGHT_MEMORY_ORDER for name, module in template.named_modules()
            if hasattr(module, "WEIGHT_MEMORY_ORDER") and getattr(module, "live_taps", None) is None
            and f"{name}.weight" not in tied and f"{name}.weight" not in tied.values()}


def conv_rule(conv, strategy, device):
    """Which convolutions become GEMM convolutions: conv "gemm" all, "native" none; "auto" decides by
    device, strategy and the model's shapes, never by a timing: all under vmap on CUDA (vmap's grouped
    convolution is slow there), else those with outputs of 2×2 pixels or less (where they beat oneDNN).
    "grouped", "implicit": those small ones GEMM, the others all replicas at once in that form
    (GroupedConv2d, ImplicitConv2d)."""
    if conv not in CONVS:
        raise ValueError(f"unknown conv {conv!r}; choose from {', '.join(CONVS)}")
    if conv == "auto":
        return "all" if strategy == "vmap" and device.type == "cuda" else "small"
    return {"gemm": "all", "native": "none"}.get(conv, conv)


LOWERED = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding, torch.nn.RNNCellBase)


def lowered_parameters(template):
    """The names of the parameters mixed precision computes with in low precision: those of convs,
    linears, embeddings (so what follows one reads the low dtype) and recurrent cells; a shared one
    by its first name."""
    tied = tied_names(template)
    names = (f"{prefix}.{name}" if prefix else name for prefix, module in template.named_modules()
             if isinstance(module, LOWERED) for name, _ in module.named_parameters(recurse=False))
    return frozenset(tied.get(name, name) for name in names)


@functools.cache
def compiled(fn, mode):
    """One torch.compile per step function and mode per process; shapes are static within a study."""
    return torch.compile(fn, mode=mode, dynamic=False)


def forward(template, params, buffers, x):
    """The model's logits for x, as `params` and `buffers` set it; its functional dropout seeded."""
    options = forward_options(template, x, getattr(template, PAD_ID, None))
    with functional_dropout(template):
        return logits_of(functional_call(template, (params, buffers), (x,), options))


def logits_of(output):
    """What fastvar reads of a forward's output: a tensor as it is; of an object with `.logits` (a
    Hugging Face ModelOutput), a dict or a tuple, its logits or first element (a cache returned beside
    them is dropped)."""
    if isinstance(output, torch.Tensor):
        return output
    if getattr(output, "logits", None) is not None:
        return output.logits
    if isinstance(output, dict) and output.get("logits") is not None:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    raise ConfigError(f"the model's forward returned {type(output).__name__}; fastvar reads a tensor of logits, "
                      f"an object with .logits, or a tuple whose first element is the logits")


def forward_options(module, x, pad_id=None):
    """Keyword arguments the model's forward is called with on tokens x: use_cache=False where it takes
    one (a Hugging Face model would otherwise build a cache each step, which vmap cannot return), and
    attention_mask (x != pad_id) where it takes one and the data pad."""
    takes = forward_parameters(module)
    options = {"use_cache": False} if "use_cache" in takes else {}
    if pad_id is not None and "attention_mask" in takes:
        options["attention_mask"] = (x != pad_id).long()
    return options


@functools.cache
def forward_parameters(module):
    try:
        return frozenset(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def decomposed_forward(template, params, buffers, x):
    """forward inside a gradient transform that computes no gradient (its vjp is dropped): there,
    composite ops without a batching rule of their own (nn.GRU's and nn.LSTM's fused ones) decompose
    into ops that have one. Autograd outside still differentiates through it."""
    return torch.func.vjp(lambda p: forward(template, p, buffers, x), params)[0]


def stacked_losses(template, params, buffers, x, y, label_smoothing, replica_forward=forward):
    """The vmap strategy's forward: each replica's mean loss [M] and logits M×B×classes."""
    logits = vmap(replica_forward, in_dims=(None, 0, 0, 0))(template, params, buffers, x)
    return batched_cross_entropy(at_least_float32(logits), y, label_smoothing), logits


def stacked_losses_decomposed(template, params, buffers, x, y, label_smoothing):
    """stacked_losses through decomposed_forward (a function of its own: each is compiled once)."""
    return stacked_losses(template, params, buffers, x, y, label_smoothing, decomposed_forward)


def replica_loss(template, params, buffers, x, y, label_smoothing):
    """The loop strategy's forward of one replica: its mean loss (over its targets: examples, or target
    tokens) and logits B×classes (B×T×vocabulary)."""
    logits = forward(template, params, buffers, x)
    return loss_of(logits, y, label_smoothing), logits


def loss_of(logits, y, label_smoothing=0.0):
    """One replica's mean cross-entropy of its logits against labels y (B), or target tokens (B×T)."""
    if y.dim() == 1:
        return F.cross_entropy(at_least_float32(logits), y, label_smoothing=label_smoothing)
    return F.cross_entropy(at_least_float32(logits).flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                           label_smoothing=label_smoothing)


def channels_last_is_safe(model, device, compiled):
    """Whether the input may be channels-last; only native convolutions care (GEMM ones take any
    layout). False where oneDNN's CPU backward is wrong for channels-last input: a strided 1x1 conv
    with fewer input channels than its block (8 with AVX2, 16 with AVX-512) gets garbage weight
    gradients and may corrupt the heap (oneDNN issue 6035, torch 2.13). False when compiled: inductor's
    vmapped conv backward expects channels-last weight gradients that the kernel does not give (a
    stride assertion fails, torch 2.11 on CUDA). Either way the result is the same function."""
    native = [m for m in model.modules() if type(m) is torch.nn.Conv2d]
    if compiled and native:
        return False
    return device.type != "cpu" or not any(m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 16
                                           for m in native)


def batched_cross_entropy(logits, y, label_smoothing=None):
    """Mean cross-entropy of each replica (logits M×B×C, or M×B×T×V over target tokens y M×B×T, those
    IGNORE left out), with each replica's own label smoothing ε: (1 - ε) · NLL + ε · mean over classes
    of -log p, as F.cross_entropy(label_smoothing=ε, ignore_index=IGNORE) computes it."""
    if y.dim() == 2 and label_smoothing is None:
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
    log_p = F.log_softmax(logits, dim=-1)
    nll = -log_p.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    if label_smoothing is not None:
        eps = label_smoothing.to(logits.dtype).view(-1, *[1] * (y.dim() - 1))
        nll = (1 - eps) * nll + eps * -log_p.mean(-1)
    if y.dim() == 2:
        return nll.mean(1)
    valid = y != IGNORE
    return (nll * valid).flatten(1).sum(1) / valid.flatten(1).sum(1)


def correct_counts(logits, y):
    """Where each prediction hits its target (an IGNORE target never is hit)."""
    return logits.detach().argmax(-1) == y
