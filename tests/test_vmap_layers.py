"""The vmap layers compute what nn.Conv2d and nn.BatchNorm2d compute (float64, to rounding), alone and
batched over replicas by vmap, forward and backward; a vmap run with them trains as the loop does."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from conftest import needs_triton, random_dataset
from fastvar.engine.replicas import Replicas
from fastvar.sources import run_seeds
from fastvar.recipes import RECIPES
from fastvar.engine.train import fit
from fastvar.models import build_model
from fastvar.engine.live import live_taps
from fastvar.engine.vmap_layers import (ElementaryBatchNorm2d, GemmConv2d, GroupedConv2d, ImplicitConv2d,
                                         gemm_convertible, one_tap_each, small_convs)

# (in, out, kernel, stride, padding, bias, input size): every convolution shape the models use, and odd ones;
# images of fewer than k² pixels take the unrolled form (2×2 and 1×1: the seed model's last two stages)
CONVS = [(3, 8, 7, 2, 3, False, 32), (8, 8, 3, 1, 1, False, 8), (8, 16, 3, 2, 1, False, 8), (8, 16, 1, 2, 0, False, 8),
         (3, 8, 5, 2, 2, True, 32), (16, 8, 3, 1, 0, False, 5), (4, 6, 3, 1, 1, True, 1), (5, 7, 2, 3, 1, True, 9),
         (8, 8, 3, 1, 1, False, 2), (8, 16, 3, 2, 1, False, 2), (6, 5, 5, 1, 2, True, 3), (4, 6, 3, 1, 2, False, 1),
         (3, 4, 5, 2, 2, True, 2)]


def as_class(module, cls):
    module.__class__ = cls
    return module


@pytest.mark.parametrize("weight_layout", ["contiguous", "laid-out"])
@pytest.mark.parametrize("c_in,c_out,k,s,p,bias,size", CONVS)
def test_gemm_conv_equals_conv2d_forward_and_backward(c_in, c_out, k, s, p, bias, size, weight_layout):
    """In either weight layout; laid out as the layer asks, the weight's gradient comes in its layout."""
    torch.manual_seed(size + k)
    conv = torch.nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=bias, dtype=torch.float64)
    assert gemm_convertible(conv)
    gemm = as_class(torch.nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=bias, dtype=torch.float64), GemmConv2d)
    gemm.load_state_dict(conv.state_dict())
    if weight_layout == "laid-out":
        in_memory_order = gemm.weight.detach().permute(GemmConv2d.WEIGHT_MEMORY_ORDER).contiguous()
        gemm.weight = torch.nn.Parameter(in_memory_order.permute(3, 2, 0, 1))
        assert not gemm.weight.is_contiguous() or k == c_in == 1
    x = torch.randn(3, c_in, size, size, dtype=torch.float64, requires_grad=True)
    expected, got = conv(x), gemm(x)
    assert got.shape == expected.shape and torch.allclose(got, expected, rtol=0, atol=1e-12)
    g = torch.randn_like(expected)
    grads = [torch.autograd.grad(out, [x, *module.parameters()], g) for out, module in ((expected, conv), (got, gemm))]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-11)
    assert torch.equal(gemm.weight, conv.weight)
    if weight_layout == "laid-out":
        assert grads[1][1].stride() == gemm.weight.stride()


@pytest.mark.parametrize("size", [9, 2, 1], ids=["im2col", "unrolled", "one-pixel"])
def test_gemm_conv_under_vmap_is_each_replicas_own_conv(size):
    torch.manual_seed(size)
    convs = [torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, dtype=torch.float64) for _ in range(3)]
    params, _ = stack_module_state(convs)
    template = as_class(torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, dtype=torch.float64, device="meta"), GemmConv2d)
    x = torch.randn(3, 5, 4, size, size, dtype=torch.float64)
    out = vmap(lambda p, xi: functional_call(template, p, (xi,)))(params, x)
    for r, conv in enumerate(convs):
        assert torch.allclose(out[r], conv(x[r]), rtol=0, atol=1e-12)


