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


MODELS = {
    "resnet18": lambda width, num_classes: ResNet18(num_classes, width),
    "resnet18-cifar": lambda width, num_classes: ResNet18(num_classes, width, cifar_stem=True),
}


def build_model(name, *, init_seed, width=64, num_classes=10, dtype=torch.float32):
    """Model `name` initialised from `init_seed` alone, on the CPU (same weights on every device).

    The global generator is forked, so building a model never disturbs any other source of randomness.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = MODELS[name](width, num_classes)
    return model.to(dtype)
