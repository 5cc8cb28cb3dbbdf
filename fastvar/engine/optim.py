"""fastvar's batched optimizers: one update over a flat [M, P] buffer of M replicas' parameters
(fastvar.engine.flat), elementwise, so replica r moves exactly as a lone model would. Learning rate
and weight decay are per-replica vectors; a learning-rate factor may differ between spans of the buffer.

`update` is written once, for tensors shaped alike and hyperparameters that broadcast against them,
and applied either to whole stacks (GPUs: `fastvar.engine.optim_triton` runs it as one kernel a span of
the buffer) or to one replica's slice at a time (`by_replica=True`: its operations are exactly those
of a lone run: CPUs, where `fused_update`, fastvar.engine.optim_cpu, runs the same arithmetic as one C
loop).

A step reads no number from the host: the schedule's factor and the bias corrections of every step
are tables computed once (in Python, so the bits are those a host loop would use) and indexed on the
device by a step counter that lives there, so a step can be replayed as a CUDA graph.

Each line is one single-op tensor primitive (no addcdiv, lerp or alpha=): a fused kernel may use a
fused multiply-add in its vector path and not in its scalar tail, which would make a replica's result
depend on where its slice falls in memory, i.e. on the batch it trained in.
"""
import math
from typing import NamedTuple

import torch

from . import optim_cpu


class Segment(NamedTuple):
    """One span of the buffer as an update takes it: the parameters, their gradient and optimizer state
    ([M, span] each), the per-replica coefficients by name, and the span of the low-precision copy
    (or None where the span lies beyond the lowered entries)."""
    param: torch.Tensor
    grad: torch.Tensor
    state: dict
    coefficients: dict
    low: torch.Tensor | None


def per_replica(values, like):
    """A vector over replicas, shaped to broadcast against a stacked tensor `like`, on its device."""
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def sqrt_rounded_once(x):
    """The square root rounded once, as IEEE 754 (C's sqrtf, CUDA's) defines it. torch's float32
    sqrt on x86 CPUs is MKL's, a unit in the last place off for about 17 % of inputs; a float32's
    root lies at least 2^-51 (relative) from any float32 rounding midpoint, so computed in float64,
    within 2^-52 even if off by an ulp, it rounds to the right float32. float64: torch's, as it is."""
    return x.sqrt() if x.dtype == torch.float64 else x.double().sqrt().to(x.dtype)


class BatchedOptimizer:
    STATE = ()

    def __init__(self, params, lr, weight_decay, *, lr_factors, spans=None, by_replica=False, low=None, triton=None):
        """params: an [M, P] buffer, updated in place. lr, weight_decay: a float or one value per
        replica. lr_factors: the schedule's multiplier of lr at each step, in order (its length: the
        steps). spans: [(start, stop, factor)] covering the buffer, a further factor of lr on each, cut
        where the gradient's parts meet (default: 1 on all, one span). low: the copy of params[:, :L]
        in the compute dtype that the forward reads, rewritten after each update. triton: whole stacks
        through the Triton kernels (default: on CUDA; on a CPU they need TRITON_INTERPRET=1)."""
        self.params, self.low = params, low
        self.size, width = params.shape
        self.spans = spans or [(0, width, 1.0)]
        # On the parameters' device, so that a step's coefficients are computed there without a sync.
        vector = {"dtype": torch.float64, "device": "cpu" if by_replica else params.device}
        self.lr = torch.as_tensor(lr, dtype=torch.float64).expand(self.size).clone().to(**vector)
        self.weight_decay = torch.as_tensor(weight_decay, dtype=torch.float64).expand(self.size).clone().to(**vector)
        self.decay, self.by_replica = bool(self.weight_decay.any()), by_replica
        self.tables = {k: torch.tensor(v, **vector) for k, v in self.step_tables(list(lr_factors)).items()}
        # One element, not a 0-dim tensor: indexing with a 0-dim tensor reads it on the host (.item())
        self.step_index = torch.zeros(1, dtype=torch.int64, device=vector["device"])
        self.steps = 0  # on the host too, for what changes a step's arithmetic (SGD's first step)
        self.state = {s: torch.zeros_like(params) for s in self.STATE}
        # By replica on a CPU, the C loops where they build (the same bits as `update`); on CUDA, Triton's
        fused = by_replica and optim_cpu.applies([params, *self.state.values()], self.FUSED_DTYPES)
        self.replica_update = self.fused_update if fused else self.update
        triton = params.is_cuda if triton is None else triton
        self.stacked_update = triton_update(type(self).__name__) if triton else update_stacked

    def step_tables(self, lr_factors):
        """{name: the value at each step}: numbers the host computes once (no step reads the host)."""
        return {"lr_factor": lr_factors}

    @torch.no_grad()
    def step(self, grads):
        """One update with the gradient `grads`: one [M, P] tensor or parts side by side ([M, L] in the
        compute dtype, then [M, P - L]); lr × this step's lr factor × each span's factor."""
        self.steps += 1
        constants = self.constants()
        now = {k: t.index_select(0, self.step_index) for k, t in self.tables.items()}  # [1] each
        self.step_index.add_(1)
        # Per-replica coefficients in float64, rounded once to the parameters' dtype either way.
        by_factor = {f: self.coefficients(self.lr * (now["lr_factor"] * f), now) for f in {s[2] for s in self.spans}}
        lowered = 0 if self.low is None else self.low.shape[1]
        segments = [Segment(self.params[:, a:b], grad, {s: t[:, a:b] for s, t in self.state.items()}, by_factor[f],
                            self.low[:, a:b] if b <= lowered else None)
                    for (a, b, f), grad in zip(self.spans, self.grad_spans(grads))]
        if self.by_replica:
            for seg in segments:
                for r in range(self.size):
                    self.replica_update(seg.param[r], seg.grad[r], {s: t[r] for s, t in seg.state.items()},
                                        {name: v[r].item() for name, v in seg.coefficients.items()}, constants)
        else:
            self.stacked_update(self.update, segments, constants, self.low)
        if self.low is not None and (self.by_replica or self.stacked_update is update_stacked):  # else the kernel did
            self.low.copy_(self.params[:, :self.low.shape[1]])

    def grad_spans(self, grads):
        """The gradient's slice for each span (spans never cross from one part to the next)."""
        offsets, start = [], 0
        for part in grads:
            offsets.append(start)
            start += part.shape[1]
        found = []
        for a, b, _ in self.spans:
            i = max(j for j, o in enumerate(offsets) if o <= a)
            found.append(grads[i][:, a - offsets[i]:b - offsets[i]])
        return found


