"""Deterministic mode, per model (issue 21, part 3): no built-in model's training step or evaluation
runs an op that throws on CUDA under torch.use_deterministic_algorithms(True), which a study with its
kernels fixed sets there; a model of the user's own that does is refused before any run."""
import pytest
import torch
from torch import nn

from fastvar.engine.determinism import FORMERLY, THROWS_ON_CUDA, ThrowingOps, by_op, documented_entries
from fastvar.engine.dry_step import check_replicable
from fastvar.engine.replicas import Replicas
from fastvar.errors import ConfigError
from fastvar.models import BUILTIN_MODELS, LANGUAGE_MODELS, GlobalMaxPool, model_spec


def test_the_map_covers_torchs_list_entry_for_entry():
    """Every entry the installed torch lists is mapped; the map's others are those an older torch listed."""
    documented = documented_entries()
    assert "torch.nn.AdaptiveMaxPool2d" in documented and len(documented) > 20  # the parse found the list
    assert documented <= set(THROWS_ON_CUDA) and set(THROWS_ON_CUDA) - documented <= FORMERLY
    traced = by_op()  # the tracer looks for this torch's list: each of its ops, and no other entry's
    assert all(op in traced for entry in documented for op in THROWS_ON_CUDA[entry])
    assert {entry for entry, _ in traced.values()} <= documented


def test_max_pool_3d_is_refused_where_this_torch_lists_it():
    x = torch.randn(1, 1, 4, 4, 4, requires_grad=True)
    with ThrowingOps() as throwing:
        nn.MaxPool3d(2)(x).sum().backward()
    listed = "torch.nn.MaxPool3d" in documented_entries()
    assert throwing.found == ({"max_pool3d_with_indices_backward": "torch.nn.MaxPool3d"} if listed else {})


def test_the_tracer_finds_adaptive_max_pooling_and_a_float_cumsum():
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    with ThrowingOps() as throwing:
        nn.AdaptiveMaxPool2d(1)(x).sum().backward()
        torch.arange(4).cumsum(0)  # integers: deterministic
    assert throwing.found == {"adaptive_max_pool2d_backward": "torch.nn.AdaptiveMaxPool2d"}
    with ThrowingOps() as throwing:
        torch.randn(4).cumsum(0)
    assert set(throwing.found) == {"cumsum"}


def input_shape(name):
    return (3 * 32 * 32,) if name in ("linear", "mlp") else (8,) if name in LANGUAGE_MODELS else (3, 32, 32)


@pytest.mark.parametrize("strategy,conv", [("vmap", "gemm"), ("vmap", "grouped"), ("loop", "native")])
@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_no_built_in_model_runs_an_op_that_throws_on_cuda_in_deterministic_mode(name, strategy, conv):
    shape = input_shape(name)
    width = None if model_spec(name).width == 0 else 2
    for precision in (None, torch.bfloat16):
        replicas = Replicas(name, [0, 1], width=width, strategy=strategy, conv=conv, input_shape=shape,
                            compute_dtype=precision)
        generator = torch.Generator().manual_seed(0)
        if name in LANGUAGE_MODELS:  # tokens, and a target token per position
            x, y = (torch.randint(0, 10, (2, 3, *shape), generator=generator) for _ in range(2))
        else:
            x = torch.randn(2, 3, *shape, generator=generator).to(replicas.input_dtype())
            y = torch.tensor([[0, 1, 2], [3, 4, 5]])
        with ThrowingOps() as throwing:
            replicas.train_step_grads(x, y)
            replicas.logits(x[0])
        assert throwing.found == {}, (name, precision)


def test_resnet9s_pooling_is_adaptive_max_pooling_bit_for_bit():
    """Values and gradients equal nn.AdaptiveMaxPool2d(1)'s, ties included (the first maximum gets it)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 5, 7, generator=g)
    x[0, 0] = 1.5  # every pixel tied
    x[1, 2, 3, 1] = x[1, 2, 0, 4] = x[1, 2].max() + 1  # two maxima
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        a = x.to(dtype).clone().requires_grad_()
        b = x.to(dtype).clone().requires_grad_()
        expected, got = nn.AdaptiveMaxPool2d(1)(a), GlobalMaxPool()(b)
        assert got.shape == expected.shape and torch.equal(got, expected)
        upstream = torch.randn(expected.shape, generator=g).to(dtype)
        expected.backward(upstream)
        got.backward(upstream)
        assert torch.equal(a.grad, b.grad)
    with ThrowingOps() as throwing:
        GlobalMaxPool()(x.requires_grad_()).sum().backward()
    assert throwing.found == {}


class MaxPoolHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_a_users_model_with_such_an_op_is_refused_on_cuda_with_fixed_kernels_only():
    expected = r"adaptive_max_pool2d_backward \(torch.nn.AdaptiveMaxPool2d\).*vary=\('kernels',\)"
    with pytest.raises(ConfigError, match=expected) as raised:
        check_replicable(MaxPoolHead, "vmap", 10, (3, 8, 8), deterministic_cuda=True)
    assert "--vary kernels" in raised.value.on_command_line()
    check_replicable(MaxPoolHead, "vmap", 10, (3, 8, 8), deterministic_cuda=False)  # kernels varied: allowed
