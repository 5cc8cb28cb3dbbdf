"""M models as one: parameters and buffers stacked [M, ...], each replica initialised from its own
init seed, trained by one of two strategies over the same storage.

- `vmap`: one `torch.func.vmap` of `functional_call` over all replicas (few, large kernels: GPUs).
- `loop`: one replica at a time on its own slice (bit-identical to a lone model: CPUs).

Gradients land in stacked [M, ...] tensors either way, so one batched optimizer serves both.
"""
import copy

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from .models import build_model

STRATEGIES = ("loop", "vmap")


class Replicas:
    def __init__(self, model, init_seeds, *, width=None, strategy="loop", dtype=torch.float32, device="cpu",
                 dropout=None):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        models = [build_model(model, init_seed=s, width=width, dtype=dtype, dropout=dropout) for s in init_seeds]
        params, buffers = stack_module_state(models)
        self.params = {n: p.detach().to(device) for n, p in params.items()}
        self.buffers = {n: b.to(device) for n, b in buffers.items()}
        self.template = copy.deepcopy(models[0]).to("meta")  # structure only; state comes from the stacks
        self.size, self.strategy = len(init_seeds), strategy
        self.channels_last = channels_last_is_safe(self.template, torch.device(device))
        # Leaves share storage with the stacks, so the optimizer's in-place updates reach them. Each
        # replica gets leaves of its own: autograd through slices of one stacked leaf would build a
        # zeroed full-size gradient per slice.
        self.stacked_leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        self.replica_leaves = [{n: p[r].detach().requires_grad_() for n, p in self.params.items()}
                               for r in range(self.size)]
        self.replica_buffers = [{n: b[r] for n, b in self.buffers.items()} for r in range(self.size)]

    def train_step_grads(self, x, y, dropout_masks=None, label_smoothing=None):
        """x M×B×3×H×W, y M×B (dropout masks M×B×features for a model with dropout; label smoothing
        one value per replica, or None) → per-replica mean loss [M], correct count [M], stacked grads."""
        self.template.train()
        x = x if self.channels_last else x.contiguous()
        extra = {} if dropout_masks is None else {"fc.dropout_mask": dropout_masks}
        if self.strategy == "vmap":
            return self._vmap_grads(x, y, {**self.buffers, **extra}, label_smoothing)
        return self._loop_grads(x, y, [{**b, **{k: v[r] for k, v in extra.items()}}
                                       for r, b in enumerate(self.replica_buffers)], label_smoothing)

    def _vmap_grads(self, x, y, buffers, label_smoothing):
        logits = vmap(self._forward)(self.stacked_leaves, buffers, x)
        losses = batched_cross_entropy(logits, y, label_smoothing)
        # Replicas are independent, so d(sum of losses)/d(replica r) is replica r's own gradient.
        grads = torch.autograd.grad(losses.sum(), list(self.stacked_leaves.values()))
        return losses.detach(), correct_counts(logits, y), dict(zip(self.params, grads))

    def _loop_grads(self, x, y, buffers, label_smoothing):
        grads = {n: torch.empty_like(p) for n, p in self.params.items()}
        losses, correct = [], []
        for r in range(self.size):
            leaves = self.replica_leaves[r]
            logits = self._forward(leaves, buffers[r], x[r])
            loss = F.cross_entropy(logits, y[r], label_smoothing=0.0 if label_smoothing is None
                                   else label_smoothing[r].item())
            for name, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values()))):
                grads[name][r].copy_(g)
            losses.append(loss.detach())
            correct.append(correct_counts(logits, y[r]))
        return torch.stack(losses), torch.stack(correct), grads

    @torch.no_grad()
    def logits(self, x):
        """Eval-mode logits of every replica on one shared batch x B×3×H×W → M×B×classes."""
        self.template.eval()
        x = x if self.channels_last else x.contiguous()
        if self.strategy == "vmap":
            return vmap(self._forward, in_dims=(0, 0, None))(self.params, self.buffers, x)
        return torch.stack([self._forward({n: p[r] for n, p in self.params.items()},
                                          self.replica_buffers[r], x) for r in range(self.size)])

    def _forward(self, params, buffers, x):
        return functional_call(self.template, (params, buffers), (x,))

    def state_dict(self, r):
        """Replica r as an ordinary state dict (copies), loadable into the model it was built from."""
        return {n: t[r].clone() for n, t in {**self.params, **self.buffers}.items()}


def channels_last_is_safe(model, device):
    """False where oneDNN's CPU backward is wrong for channels-last input: a strided 1x1 conv with
    fewer input channels than its block (8 with AVX2, 16 with AVX-512) gets garbage weight gradients
    and may corrupt the heap (oneDNN issue 6035, torch 2.13). Narrow models then train on contiguous
    input; the result is the same function, only slower."""
    if device.type != "cpu":
        return True
    return not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                   and m.in_channels < 16 for m in model.modules())


def batched_cross_entropy(logits, y, label_smoothing=None):
    """Mean cross-entropy of each replica (logits M×B×C), with each replica's own label smoothing ε:
    (1 - ε) · NLL + ε · mean over classes of -log p, as F.cross_entropy(label_smoothing=ε) computes it."""
    if label_smoothing is None:
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
    log_p = F.log_softmax(logits, dim=-1)
    nll = -log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    eps = label_smoothing.to(logits.dtype).unsqueeze(1)
    return ((1 - eps) * nll + eps * -log_p.mean(-1)).mean(1)


def correct_counts(logits, y):
    return (logits.detach().argmax(-1) == y).sum(-1)
