"""fastvar's batched optimizers: one update over stacked [M, ...] tensors, elementwise, so replica r
moves exactly as a lone model would. Learning rate and weight decay are per-replica vectors.

`update` is written once, for tensors shaped alike and hyperparameters that broadcast against them,
and applied either to whole stacks (few large operations: GPUs) or to one replica's slice at a time
(`by_replica=True`: its operations are exactly those of a lone run: CPUs, the loop strategy). On a
CPU, by replica, `fused_update` (fastvar.engine.optim_cpu) runs the same arithmetic as one C loop.

Each line is one single-op tensor primitive (no addcdiv, lerp or alpha=): a fused kernel may use a
fused multiply-add in its vector path and not in its scalar tail, which would make a replica's result
depend on where its slice falls in memory, i.e. on the batch it trained in.
"""
import functools
import math

import torch

from . import optim_cpu


def per_replica(values, like):
    """A vector over replicas, shaped to broadcast against a stacked tensor `like`, on its device."""
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def update_stacked(update, params, grads, states, coefficients, constants):
    """Every parameter's update over whole stacks. A plain function of tensors and constants, so that
    one `torch.compile` of it serves every optimizer of a process (GPUs: a few fused kernels a step
    instead of ~10 launches per parameter)."""
    for name, param in params.items():
        update(param, grads[name], states[name], coefficients[name], constants)


@functools.cache
def compiled_update_stacked():
    return torch.compile(update_stacked, dynamic=False)


def sqrt_rounded_once(x):
    """The square root rounded once, as IEEE 754 (C's sqrtf, CUDA's) defines it. torch's float32
    sqrt on x86 CPUs is MKL's, a unit in the last place off for about 17 % of inputs; a float32's
    root lies at least 2^-51 (relative) from any float32 rounding midpoint, so computed in float64,
    within 2^-52 even if off by an ulp, it rounds to the right float32. float64: torch's, as it is."""
    return x.sqrt() if x.dtype == torch.float64 else x.double().sqrt().to(x.dtype)


class BatchedOptimizer:
    STATE = ()

    def __init__(self, params, lr, weight_decay, lr_scale=None, by_replica=False, compile=False):
        """lr, weight_decay: a float or one value per replica. lr_scale: {parameter name: factor}.
        compile: run the stacked update through torch.compile (not with by_replica)."""
        self.params = params  # name -> stacked tensor, updated in place
        first = next(iter(params.values()))
        self.size = first.shape[0]
        # On the parameters' device, so that a step's coefficients are computed there without a sync.
        vector = {"dtype": torch.float64, "device": "cpu" if by_replica else first.device}
        self.lr = torch.as_tensor(lr, dtype=torch.float64).expand(self.size).clone().to(**vector)
        self.weight_decay = torch.as_tensor(weight_decay, dtype=torch.float64).expand(self.size).clone().to(**vector)
        self.decay = bool(self.weight_decay.any())
        self.lr_scale, self.by_replica, self.compile = lr_scale or {}, by_replica, compile and not by_replica
        # By replica on a CPU, the C loops where they build (the same bits as `update`)
        fused = by_replica and optim_cpu.applies(params.values(), self.FUSED_DTYPES)
        self.replica_update = self.fused_update if fused else self.update
        self.state = {n: {s: torch.zeros_like(p) for s in self.STATE} for n, p in params.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self, grads, lr_factor=1.0):
        """One update; the learning rate of this step is lr × lr_factor (the schedule) × lr_scale."""
        self.steps += 1
        constants = self.constants()
        # Per-replica coefficients in float64, rounded once to the parameters' dtype either way.
        by_scale = {scale: self.coefficients(self.lr * (lr_factor * scale))
                    for scale in {self.lr_scale.get(name, 1.0) for name in self.params}}
        coefficients = {name: by_scale[self.lr_scale.get(name, 1.0)] for name in self.params}
        if self.by_replica:
            for name, param in self.params.items():
                for r in range(self.size):
                    self.replica_update(param[r], grads[name][r], {s: t[r] for s, t in self.state[name].items()},
                                        {k: v[r].item() for k, v in coefficients[name].items()}, constants)
            return
        stacked = {name: {k: per_replica(v, self.params[name]) for k, v in c.items()}
                   for name, c in coefficients.items()}
        update = compiled_update_stacked() if self.compile else update_stacked
        update(self.update, self.params, grads, self.state, stacked, constants)


class BatchedAdam(BatchedOptimizer):
    """torch.optim.Adam (L2 weight decay) or AdamW (`decoupled=True`), per replica."""

    STATE = ("exp_avg", "exp_avg_sq")
    fused_update, FUSED_DTYPES = staticmethod(optim_cpu.adam), (torch.float32,)

    def __init__(self, params, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, decoupled=False, **kwargs):
        super().__init__(params, lr, weight_decay, **kwargs)
        self.beta1, self.beta2 = betas
        self.eps, self.decoupled = eps, decoupled

    def constants(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "decay": self.decay,
                "decoupled": self.decoupled}

    def coefficients(self, lr):
        return {"step_size": lr / (1 - self.beta1 ** self.steps),
                "bias2_sqrt": torch.full_like(lr, math.sqrt(1 - self.beta2 ** self.steps)),
                "decay": 1 - lr * self.weight_decay if self.decoupled else self.weight_decay}

    @staticmethod
    def update(param, grad, state, c, k):
        if k["decay"] and k["decoupled"]:
            param.mul_(c["decay"])
        elif k["decay"]:
            grad = grad + param * c["decay"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(k["beta1"]).add_(grad * (1 - k["beta1"]))
        exp_avg_sq.mul_(k["beta2"]).add_(grad * grad * (1 - k["beta2"]))
        denom = (sqrt_rounded_once(exp_avg_sq) / c["bias2_sqrt"]).add_(k["eps"])
        param.sub_(exp_avg / denom * c["step_size"])


class BatchedSGD(BatchedOptimizer):
    """torch.optim.SGD (momentum, Nesterov, L2 weight decay, no dampening), per replica."""
    fused_update, FUSED_DTYPES = staticmethod(optim_cpu.sgd), (torch.float32, torch.float64)

    def __init__(self, params, lr, weight_decay=0.0, momentum=0.0, nesterov=False, **kwargs):
        self.STATE = ("momentum_buffer",) if momentum else ()
        super().__init__(params, lr, weight_decay, **kwargs)
        self.momentum, self.nesterov = momentum, nesterov

    def constants(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov, "decay": self.decay, "first": self.steps == 1}

    def coefficients(self, lr):
        return {"lr": lr, "weight_decay": self.weight_decay}

    @staticmethod
    def update(param, grad, state, c, k):
        if k["decay"]:
            grad = grad + param * c["weight_decay"]
        if k["momentum"]:
            buf = state["momentum_buffer"]
            if k["first"]:
                buf.copy_(grad)  # torch.optim starts the buffer at the first gradient
            else:
                buf.mul_(k["momentum"]).add_(grad)
            grad = grad + buf * k["momentum"] if k["nesterov"] else buf
        param.sub_(grad * c["lr"])


OPTIMIZERS = {"adam": BatchedAdam, "sgd": BatchedSGD}
