"""The batched optimizers against torch.optim, replica by replica, with per-replica vectors."""
import os

import numpy as np
import pytest
import torch

from fastvar.engine import optim_cpu
from fastvar.engine.optim import BatchedAdam, BatchedSGD, sqrt_rounded_once

LRS, DECAYS = [1e-3, 3e-3, 5e-4], [0.0, 1e-2, 5e-4]
CASES = {
    "adam": (BatchedAdam, dict(), lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd)),
    "adamw": (BatchedAdam, dict(decoupled=True), lambda p, lr, wd: torch.optim.AdamW(p, lr=lr, weight_decay=wd)),
    "sgd-nesterov": (BatchedSGD, dict(momentum=0.9, nesterov=True),
                     lambda p, lr, wd: torch.optim.SGD(p, lr=lr, weight_decay=wd, momentum=0.9, nesterov=True)),
    "sgd-plain": (BatchedSGD, dict(), lambda p, lr, wd: torch.optim.SGD(p, lr=lr, weight_decay=wd)),
}


SHAPES = {"w": (4, 3, 2), "b": (4,)}


def flat(tensors):
    """{name: M×...} as one flat M×P buffer, the entries side by side."""
    return torch.cat([t.flatten(1) for t in tensors.values()], dim=1)


@pytest.mark.parametrize("by_replica", [False, True], ids=["stacked", "by-replica"])
@pytest.mark.parametrize("case", CASES)
def test_each_replica_steps_as_torch_optim_with_its_own_lr_and_decay(case, by_replica):
    batched_cls, kwargs, torch_optim = CASES[case]
    g = torch.Generator().manual_seed(0)
    start = {n: torch.randn(3, *s, generator=g, dtype=torch.float64) for n, s in SHAPES.items()}
    grads = [{n: torch.randn(3, *s, generator=g, dtype=torch.float64) for n, s in SHAPES.items()} for _ in range(6)]
    stacked = flat(start)
    optimizer = batched_cls(stacked, LRS, DECAYS, lr_factors=[1.0] * len(grads), by_replica=by_replica, **kwargs)
    for step_grads in grads:
        optimizer.step((flat(step_grads),))
    for r in range(3):
        lone = {n: t[r].clone().requires_grad_() for n, t in start.items()}
        reference = torch_optim(list(lone.values()), LRS[r], DECAYS[r])
        for step_grads in grads:
            for n, p in lone.items():
                p.grad = step_grads[n][r].clone()
            reference.step()
        expected = flat({n: p.detach()[None] for n, p in lone.items()})[0]
        assert torch.allclose(stacked[r], expected, rtol=0, atol=1e-12), (case, r)
        assert not torch.allclose(stacked[r], flat(start)[r])


def schedule_and_spans(width):
    """A schedule over 5 steps, and the buffer cut into spans with their own lr factors."""
    return dict(lr_factors=[1 - step / 10 for step in range(5)], spans=[(0, 100, 1.0), (100, width, 0.1)])


@pytest.mark.parametrize("case", CASES)
def test_by_replica_and_stacked_updates_are_bit_identical_in_float32(case):
    batched_cls, kwargs, _ = CASES[case]
    g = torch.Generator().manual_seed(1)
    start = torch.randn(3, 192, generator=g)
    grads = [torch.randn(start.shape, generator=g) for _ in range(5)]
    finals = []
    for by_replica in (False, True):
        params = start.clone()
        optimizer = batched_cls(params, LRS, DECAYS, by_replica=by_replica, **schedule_and_spans(192), **kwargs)
        for step_grads in grads:
            optimizer.step((step_grads,))
        finals.append(params)
    assert torch.equal(finals[0], finals[1]), case


@pytest.mark.parametrize("decays", [DECAYS, [0.0] * 3], ids=["decay", "no-decay"])
@pytest.mark.parametrize("case, dtype", [(case, dtype) for case, (cls, _, _) in CASES.items() for dtype in cls.FUSED_DTYPES])
def test_the_c_update_equals_the_torch_reference_bit_for_bit(case, dtype, decays, monkeypatch):
    """optim_cpu's loops against the optimizers' own `update`, by replica, over steps with a schedule;
    odd sizes, so that vector loops have tails, and a gradient in two parts (mixed precision's)."""
    if optim_cpu.load() is None:
        assert not os.environ.get("CI"), "CI has a C compiler: the optimizer kernel must build"
        pytest.skip("no C compiler on this machine")
    batched_cls, kwargs, _ = CASES[case]
    g = torch.Generator().manual_seed(2)
    start = torch.randn(3, 197, generator=g, dtype=dtype)
    grads = [(torch.randn(3, 100, generator=g, dtype=dtype), torch.randn(3, 97, generator=g, dtype=dtype))
             for _ in range(5)]
    finals = []
    for fused in (False, True):
        monkeypatch.setattr(optim_cpu, "applies", lambda tensors, dtypes: fused)
        params = start.clone()
        optimizer = batched_cls(params, LRS, decays, by_replica=True, **schedule_and_spans(197), **kwargs)
        for step_grads in grads:
            optimizer.step(step_grads)
        finals.append((params, optimizer.state))
    (params, state), (fused_params, fused_state) = finals
    assert torch.equal(params, fused_params) and not torch.equal(params, start), case
    assert all(torch.equal(state[s], fused_state[s]) for s in state)


def test_the_reference_square_root_is_rounded_once():
    """numpy's float32 sqrt is the IEEE instruction; random bit patterns cover every exponent,
    subnormals included."""
    bits = torch.randint(0, 0x7F800000, (2_000_000,), generator=torch.Generator().manual_seed(3), dtype=torch.int32)
    x = bits.view(torch.float32)
    assert torch.equal(sqrt_rounded_once(x), torch.from_numpy(np.sqrt(x.numpy())))
