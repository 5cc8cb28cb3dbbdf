"""Architectures, written without torchvision.

`resnet18` reproduces torchvision's layout, parameter names and initialisation:
built under `torch.manual_seed(s)` it draws the same random numbers in the same
order as `torchvision.models.resnet18(num_classes=10)` does, so the seed study's
models are the ones its authors trained.
"""
import torch
from torch import nn


def conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def conv1x1(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, downsample):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def make_stage(c_in, c_out, stride, blocks=2):
    # torchvision builds the shortcut before the block; the order of random draws follows it.
    downsample = None
    if stride != 1 or c_in != c_out:
        downsample = nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))
    layers = [BasicBlock(c_in, c_out, stride, downsample)]
    layers += [BasicBlock(c_out, c_out, 1, None) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet18(nn.Module):
    """torchvision's ResNet-18; `cifar_stem` swaps the 7x7/2 stem and max-pool for a 3x3/1 conv."""

    def __init__(self, num_classes=10, width=64, cifar_stem=False):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_stage(widths[0], widths[0], 1)
        self.layer2 = make_stage(widths[0], widths[1], 2)
        self.layer3 = make_stage(widths[1], widths[2], 2)
        self.layer4 = make_stage(widths[2], widths[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_like_torchvision(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def init_like_torchvision(model):
    """Kaiming-normal (fan-out) convs, BatchNorm 1/0; Linear keeps PyTorch's default init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class SubsampleShortcut(nn.Module):
    """Summers & Dinneen's shortcut: stride-2 subsampling, BatchNorm, then zero channels appended."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.extra = c_out - c_in

    def forward(self, x):
        x = self.bn(x[:, :, ::2, ::2])
        return torch.cat([x, x.new_zeros(x.shape[0], self.extra, *x.shape[2:])], dim=1)


class CifarResNet(nn.Module):
    """Summers & Dinneen's ResNets: 3x3 stem, `stages` stages of two basic blocks (widths w, 2w, 4w),
    the last BatchNorm of each residual branch initialised to zero. Three stages: their ResNet-14."""

    def __init__(self, num_classes=10, width=16, stages=3):
        super().__init__()
        widths = [width * 2 ** i for i in range(stages)]
        self.conv1 = conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        for i, c_out in enumerate(widths):
            c_in = widths[max(i - 1, 0)]
            shortcut = SubsampleShortcut(c_in, c_out) if i else None
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c_in, c_out, 2 if i else 1, shortcut),
                                                         BasicBlock(c_out, c_out, 1, None)))
        self.stages = stages
        self.fc = nn.Linear(widths[-1], num_classes)
        init_like_torchvision(self)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean((2, 3)))


def conv_bn_relu(c_in, c_out, kernel=3, stride=1, padding=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(nn.Module):
    """The small ResNet of Jordan's 60k-run study; PyTorch's default init, output scaled by 0.2."""

    def __init__(self, num_classes=10, width=64):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            conv_bn_relu(3, w), conv_bn_relu(w, 2 * w, kernel=5, stride=2, padding=2), Residual(2 * w),
            conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2), Residual(4 * w),
            conv_bn_relu(4 * w, 2 * w, padding=0), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * w, num_classes, bias=False)

    def forward(self, x):
        return 0.2 * self.fc(self.net(x))


class Linear(nn.Module):
    """The depth study's linear model: 3072 pixels to 10 logits."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


class MLP(nn.Module):
    """One hidden layer of `width` ReLU units."""

    def __init__(self, num_classes=10, width=512):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(3 * 32 * 32, width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.hidden(x.flatten(1)))


class Conv1(nn.Module):
    """One convolution (5x5, stride 2, `width` channels), ReLU, linear."""

    def __init__(self, num_classes=10, width=64):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, width, 5, stride=2, padding=2), nn.ReLU())
        self.fc = nn.Linear(width * 16 * 16, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


VGG11_LAYOUT = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")  # channels in units of width/1


class VGG11(nn.Module):
    """VGG-11 with BatchNorm, for 32x32 inputs (five poolings leave 1x1), width 64 at the first layer."""

    def __init__(self, num_classes=10, width=64):
        super().__init__()
        layers, c_in = [], 3
        for item in VGG11_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c_in, item * width, 3, padding=1), nn.BatchNorm2d(item * width), nn.ReLU()]
                c_in = item * width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


MODELS = {
    "linear": lambda width, num_classes: Linear(num_classes),
    "mlp": lambda width, num_classes: MLP(num_classes, width),
    "conv1": lambda width, num_classes: Conv1(num_classes, width),
    "resnet6": lambda width, num_classes: CifarResNet(num_classes, width, stages=1),
    "resnet10": lambda width, num_classes: CifarResNet(num_classes, width, stages=2),
    "resnet14": lambda width, num_classes: CifarResNet(num_classes, width, stages=3),
    "resnet18": lambda width, num_classes: ResNet18(num_classes, width),
    "resnet18-cifar": lambda width, num_classes: ResNet18(num_classes, width, cifar_stem=True),
    "resnet9": lambda width, num_classes: ResNet9(num_classes, width),
    "vgg11": lambda width, num_classes: VGG11(num_classes, width),
}
DEFAULT_WIDTH = {"linear": 0, "mlp": 512, "conv1": 64, "resnet6": 16, "resnet10": 16, "resnet14": 16,
                 "resnet18": 64, "resnet18-cifar": 64, "resnet9": 64, "vgg11": 64}
# Where representations are read for CKA: the stem's output and each stage's (module paths); the
# pooled features (the classifier's input) and the logits are read at `fc`, which every model has.
FEATURE_LAYERS = {
    "linear": {}, "mlp": {"hidden": "hidden"}, "conv1": {"stem": "conv"},
    "resnet6": {"stem": "relu", "stage1": "layer1"},
    "resnet10": {"stem": "relu", "stage1": "layer1", "stage2": "layer2"},
    "resnet14": {"stem": "relu", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3"},
    "resnet18": {"stem": "maxpool", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "stage4": "layer4"},
    "resnet9": {"stem": "net.0", "stage1": "net.2", "stage2": "net.5", "stage3": "net.6"},
    "vgg11": {"stem": "features.2", "stage1": "features.3", "stage2": "features.7", "stage3": "features.14",
              "stage4": "features.21", "stage5": "features.28"},
}
FEATURE_LAYERS["resnet18-cifar"] = FEATURE_LAYERS["resnet18"]


def build_model(name, *, init_seed, width=None, num_classes=10, dtype=torch.float32, dropout=None):
    """Model `name` initialised from `init_seed` alone, on the CPU (same weights on every device).

    The global generator is forked, so building a model never disturbs any other source of randomness.
    With `dropout`, the classifier's input is dropped out in training (see `add_dropout`).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = MODELS[name](width or DEFAULT_WIDTH[name], num_classes)
    if dropout:
        add_dropout(model)
    return model.to(dtype)


def add_dropout(model):
    """Dropout on the classifier's input, with its masks given from outside as the buffer
    `fc.dropout_mask` (0 or 1/(1-p) per feature, B×features), so that each replica draws them from its
    own dropout seed (fastvar.sources.DropoutMasks). Eval mode leaves the input as it is."""
    model.fc.register_buffer("dropout_mask", torch.ones(0))
    model.fc.register_forward_pre_hook(apply_dropout_mask)


def apply_dropout_mask(module, inputs):
    if module.training:
        return (inputs[0] * module.dropout_mask,)
    return None