def test_grouped_or_dilated_convs_stay_native():
    assert not gemm_convertible(torch.nn.Conv2d(4, 4, 3, groups=2))
    assert not gemm_convertible(torch.nn.Conv2d(4, 4, 3, dilation=2))
    assert not gemm_convertible(torch.nn.Conv2d(4, 4, (3, 1)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_elementary_batch_norm_equals_batch_norm(dtype):
    torch.manual_seed(1)
    native = torch.nn.BatchNorm2d(5, dtype=torch.float64)
    with torch.no_grad():
        native.weight.uniform_(0.5, 1.5), native.bias.uniform_(-1, 1)
    elementary = as_class(torch.nn.BatchNorm2d(5, dtype=torch.float64), ElementaryBatchNorm2d)
    elementary.load_state_dict(native.state_dict())
    x = torch.randn(6, 5, 4, 4, dtype=torch.float64) * 3 + 1
    for _ in range(2):  # training: output, running statistics, batch count
        expected, got = native(x), elementary(x.to(dtype))
        assert got.dtype == dtype
        tolerance = 1e-12 if dtype == torch.float64 else 3e-2
        assert torch.allclose(got.double(), expected, rtol=0, atol=tolerance * 10)
    for name, buffer in native.named_buffers():
        assert torch.allclose(getattr(elementary, name).double(), buffer.double(), rtol=1e-2 if dtype != torch.float64 else 1e-12)
    native.eval(), elementary.eval()
    assert torch.allclose(elementary(x.to(dtype)).double(), native(x), rtol=0, atol=tolerance * 10)


@pytest.mark.parametrize("vmap_conv", ["gemm", "grouped", "implicit"])
def test_vmap_with_gemm_grouped_or_implicit_convs_trains_as_the_loop_does_in_float64(vmap_conv):
    if vmap_conv == "implicit":
        needs_triton()
    data = random_dataset(8, 10)
    data.x_train, data.x_test = data.x_train[:, :16, :16], data.x_test[:, :16, :16]  # 16×16: interpreted Triton is slow
    recipe = RECIPES["seed"].replace(epochs=1, batch_size=4)  # 2 Adam steps (the implicit form interpreted)
    seeds = [run_seeds("all-random", i) for i in range(2)]
    trained = []
    for strategy, conv in (("loop", "native"), ("vmap", vmap_conv)):
        replicas = Replicas("resnet18", [s.init_seed for s in seeds], width=4, strategy=strategy,
                            dtype=torch.float64, conv=conv)
        kinds = {type(m) for m in replicas.template.modules()}
        assert (GemmConv2d in kinds) == (conv != "native")
        assert (GroupedConv2d in kinds) == (conv == "grouped") and (ImplicitConv2d in kinds) == (conv == "implicit")
        fit(replicas, data, recipe, seeds)
        trained.append(replicas)
    for r in range(2):  # as state dicts: the GEMM form keeps the last stage's dead taps apart
        loop, vmapped = trained[0].state_dict(r), trained[1].state_dict(r)
        for name, value in loop.items():
            assert torch.allclose(vmapped[name].double(), value.double(), rtol=0, atol=1e-9), name


@pytest.mark.parametrize("replicas_count", [1, 2])
def test_replicas_lay_gemm_weights_out_as_the_layer_reads_them(replicas_count):
    """The taps are a view of each replica's stretch of the flat buffer (the live taps alone where some
    are dead), the gradient arrives as one flat buffer shaped like it, and state dicts stay contiguous
    and equal to the model's own."""
    replicas = Replicas("resnet18", list(range(replicas_count)), width=4, conv="auto")
    plain = build_model("resnet18", init_seed=replicas_count - 1, width=4).state_dict()
    x, y = torch.randn(replicas_count, 8, 3, 32, 32), torch.randint(0, 10, (replicas_count, 8))
    _, _, (grad,) = replicas.train_step_grads(x, y)
    assert grad.shape == replicas.master.shape == (replicas_count, replicas.layout.size)
    gemm = {f"{name}.weight": m for name, m in replicas.template.named_modules() if isinstance(m, GemmConv2d)}
    assert len(gemm) == 10 and sum(m.live_taps is not None for m in gemm.values()) == 4
    for name, module in gemm.items():
        weight = replicas.params[name]
        assert weight.untyped_storage().data_ptr() == replicas.master.untyped_storage().data_ptr(), name
        if module.live_taps is None:
            assert weight[-1].permute(GemmConv2d.WEIGHT_MEMORY_ORDER).is_contiguous(), name
        else:
            assert weight.shape[1:] == (len(module.live_taps), module.in_channels, module.out_channels)
    state = replicas.state_dict(replicas_count - 1)
    assert state.keys() == plain.keys()
    assert all(t.is_contiguous() for t in state.values())
    assert all(torch.equal(t, plain[n]) for n, t in state.items() if n not in replicas.buffers)  # a step moved those


def test_auto_conv_rule_takes_small_outputs_on_a_cpu_and_all_under_vmap_on_cuda():
    from fastvar.engine.replicas import conv_rule, template
    model = build_model("resnet18", init_seed=0, width=8).to("meta")
    convs = dict(model.named_modules())
    small = {name for name, m in convs.items() if m in small_convs(model)}
    # 16×16 at the stem, 8×8 and 4×4 in the first two stages: native; 2×2 and 1×1 in the last two: GEMM
    assert {"layer3.0.conv1", "layer3.0.downsample.0", "layer4.1.conv2"} <= small
    assert not {"conv1", "layer1.0.conv1", "layer2.1.conv2"} & small and len(small) == 10
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [conv_rule("auto", s, d) for s, d in (("loop", cpu), ("vmap", cpu), ("vmap", cuda))] == ["small", "small", "all"]
    assert (conv_rule("gemm", "loop", cpu), conv_rule("native", "vmap", cuda)) == ("all", "none")
    cifar = (10, (3, 32, 32))  # classes, one example's shape
    narrow = template("resnet14", 8, torch.float32, None, False, "small", *cifar)  # 8×8 at its smallest: all native
    assert not any(isinstance(m, GemmConv2d) for m in narrow.modules())
    assert sum(isinstance(m, GemmConv2d) for m in template("resnet14", 8, torch.float32, None, False, "all", *cifar).modules()) == 13


def some_taps_dead(c_in, c_out, k, s, p, bias, size):
    return bool(live_taps(torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, k, s, p, device="meta")), (c_in, size, size)))


