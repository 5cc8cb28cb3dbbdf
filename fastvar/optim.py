"""fastvar's batched optimizers: one update over stacked [M, ...] tensors, elementwise, so replica r
moves exactly as a lone model would. Learning rate and weight decay are per-replica vectors.

`update` is written once, for tensors shaped alike and hyperparameters that broadcast against them,
and applied either to whole stacks (few large operations: GPUs) or to one replica's slice at a time
(`by_replica=True`: a replica's parameters and state stay in cache through the update, and its
operations are exactly those of a lone run: CPUs, the loop strategy).

Each line is one single-op tensor primitive (no addcdiv, lerp or alpha=): a fused kernel may use a
fused multiply-add in its vector path and not in its scalar tail, which would make a replica's result
depend on where its slice falls in memory, i.e. on the batch it trained in.
"""
import math

import torch


def per_replica(values, like):
    """A vector over replicas, shaped to broadcast against a stacked tensor `like`."""
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


class BatchedOptimizer:
    STATE = ()

    def __init__(self, params, lr, weight_decay, lr_scale=None, by_replica=False):
        """lr, weight_decay: a float or one value per replica. lr_scale: {parameter name: factor}."""
        self.params = params  # name -> stacked tensor, updated in place
        self.size = next(iter(params.values())).shape[0]
        self.lr = torch.as_tensor(lr, dtype=torch.float64).expand(self.size).clone()
        self.weight_decay = torch.as_tensor(weight_decay, dtype=torch.float64).expand(self.size).clone()
        self.decay = bool(self.weight_decay.any())
        self.lr_scale, self.by_replica = lr_scale or {}, by_replica
        self.state = {n: {s: torch.zeros_like(p) for s in self.STATE} for n, p in params.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self, grads, lr_factor=1.0):
        """One update; the learning rate of this step is lr × lr_factor (the schedule) × lr_scale."""
        self.steps += 1
        for name, param in self.params.items():
            # Per-replica coefficients in float64, rounded once to the parameters' dtype either way.
            coefficients = self.coefficients(self.lr * (lr_factor * self.lr_scale.get(name, 1.0)))
            state = self.state[name]
            if self.by_replica:
                for r in range(self.size):
                    self.update(param[r], grads[name][r], {s: t[r] for s, t in state.items()},
                                {k: v[r].item() for k, v in coefficients.items()})
            else:
                self.update(param, grads[name], state, {k: per_replica(v, param) for k, v in coefficients.items()})


class BatchedAdam(BatchedOptimizer):
    """torch.optim.Adam (L2 weight decay) or AdamW (`decoupled=True`), per replica."""

    STATE = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, decoupled=False, **kwargs):
        super().__init__(params, lr, weight_decay, **kwargs)
        self.beta1, self.beta2 = betas
        self.eps, self.decoupled = eps, decoupled

    def coefficients(self, lr):
        return {"step_size": lr / (1 - self.beta1 ** self.steps),
                "decay": 1 - lr * self.weight_decay if self.decoupled else self.weight_decay}

    def update(self, param, grad, state, c):
        if self.decay and self.decoupled:
            param.mul_(c["decay"])
        elif self.decay:
            grad = grad + param * c["decay"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(self.beta1).add_(grad * (1 - self.beta1))
        exp_avg_sq.mul_(self.beta2).add_(grad * grad * (1 - self.beta2))
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - self.beta2 ** self.steps)).add_(self.eps)
        param.sub_(exp_avg / denom * c["step_size"])


class BatchedSGD(BatchedOptimizer):
    """torch.optim.SGD (momentum, Nesterov, L2 weight decay, no dampening), per replica."""

    def __init__(self, params, lr, weight_decay=0.0, momentum=0.0, nesterov=False, **kwargs):
        self.STATE = ("momentum_buffer",) if momentum else ()
        super().__init__(params, lr, weight_decay, **kwargs)
        self.momentum, self.nesterov = momentum, nesterov

    def coefficients(self, lr):
        return {"lr": lr, "weight_decay": self.weight_decay}

    def update(self, param, grad, state, c):
        if self.decay:
            grad = grad + param * c["weight_decay"]
        if self.momentum:
            buf = state["momentum_buffer"]
            if self.steps == 1:
                buf.copy_(grad)  # torch.optim starts the buffer at the first gradient
            else:
                buf.mul_(self.momentum).add_(grad)
            grad = grad + buf * self.momentum if self.nesterov else buf
        param.sub_(grad * c["lr"])


OPTIMIZERS = {"adam": BatchedAdam, "sgd": BatchedSGD}
