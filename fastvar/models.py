"""Architectures, written without torchvision.

Any callable that returns an nn.Module is a model (model_spec); the zoo below is registered by name.
`resnet18` reproduces torchvision's layout, parameter names and initialisation:
built under `torch.manual_seed(s)` it draws the same random numbers in the same
order as `torchvision.models.resnet18(num_classes=10)` does, so the seed study's
models are the ones its authors trained.
"""
import functools
import hashlib
import importlib
import inspect
import re
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError, Param
from .language_models import CharGRU, CharTransformer

RESNET18_LAYERS = {"stem": "maxpool", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "stage4": "layer4"}


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


class GlobalMaxPool(nn.Module):
    """nn.AdaptiveMaxPool2d(1) as a max over each channel's pixels: the same values, and the gradient to
    the same (first) maximum, bit for bit on CPUs; its backward is a scatter, deterministic on CUDA,
    where adaptive_max_pool2d_backward throws under deterministic algorithms (fastvar.engine.determinism)."""

    def forward(self, x):
        return x.flatten(2).max(2).values[..., None, None]


class ResNet9(nn.Module):
    """The small ResNet of Jordan's 60k-run study; PyTorch's default init, output scaled by 0.2."""

    def __init__(self, num_classes=10, width=64):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            conv_bn_relu(3, w), conv_bn_relu(w, 2 * w, kernel=5, stride=2, padding=2), Residual(2 * w),
            conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2), Residual(4 * w),
            conv_bn_relu(4 * w, 2 * w, padding=0), GlobalMaxPool(), nn.Flatten())
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


@dataclass(frozen=True)
class ModelSpec:
    """How fastvar builds a model: `build(width, num_classes)` returns the nn.Module; `width` is the
    default width (None: the model takes none); `feature_layers` names the layers CKA reads (module
    paths; None: every top-level child)."""
    build: Callable
    width: int | None = None
    feature_layers: dict | None = None


