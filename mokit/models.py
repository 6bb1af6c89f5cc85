"""The model zoo: plain functions registered by name (timm-style).

    create_model("lenet5")                       # MNIST shape by default
    create_model("cifar_cnn", width=0.5)         # knobs are keyword arguments
    list_models()

Every builder takes `in_shape=(C, H, W)` and `num_classes`, so any model runs on any dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "elu": nn.ELU,
}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make `fn` buildable by name through create_model."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kw) -> nn.Module:
    """Build the registered model `name` with keyword knobs `kw`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return _REGISTRY[name](**kw)


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _positive_ints(name: str, values: Sequence[int]) -> list[int]:
    values = list(values)
    if not all(isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(f"{name} must be positive integers, got {values}")
    return values


def _flat_size(features: nn.Module, in_shape: Sequence[int]) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *in_shape)).numel()


# ---------------------------------------------------------------------------------------------
# Configurable builders (also what NAS samples from)
# ---------------------------------------------------------------------------------------------

@register_model
def mlp(hidden: Sequence[int] = (300, 100), in_shape=(1, 28, 28), num_classes: int = 10,
        activation: str = "relu", dropout: float = 0.0) -> nn.Sequential:
    """Flatten -> [Linear -> act (-> dropout)] per hidden width -> Linear."""
    hidden = _positive_ints("hidden widths", hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(in_shape).prod())
    for h in hidden:
        layers += [nn.Linear(width, h), _activation(activation)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register_model
def convnet(channels: Sequence[int] = (32, 64), kernel_sizes: Sequence[int] | int = 3,
            pool: Sequence[bool] | bool = True, dense: Sequence[int] = (128,),
            activation: str = "relu", batchnorm: bool = True, global_pool: bool = False,
            in_shape=(1, 28, 28), num_classes: int = 10) -> nn.Sequential:
    """[Conv(k, 'same') -> (BN) -> act (-> MaxPool 2)] per stage -> flatten or GAP -> MLP head."""
    channels = _positive_ints("channels", channels)
    ks = [kernel_sizes] * len(channels) if isinstance(kernel_sizes, int) else list(kernel_sizes)
    pools = [pool] * len(channels) if isinstance(pool, bool) else list(pool)
    if len(ks) != len(channels) or len(pools) != len(channels):
        raise ValueError(f"kernel_sizes {ks} and pool {pools} need one entry per conv ({len(channels)})")
    if any(k not in (1, 3, 5, 7) for k in ks):
        raise ValueError(f"kernel sizes must be 1, 3, 5 or 7, got {ks}")
    layers: list[nn.Module] = []
    c_in, size = in_shape[0], min(in_shape[1:])
    for c, k, p in zip(channels, ks, pools):
        layers.append(nn.Conv2d(c_in, c, k, padding=k // 2, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(c))
        layers.append(_activation(activation))
        if p and size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if global_pool else [nn.Flatten()]
    features = nn.Sequential(*layers)
    width = _flat_size(features, in_shape)
    head: list[nn.Module] = []
    for h in _positive_ints("dense widths", dense):
        head += [nn.Linear(width, h), _activation(activation)]
        width = h
    head.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers, *head)


# ---------------------------------------------------------------------------------------------
# The classic models
# ---------------------------------------------------------------------------------------------

@register_model
def lenet300(hidden: Sequence[int] = (300, 100), in_shape=(1, 28, 28), num_classes: int = 10) -> nn.Sequential:
    """LeNet-300-100 (LeCun et al. 1998): 784-300-100-10 fully connected, 266k weights."""
    return mlp(hidden=hidden, in_shape=in_shape, num_classes=num_classes)


@register_model
def lenet5(channels: Sequence[int] = (20, 50), hidden: int = 500, in_shape=(1, 28, 28),
           num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 as in Caffe and Han et al. 2015: conv5(20)-pool-conv5(50)-pool-fc500-fc10, 431k weights."""
    c1, c2 = _positive_ints("channels", channels)
    features = nn.Sequential(
        nn.Conv2d(in_shape[0], c1, 5), nn.ReLU(), nn.MaxPool2d(2),   # (B, c1, 12, 12) on MNIST
        nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),            # (B, c2, 4, 4)
        nn.Flatten())
    return nn.Sequential(*features, nn.Linear(_flat_size(features, in_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


@register_model
def cifar_cnn(width: float = 1.0, in_shape=(3, 32, 32), num_classes: int = 10) -> nn.Sequential:
    """A small VGG-style CIFAR CNN: three conv-BN-ReLU-pool stages (32, 64, 128 x width), GAP, fc."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    chans = [max(1, round(c * width)) for c in (32, 64, 128)]
    return convnet(channels=chans, kernel_sizes=3, pool=True, dense=(), global_pool=True,
                   in_shape=in_shape, num_classes=num_classes)


class BasicBlock(nn.Module):
    """Residual block: conv3-BN-ReLU-conv3-BN + shortcut (1x1 conv when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016): stem, three stages of `blocks` BasicBlocks, GAP, fc."""

    def __init__(self, blocks: Sequence[int] = (1, 1, 1), width: int = 16, in_shape=(3, 32, 32),
                 num_classes: int = 10):
        super().__init__()
        blocks = _positive_ints("blocks per stage", blocks)
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        stages, c_in = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2 ** i
            stages.append(nn.Sequential(*[BasicBlock(c_in if j == 0 else c_out, c_out,
                                                     stride=2 if (i > 0 and j == 0) else 1)
                                          for j in range(n)]))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@register_model
def cifar_resnet(blocks: Sequence[int] = (1, 1, 1), width: int = 16, in_shape=(3, 32, 32),
                 num_classes: int = 10) -> ResNet:
    """A small CIFAR ResNet: blocks=(1,1,1) is ResNet-8, (3,3,3) is ResNet-20."""
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    return ResNet(blocks=blocks, width=width, in_shape=in_shape, num_classes=num_classes)