def triton_update(name):
    """The Triton kernels' update of the optimizer class `name` (imported here: Triton is the GPU extra)."""
    from . import optim_triton
    return optim_triton.UPDATES[name]


def update_stacked(update, segments, constants, low):
    """Every span's update over whole stacks (the reference of fastvar.engine.optim_triton's kernels;
    `low` is rewritten by the caller)."""
    for seg in segments:
        update(seg.param, seg.grad, seg.state,
               {name: per_replica(v, seg.param) for name, v in seg.coefficients.items()}, constants)


class BatchedAdam(BatchedOptimizer):
    """torch.optim.Adam (L2 weight decay) or AdamW (`decoupled=True`), per replica."""

    STATE = ("exp_avg", "exp_avg_sq")
    fused_update, FUSED_DTYPES = staticmethod(optim_cpu.adam), (torch.float32,)

    def __init__(self, params, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, decoupled=False, **kwargs):
        self.beta1, self.beta2 = betas  # before the step tables, which read them
        self.eps, self.decoupled = eps, decoupled
        super().__init__(params, lr, weight_decay, **kwargs)

    def constants(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "decay": self.decay,
                "decoupled": self.decoupled}

    def step_tables(self, lr_factors):
        steps = range(1, len(lr_factors) + 1)
        return {"lr_factor": lr_factors, "bias1": [1 - self.beta1 ** t for t in steps],
                "bias2_sqrt": [math.sqrt(1 - self.beta2 ** t) for t in steps]}

    def coefficients(self, lr, now):
        return {"step_size": lr / now["bias1"], "bias2_sqrt": now["bias2_sqrt"].expand_as(lr),
                "decay": 1 - lr * self.weight_decay if self.decoupled else self.weight_decay}

    @staticmethod
    def update(param, grad, state, coefficients, constants):
        grad = grad.to(param.dtype)  # a low-precision gradient, upcast (exactly)
        if constants["decay"] and constants["decoupled"]:
            param.mul_(coefficients["decay"])
        elif constants["decay"]:
            grad = grad + param * coefficients["decay"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(constants["beta1"]).add_(grad * (1 - constants["beta1"]))
        exp_avg_sq.mul_(constants["beta2"]).add_(grad * grad * (1 - constants["beta2"]))
        denom = (sqrt_rounded_once(exp_avg_sq) / coefficients["bias2_sqrt"]).add_(constants["eps"])
        param.sub_(exp_avg / denom * coefficients["step_size"])


class BatchedSGD(BatchedOptimizer):
    """torch.optim.SGD (momentum, Nesterov, L2 weight decay, no dampening), per replica."""
    fused_update, FUSED_DTYPES = staticmethod(optim_cpu.sgd), (torch.float32, torch.float64)

    def __init__(self, params, lr, weight_decay=0.0, momentum=0.0, nesterov=False, **kwargs):
        self.STATE = ("momentum_buffer",) if momentum else ()
        super().__init__(params, lr, weight_decay, **kwargs)
        self.momentum, self.nesterov = momentum, nesterov

    def constants(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov, "decay": self.decay, "first": self.steps == 1}

    def coefficients(self, lr, now):
        return {"lr": lr, "weight_decay": self.weight_decay}

    @staticmethod
    def update(param, grad, state, coefficients, constants):
        grad = grad.to(param.dtype)  # a low-precision gradient, upcast (exactly)
        if constants["decay"]:
            grad = grad + param * coefficients["weight_decay"]
        if constants["momentum"]:
            buf = state["momentum_buffer"]
            if constants["first"]:
                buf.copy_(grad)  # torch.optim starts the buffer at the first gradient
            else:
                buf.mul_(constants["momentum"]).add_(grad)
            grad = grad + buf * constants["momentum"] if constants["nesterov"] else buf
        param.sub_(grad * coefficients["lr"])


OPTIMIZERS = {"adam": BatchedAdam, "sgd": BatchedSGD}