MODELS = {  # the built-in zoo; register_model adds to it
    "linear": ModelSpec(lambda width, num_classes: Linear(num_classes), 0, {}),
    "mlp": ModelSpec(lambda width, num_classes: MLP(num_classes, width), 512, {"hidden": "hidden"}),
    "conv1": ModelSpec(lambda width, num_classes: Conv1(num_classes, width), 64, {"stem": "conv"}),
    "resnet6": ModelSpec(lambda width, num_classes: CifarResNet(num_classes, width, stages=1), 16,
                         {"stem": "relu", "stage1": "layer1"}),
    "resnet10": ModelSpec(lambda width, num_classes: CifarResNet(num_classes, width, stages=2), 16,
                          {"stem": "relu", "stage1": "layer1", "stage2": "layer2"}),
    "resnet14": ModelSpec(lambda width, num_classes: CifarResNet(num_classes, width, stages=3), 16,
                          {"stem": "relu", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3"}),
    "resnet18": ModelSpec(lambda width, num_classes: ResNet18(num_classes, width), 64, RESNET18_LAYERS),
    "resnet18-cifar": ModelSpec(lambda width, num_classes: ResNet18(num_classes, width, cifar_stem=True), 64,
                                RESNET18_LAYERS),
    "resnet9": ModelSpec(lambda width, num_classes: ResNet9(num_classes, width), 64,
                         {"stem": "net.0", "stage1": "net.2", "stage2": "net.5", "stage3": "net.6"}),
    "vgg11": ModelSpec(lambda width, num_classes: VGG11(num_classes, width), 64,
                       {"stem": "features.2", "stage1": "features.3", "stage2": "features.7", "stage3": "features.14",
                        "stage4": "features.21", "stage5": "features.28"}),
    # character-level language models (fastvar.language_models): num_classes is the vocabulary
    "char-transformer": ModelSpec(lambda width, num_classes: CharTransformer(num_classes, width), 64,
                                  {"embed": "embed", "block1": "blocks.0", "block2": "blocks.1"}),
    "char-gru": ModelSpec(lambda width, num_classes: CharGRU(num_classes, width), 128, {"embed": "embed"}),
}


BUILTIN_MODELS = frozenset(MODELS)
LANGUAGE_MODELS = frozenset({"char-transformer", "char-gru"})  # of the built-in ones, those that read tokens


def register_model(name, factory, *, feature_layers=None):
    """Make `factory` (called with no arguments, it returns an nn.Module) available by `name`, to
    Study(model=name) and to the command line's --model. `feature_layers`: the layers CKA reads
    ({name: module path}; default: every top-level child)."""
    if not callable(factory):
        raise ConfigError(f"register_model({name!r}, ...) needs a callable that returns an nn.Module")
    MODELS[name] = ModelSpec(lambda width, num_classes: factory(), None, feature_layers)


def model_spec(model):
    """A model's ModelSpec: `model` is a registered name, an import path `package.module:factory`, or a
    callable that returns an nn.Module."""
    if callable(model):
        return ModelSpec(lambda width, num_classes: model())
    if model in MODELS:
        return MODELS[model]
    module, sep, attribute = str(model).partition(":")
    if not sep:
        raise ConfigError(f"unknown {{}} {model!r}; choose from {', '.join(MODELS)}, or give an import path "
                          f"such as my_package.nets:make_net", Param("model"))
    try:
        factory = functools.reduce(getattr, attribute.split("."), importlib.import_module(module))
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import the model factory {model!r}: {e}") from None
    if not callable(factory):
        raise ConfigError(f"{model!r} is not callable; it must return an nn.Module")
    return ModelSpec(lambda width, num_classes: factory())


def model_name(model):
    """What a study's config records of a model: its registered name or import path, or for a
    callable its module and qualified name."""
    return model if isinstance(model, str) else f"{model.__module__}:{model.__qualname__}"


def architecture_digest(model):
    """A digest of a model's parameter and buffer names and shapes, built on the meta device (no
    memory, no arithmetic): what a config records of a model of the user's own beside its name."""
    module = built_on_meta(model)
    shapes = [(name, tuple(t.shape)) for name, t in module.state_dict().items()]
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]


def has_own_dropout(model):
    """Whether `model` (as model_spec takes it) drops out anywhere (built on the meta device): a dropout
    layer of any kind with p > 0, nn.MultiheadAttention's dropout, a Hugging Face config's dropout
    setting above 0 (its attention dropout is functional: no layer shows it), or a forward of the
    user's own that calls a functional dropout (read from its source: no input shape is known here)."""
    return any(drops_out(m) for m in built_on_meta(model).modules())


FUNCTIONAL_DROPOUT_CALL = re.compile(r"\b(?:F|functional)\.(?:dropout[123]?d?|alpha_dropout|feature_alpha_dropout)\("
                                     r"|\bdropout_p\s*=")


def drops_out(module):
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    config = getattr(module, "config", None)
    settings = vars(config) if hasattr(config, "__dict__") else {}
    if any(("dropout" in name or "pdrop" in name) and isinstance(value, float) and value > 0
           for name, value in settings.items()):
        return True
    return type(module).__module__.split(".")[0] not in ("torch", "transformers") and calls_dropout(type(module))


@functools.cache
def calls_dropout(cls):
    """Whether a module class's own forward calls a functional dropout (F.dropout and its forms, or
    attention with a dropout_p), by its source; False where no source can be read."""
    try:
        return bool(FUNCTIONAL_DROPOUT_CALL.search(inspect.getsource(cls.forward)))
    except (OSError, TypeError):
        return False


def built_on_meta(model):
    """The model's structure, built on the meta device (no memory, no arithmetic). A factory that loads
    weights loads nothing there; torch's warning that it does not is not the user's concern. One that
    refuses the meta device (transformers' from_pretrained) is built as it is."""
    spec = model_spec(model)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*meta parameter.*")
        try:
            with torch.device("meta"):
                return spec.build(spec.width, 10)
        except RuntimeError:  # a factory that must load real weights (from_pretrained refuses meta): built
            return spec.build(spec.width, 10)


def classifier_name(model):
    """The module path of the classifier, the model's last nn.Linear: where dropout (the dropout
    source) acts and where CKA reads the pooled features and the logits."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier for dropout and CKA to act on")
    return linears[-1]


def feature_layers(model, spec):
    """The layers CKA reads, {name: module path}: the spec's, else every top-level child but the classifier."""
    if spec.feature_layers is not None:
        return spec.feature_layers
    head = classifier_name(model)
    return {name: name for name, _ in model.named_children() if name != head}


def set_training(module, mode=True):
    """`module` and everything in it in training (or eval) mode, without calling an overridden `train`:
    a Hugging Face model loaded with from_pretrained re-prepares its kernels for its device there,
    which the meta device of the replicas' structure refuses. Returns `module`."""
    for m in module.modules():
        m.training = mode
    return module


def build_model(model, *, init_seed, width=None, num_classes=10, dtype=torch.float32, dropout=None):
    """Model `model` (as model_spec takes it) initialised from `init_seed` alone, on the CPU (the same
    weights on every device): exactly `torch.manual_seed(init_seed); factory()`, then cast to `dtype`.

    The global generator is forked, so building a model never disturbs any other source of randomness.
    With `dropout`, the classifier's input is dropped out in training (see `add_dropout`).
    """
    spec = model_spec(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        module = spec.build(width or spec.width, num_classes)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"the model factory {model_name(model)} returned {type(module).__name__}, not an nn.Module")
    if dropout:
        add_dropout(module)
    return module.to(dtype)


def add_dropout(model):
    """Dropout on the classifier's input, with its masks given from outside as the buffer
    `<classifier>.dropout_mask` (0 or 1/(1-p) per feature, B×features), so that each replica draws
    them from its own dropout seed (fastvar.sources.DropoutMasks). Eval mode leaves the input as it is."""
    head = model.get_submodule(classifier_name(model))
    head.register_buffer("dropout_mask", torch.ones(0))
    head.register_forward_pre_hook(apply_dropout_mask)


def apply_dropout_mask(module, inputs):
    if module.training:
        return (inputs[0] * module.dropout_mask,)
    return None
