import pytest
import torch

from conftest import named_gradients
from fastvar.models import build_model

# torchvision.models.resnet18(num_classes=10): every parameter, as named_parameters() lists them.
TORCHVISION_RESNET18 = """
conv1.weight 64,3,7,7
bn1.weight 64
bn1.bias 64
layer1.0.conv1.weight 64,64,3,3
layer1.0.bn1.weight 64
layer1.0.bn1.bias 64
layer1.0.conv2.weight 64,64,3,3
layer1.0.bn2.weight 64
layer1.0.bn2.bias 64
layer1.1.conv1.weight 64,64,3,3
layer1.1.bn1.weight 64
layer1.1.bn1.bias 64
layer1.1.conv2.weight 64,64,3,3
layer1.1.bn2.weight 64
layer1.1.bn2.bias 64
layer2.0.conv1.weight 128,64,3,3
layer2.0.bn1.weight 128
layer2.0.bn1.bias 128
layer2.0.conv2.weight 128,128,3,3
layer2.0.bn2.weight 128
layer2.0.bn2.bias 128
layer2.0.downsample.0.weight 128,64,1,1
layer2.0.downsample.1.weight 128
layer2.0.downsample.1.bias 128
layer2.1.conv1.weight 128,128,3,3
layer2.1.bn1.weight 128
layer2.1.bn1.bias 128
layer2.1.conv2.weight 128,128,3,3
layer2.1.bn2.weight 128
layer2.1.bn2.bias 128
layer3.0.conv1.weight 256,128,3,3
layer3.0.bn1.weight 256
layer3.0.bn1.bias 256
layer3.0.conv2.weight 256,256,3,3
layer3.0.bn2.weight 256
layer3.0.bn2.bias 256
layer3.0.downsample.0.weight 256,128,1,1
layer3.0.downsample.1.weight 256
layer3.0.downsample.1.bias 256
layer3.1.conv1.weight 256,256,3,3
layer3.1.bn1.weight 256
layer3.1.bn1.bias 256
layer3.1.conv2.weight 256,256,3,3
layer3.1.bn2.weight 256
layer3.1.bn2.bias 256
layer4.0.conv1.weight 512,256,3,3
layer4.0.bn1.weight 512
layer4.0.bn1.bias 512
layer4.0.conv2.weight 512,512,3,3
layer4.0.bn2.weight 512
layer4.0.bn2.bias 512
layer4.0.downsample.0.weight 512,256,1,1
layer4.0.downsample.1.weight 512
layer4.0.downsample.1.bias 512
layer4.1.conv1.weight 512,512,3,3
layer4.1.bn1.weight 512
layer4.1.bn1.bias 512
layer4.1.conv2.weight 512,512,3,3
layer4.1.bn2.weight 512
layer4.1.bn2.bias 512
fc.weight 10,512
fc.bias 10
"""


def test_parameter_names_and_shapes_equal_torchvision():
    expected = [(name, tuple(int(d) for d in shape.split(",")))
                for name, shape in (line.split() for line in TORCHVISION_RESNET18.strip().splitlines())]
    model = build_model("resnet18", init_seed=0)
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == expected
    bn_names = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.dim() == 1 and not n.startswith("fc")}
    assert {n for n, _ in model.named_buffers()} == {f"{bn}.{b}" for bn in bn_names
                                                      for b in ("running_mean", "running_var", "num_batches_tracked")}


def test_initialisation_follows_torchvision():
    model = build_model("resnet18", init_seed=3)
    conv = model.layer3[0].conv1.weight
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]
    assert abs(conv.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.02  # kaiming normal, fan-out, ReLU gain
    assert torch.equal(model.bn1.weight, torch.ones(64)) and torch.equal(model.bn1.bias, torch.zeros(64))
    bound = 1 / 512 ** 0.5  # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert model.fc.weight.abs().max() <= bound and model.fc.bias.abs().max() <= bound
    assert model.fc.weight.abs().max() > 0.9 * bound


def test_init_seed_alone_decides_the_weights():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_model("resnet18", init_seed=7, width=8)
    assert torch.equal(torch.rand(3), before)  # the global generator is left as it was
    b = build_model("resnet18", init_seed=7, width=8)
    c = build_model("resnet18", init_seed=8, width=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_width_and_cifar_variant():
    narrow = build_model("resnet18", init_seed=0, width=8)
    assert [narrow.layer1[0].conv1.out_channels, narrow.layer2[0].conv1.out_channels,
            narrow.layer3[0].conv1.out_channels, narrow.layer4[0].conv1.out_channels] == [8, 16, 32, 64]
    cifar = build_model("resnet18-cifar", init_seed=0, width=8)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    assert narrow(x).shape == cifar(x).shape == (2, 10)


DEPTH_MODELS = {"linear": 3072 * 10 + 10, "mlp": 3072 * 8 + 8 + 8 * 10 + 10}  # parameters at width 8


@pytest.mark.parametrize("name", ["linear", "mlp", "conv1", "resnet6", "resnet10", "resnet14", "vgg11", "resnet9",
                                  "resnet18-cifar"])
def test_every_model_trains_in_both_strategies(name):
    """Gradients of the loop (native layers) and of vmap with the GPU's layers (GEMM convolutions,
    written-out BatchNorm) agree in float64, for every model."""
    from fastvar.engine.replicas import Replicas
    model = build_model(name, init_seed=0, width=8)
    if name in DEPTH_MODELS:
        assert sum(p.numel() for p in model.parameters()) == DEPTH_MODELS[name]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    expected_convs = {"linear": 0, "mlp": 0, "conv1": 1, "resnet6": 5, "resnet10": 9, "resnet14": 13, "vgg11": 8,
                      "resnet9": 8, "resnet18-cifar": 20}
    assert len(convs) == expected_convs[name]
    x, y = torch.randn(2, 6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (2, 6))
    grads = {}
    for strategy in ("loop", "vmap"):
        replicas = Replicas(name, [0, 1], width=8, strategy=strategy, dtype=torch.float64, conv="gemm" if strategy == "vmap" else "native")
        losses, _, step = replicas.train_step_grads(x, y)
        grads[strategy] = named_gradients(replicas, step)
        assert torch.isfinite(losses).all()
    for key, g in grads["loop"].items():
        assert torch.allclose(g, grads["vmap"][key], atol=1e-10), key