@pytest.mark.parametrize("c_in,c_out,k,s,p,bias,size", [c for c in CONVS if some_taps_dead(*c)])
def test_gemm_conv_with_live_taps_only_equals_conv2d(c_in, c_out, k, s, p, bias, size):
    """Given its live taps alone (T×C×Cout), the GEMM convolution computes the full convolution, and
    their gradient is the full gradient's at those taps (which is 0 at the dead ones)."""
    torch.manual_seed(size + k + 1)
    conv = torch.nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=bias, dtype=torch.float64)
    taps = live_taps(torch.nn.Sequential(conv), (c_in, size, size))["0"]
    gemm = as_class(torch.nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=bias, dtype=torch.float64), GemmConv2d)
    gemm.load_state_dict(conv.state_dict())
    by_tap = conv.weight.detach().permute(2, 3, 1, 0).reshape(k * k, c_in, c_out)
    gemm.live_taps, gemm.weight = taps, torch.nn.Parameter(by_tap[list(taps)].clone())
    x = torch.randn(3, c_in, size, size, dtype=torch.float64)
    expected, got = conv(x), gemm(x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    g = torch.randn_like(expected)
    (full,), (live,) = (torch.autograd.grad(out, [m.weight], g) for out, m in ((expected, conv), (got, gemm)))
    by_tap_grad = full.permute(2, 3, 1, 0).reshape(k * k, c_in, c_out)
    assert torch.allclose(live, by_tap_grad[list(taps)], rtol=0, atol=1e-12)
    dead = [t for t in range(k * k) if t not in taps]
    assert torch.count_nonzero(by_tap_grad[dead]) == 0


def grouped_and_plain(c_in, c_out, k, s, p, bias, cls, replicas=3):
    convs = [torch.nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=bias, dtype=torch.float64) for _ in range(replicas)]
    params = {n: t.requires_grad_() for n, t in stack_module_state(convs)[0].items()}
    template = as_class(torch.nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=bias, dtype=torch.float64,
                                        device="meta"), cls)
    return convs, params, template


