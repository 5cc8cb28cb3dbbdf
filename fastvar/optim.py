"""fastvar's batched optimizers: one update over stacked [M, ...] tensors, elementwise, so replica r
moves exactly as a lone model would. Learning rate and weight decay are per-replica vectors.

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
    def __init__(self, params, lr, weight_decay, lr_scale=None):
        """lr, weight_decay: a float or one value per replica. lr_scale: {parameter name: factor}."""
        self.params = params  # name -> stacked tensor, updated in place
        m = next(iter(params.values())).shape[0]
        self.lr = torch.as_tensor(lr, dtype=torch.float64).expand(m).clone()
        self.weight_decay = torch.as_tensor(weight_decay, dtype=torch.float64).expand(m).clone()
        self.lr_scale = lr_scale or {}
        self.steps = 0

    @torch.no_grad()
    def step(self, grads, lr_factor=1.0):
        """One update; the learning rate of this step is lr × lr_factor (the schedule) × lr_scale."""
        self.steps += 1
        for name, param in self.params.items():
            self.update(name, param, grads[name], self.lr * (lr_factor * self.lr_scale.get(name, 1.0)))


class BatchedAdam(BatchedOptimizer):
    """torch.optim.Adam (L2 weight decay) or AdamW (`decoupled=True`), per replica."""

    def __init__(self, params, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, decoupled=False, lr_scale=None):
        super().__init__(params, lr, weight_decay, lr_scale)
        self.beta1, self.beta2 = betas
        self.eps, self.decoupled = eps, decoupled
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}

    def update(self, name, param, grad, lr):
        decay = self.weight_decay.any()
        if decay and self.decoupled:
            param.mul_(per_replica(1 - lr * self.weight_decay, param))
        elif decay:
            grad = grad + param * per_replica(self.weight_decay, param)
        exp_avg, exp_avg_sq = self.exp_avg[name], self.exp_avg_sq[name]
        exp_avg.mul_(self.beta1).add_(grad * (1 - self.beta1))
        exp_avg_sq.mul_(self.beta2).add_(grad * grad * (1 - self.beta2))
        step_size = lr / (1 - self.beta1 ** self.steps)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - self.beta2 ** self.steps)).add_(self.eps)
        param.sub_(exp_avg / denom * per_replica(step_size, param))


class BatchedSGD(BatchedOptimizer):
    """torch.optim.SGD (momentum, Nesterov, L2 weight decay, no dampening), per replica."""

    def __init__(self, params, lr, weight_decay=0.0, momentum=0.0, nesterov=False, lr_scale=None):
        super().__init__(params, lr, weight_decay, lr_scale)
        self.momentum, self.nesterov = momentum, nesterov
        self.buffers = {}

    def update(self, name, param, grad, lr):
        if self.weight_decay.any():
            grad = grad + param * per_replica(self.weight_decay, param)
        if self.momentum:
            buf = self.buffers.get(name)
            if buf is None:
                buf = self.buffers[name] = grad.clone()
            else:
                buf.mul_(self.momentum).add_(grad)
            grad = grad + buf * self.momentum if self.nesterov else buf
        param.sub_(grad * per_replica(lr, param))


OPTIMIZERS = {"adam": BatchedAdam, "sgd": BatchedSGD}