# The implicit form's kernels are interpreted on a CPU: images of at most 12×12 keep that quick
REPLICA_CASES = [(cls, *case) for cls in (GroupedConv2d, ImplicitConv2d) for case in CONVS[:6]
                 if cls is GroupedConv2d or case[-1] <= 12] + [(ImplicitConv2d, 3, 8, 7, 2, 3, False, 12)]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("shared_input", [False, True], ids=["own-batches", "shared-batch"])
@pytest.mark.parametrize("cls,c_in,c_out,k,s,p,bias,size", REPLICA_CASES)
def test_replica_convs_under_vmap_are_each_replicas_conv2d_forward_and_backward(c_in, c_out, k, s, p, bias, size, cls,
                                                                                shared_input, compiled):
    """Two convolutions of the form in a row under vmap (the second reads the first's output in the
    layout it left) against each replica's nn.Conv2d in float64: outputs, input and weight gradients.
    The implicit form's Triton kernels run under TRITON_INTERPRET=1 on a CPU."""
    if cls is ImplicitConv2d:
        needs_triton()
    torch.manual_seed(size + s)
    convs, params, template = grouped_and_plain(c_in, c_out, k, s, p, bias, cls)
    second_convs, second, second_template = grouped_and_plain(c_out, c_out, 3, 1, 1, False, cls)
    x = torch.randn(*(() if shared_input else (3,)), 2, c_in, size, size, dtype=torch.float64, requires_grad=True)

    def forward(params, second, x):
        def one(p, q, xi):
            return functional_call(second_template, q, (functional_call(template, p, (xi,)).relu(),))
        return vmap(one, in_dims=(0, 0, None if shared_input else 0))(params, second, x)
    got = (torch.compile(forward, dynamic=False) if compiled else forward)(params, second, x)
    expected = torch.stack([second_convs[r](convs[r](x if shared_input else x[r]).relu()) for r in range(3)])
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    g = torch.randn_like(expected)
    grads = torch.autograd.grad(got, [x, *params.values(), *second.values()], g)
    assert torch.allclose(grads[0], torch.autograd.grad(expected, x, g, retain_graph=True)[0], rtol=0, atol=1e-11)
    for r in range(3):
        own = torch.autograd.grad(expected[r], [*convs[r].parameters(), *second_convs[r].parameters()], g[r],
                                  retain_graph=True)
        assert all(torch.allclose(mine[r], theirs, rtol=0, atol=1e-11) for mine, theirs in zip(grads[1:], own))


@pytest.mark.parametrize("cls", [GroupedConv2d, ImplicitConv2d], ids=["grouped", "implicit"])
def test_replica_convs_alone_are_conv2d(cls):
    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True, dtype=torch.float64)
    grouped = as_class(torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True, dtype=torch.float64), cls)
    grouped.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    expected, got = conv(x), grouped(x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    g = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad(expected, [x, *conv.parameters()], g),
                    torch.autograd.grad(got, [x, *grouped.parameters()], g)):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_one_output_pixel_with_a_tap_for_each_input_pixel_reads_the_taps_as_its_map():
    """The seed model's last stage: from 2×2 to 1×1 (stride 2) the four live taps are the map in their
    own order (a slice: a view), on a 1×1 image the centre tap; else the general form."""
    assert one_tap_each(2, 2, 1, 1, 3, 1, (4, 5, 7, 8)) == [0, 1, 2, 3]
    assert one_tap_each(2, 2, 1, 1, 3, 1, range(9)) == [4, 5, 7, 8]
    assert one_tap_each(1, 1, 1, 1, 3, 1, (4,)) == [0] and one_tap_each(1, 1, 1, 1, 3, 1, range(9)) == [4]
    assert one_tap_each(2, 2, 2, 2, 3, 1, range(9)) is None  # four output pixels
    assert one_tap_each(3, 3, 1, 1, 2, 0, range(4)) is None  # the third row reaches no tap
