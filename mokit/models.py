"""The model zoo: plain functions registered by name (timm-style).

    create_model("lenet5")                       # MNIST shape by default
    create_model("cifar_cnn", width=0.5)         # knobs are keyword arguments
    list_models()

Every builder takes `in_shape=(C, H, W)` and `num_classes`, so any model runs on any dataset.
Knobs are checked before anything is built (ValueError / TypeError naming the knob): widths are
integers in [1, MAX_WIDTH], at most MAX_LAYERS per list, at most MAX_PARAMS parameters in all, and
create_model makes one dry forward pass on in_shape (eval mode, no gradients, no BatchNorm update) so
a model whose feature maps shrink to nothing is refused at build time, naming the shape.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import TypeVar

import torch
from torch import nn

from . import validate

MAX_WIDTH = 4096            # channels / units of one layer
MAX_LAYERS = 64             # entries of one list knob (hidden, channels, dense, widths, blocks)
MAX_PARAMS = 100_000_000    # 400 MB of float32 weights: a typo, not a course model
MAX_INPUT = 2 ** 22         # elements of one example (3 x 1024 x 1024 fits)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "elu": nn.ELU,
}


ModelFn = TypeVar("ModelFn", bound=Callable[..., nn.Module])


def register_model(fn: ModelFn) -> ModelFn:
    """Decorator: make `fn` buildable by name through create_model."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kw) -> nn.Module:
    """Build the registered model `name` with keyword knobs `kw`.

    Unknown knobs are a TypeError naming them and the builder's knobs; the built model makes one
    dry forward pass on its in_shape (see the module docstring) before it is returned."""
    fn = validate.choice("model", name, _REGISTRY)
    params = inspect.signature(fn).parameters
    unknown = [k for k in kw if k not in params]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(f"unknown keyword {unknown[0]!r} for model {name!r}; valid: {', '.join(params)}")
    model = fn(**kw)
    in_shape = kw.get("in_shape", params["in_shape"].default if "in_shape" in params else None)
    if in_shape is not None and in_shape is not inspect.Parameter.empty:
        _dry_run(model, f"{name}({', '.join(f'{k}={v!r}' for k, v in kw.items())})", in_shape)
    return model


def _dry_run(model: nn.Module, what: str, in_shape: Sequence[int]) -> None:
    """One forward pass of a zero example in eval mode (BatchNorm statistics untouched)."""
    was = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    except RuntimeError as e:
        raise ValueError(f"{what} does not run on input shape {tuple(in_shape)}: {e}") from None
    finally:
        for m, t in was.items():
            m.training = t


def _activation(name: str) -> nn.Module:
    return validate.choice("activation", name, ACTIVATIONS)()




def _positive_ints(name: str, values: Sequence[int], *, high: int = MAX_WIDTH) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, torch.Size)):
        raise TypeError(f"{name} must be a sequence of positive integers, got {values!r}")
    values = list(values)
    if len(values) > MAX_LAYERS:
        raise ValueError(f"{name} must have at most {MAX_LAYERS} entries, got {len(values)}")
    for v in values:
        validate.integer(name, v, low=1, high=high, what=f"each entry of {values!r}")
    return [int(v) for v in values]


def check_in_shape(in_shape, *, image: bool = True, max_elements: int = MAX_INPUT) -> tuple[int, ...]:
    """(C, H, W) of positive integers (image=True: conv models), or any non-empty shape (MLPs, and
    the metrics that take any model), of at most `max_elements` elements per example."""
    if isinstance(in_shape, (str, bytes)) or not isinstance(in_shape, (Sequence, torch.Size)):
        raise TypeError(f"in_shape must be a sequence of positive integers, got {in_shape!r}")
    shape = tuple(validate.integer("in_shape", d, low=1, what=f"each dimension of {tuple(in_shape)!r}")
                  for d in in_shape)
    if image and len(shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W) for this model, got {shape}")
    if not shape:
        raise ValueError("in_shape must have at least one dimension, got ()")
    if math.prod(shape) > max_elements:
        raise ValueError(f"in_shape {shape} has {math.prod(shape):,} elements per example; at most {max_elements:,}")
    return shape


def check_num_classes(num_classes) -> int:
    """A positive number of classes (at most 100,000)."""
    return validate.integer("num_classes", num_classes, low=1, high=100_000)


def _check_params(what: str, n: int) -> None:
    if n > MAX_PARAMS:
        raise ValueError(f"{what} would have about {n:,} parameters; at most {MAX_PARAMS:,}")


def _flat_size(features: nn.Sequential, in_shape: Sequence[int], what: str = "the model") -> int:
    """Elements per example after `features`, from one zero example run in eval mode.

    Eval mode: BatchNorm on a single example in train mode has no batch statistics (and would move
    the running statistics); here it uses its running ones, untouched. A layer that gets a feature
    map too small for it, or one that shrinks it to 0, is a ValueError naming the input shape."""
    was = {m: m.training for m in features.modules()}
    features.eval()
    x = torch.zeros(1, *in_shape)
    try:
        with torch.no_grad():
            for i, layer in enumerate(features):
                try:
                    x = layer(x)
                except RuntimeError as e:
                    raise ValueError(f"{what} does not fit input shape {tuple(in_shape)}: layer {i} "
                                     f"({layer}) gets a {tuple(x.shape[1:])} feature map: {e}") from None
                if x.numel() == 0:
                    raise ValueError(f"{what} on input shape {tuple(in_shape)}: the feature map shrinks "
                                     f"to {tuple(x.shape[1:])} after layer {i} ({layer})")
    finally:
        for m, t in was.items():
            m.training = t
    return x[0].numel()


# ---------------------------------------------------------------------------------------------
# Configurable builders (also what NAS samples from)
# ---------------------------------------------------------------------------------------------

@register_model
def mlp(hidden: Sequence[int] = (300, 100), in_shape=(1, 28, 28), num_classes: int = 10,
        activation: str = "relu", dropout: float = 0.0) -> nn.Sequential:
    """Flatten -> [Linear -> act (-> dropout)] per hidden width -> Linear."""
    hidden = _positive_ints("hidden widths", hidden)
    in_shape, num_classes = check_in_shape(in_shape, image=False), check_num_classes(num_classes)
    validate.choice("activation", activation, ACTIVATIONS)
    dropout = validate.number("dropout", dropout, low=0, high=1, high_open=True)
    sizes = [math.prod(in_shape), *hidden, num_classes]
    _check_params(f"mlp(hidden={hidden}, in_shape={in_shape})", sum((a + 1) * b for a, b in pairwise(sizes)))
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(in_shape)
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
    dense = _positive_ints("dense widths", dense)
    in_shape, num_classes = check_in_shape(in_shape), check_num_classes(num_classes)
    validate.choice("activation", activation, ACTIVATIONS)
    batchnorm, global_pool = validate.flag("batchnorm", batchnorm), validate.flag("global_pool", global_pool)
    ks = [kernel_sizes] * len(channels) if isinstance(kernel_sizes, int) and not isinstance(kernel_sizes, bool) \
        else _positive_ints("kernel_sizes", kernel_sizes if isinstance(kernel_sizes, Sequence) else [kernel_sizes])
    pools = [pool] * len(channels) if type(pool).__name__ in ("bool", "bool_") else \
        ([validate.flag("pool", p) for p in pool] if isinstance(pool, Sequence) and not isinstance(pool, str)
         else [validate.flag("pool", pool)])
    if len(ks) != len(channels) or len(pools) != len(channels):
        raise ValueError(f"kernel_sizes {ks} and pool {pools} need one entry per conv ({len(channels)})")
    if any(isinstance(k, bool) or k not in (1, 3, 5, 7) for k in ks):
        raise ValueError(f"kernel sizes must be 1, 3, 5 or 7, got {ks}")
    conv_params = sum(a * b * k * k + 2 * b for a, b, k in zip([in_shape[0], *channels], channels, ks))
    _check_params(f"convnet(channels={channels})", conv_params)
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
    width = _flat_size(features, in_shape, f"convnet(channels={channels})")
    sizes = [width, *dense, num_classes]
    _check_params(f"convnet(channels={channels}, dense={dense}) on {in_shape}",
                  conv_params + sum((a + 1) * b for a, b in pairwise(sizes)))
    head: list[nn.Module] = []
    for h in dense:
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
    channels = _positive_ints("channels", channels)
    if len(channels) != 2:
        raise ValueError(f"channels must be two conv widths (c1, c2), got {channels}")
    c1, c2 = channels
    hidden = validate.integer("hidden", hidden, low=1, high=MAX_WIDTH)
    in_shape, num_classes = check_in_shape(in_shape), check_num_classes(num_classes)
    features = nn.Sequential(
        nn.Conv2d(in_shape[0], c1, 5), nn.ReLU(), nn.MaxPool2d(2),   # (B, c1, 12, 12) on MNIST
        nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),            # (B, c2, 4, 4)
        nn.Flatten())
    flat = _flat_size(features, in_shape, f"lenet5(channels={tuple(channels)})")
    _check_params(f"lenet5(channels={tuple(channels)}, hidden={hidden}) on {in_shape}", (flat + 1) * hidden)
    return nn.Sequential(*features, nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


@register_model
def cifar_cnn(width: float = 1.0, in_shape=(3, 32, 32), num_classes: int = 10) -> nn.Sequential:
    """A small VGG-style CIFAR CNN: three conv-BN-ReLU-pool stages (32, 64, 128 x width), GAP, fc."""
    width = validate.number("width", width, low=0, high=MAX_WIDTH / 128, low_open=True)
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
    blocks = _positive_ints("blocks per stage", blocks, high=MAX_LAYERS)
    if len(blocks) > 8:
        raise ValueError(f"blocks per stage must list at most 8 stages, got {len(blocks)}")
    width = validate.integer("width", width, low=1, high=MAX_WIDTH // 2 ** max(len(blocks) - 1, 0))
    in_shape, num_classes = check_in_shape(in_shape), check_num_classes(num_classes)
    _check_params(f"cifar_resnet(blocks={blocks}, width={width})",
                  sum(n * 18 * (width * 2 ** i) ** 2 for i, n in enumerate(blocks)))
    return ResNet(blocks=blocks, width=width, in_shape=in_shape, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------
# The fast CIFAR-10 net (airbench-style: Keller Jordan's airbench / hlb-CIFAR10, shrunk for a CPU)
# ---------------------------------------------------------------------------------------------

class Scale(nn.Module):
    """Multiply by a fixed constant: y = x * factor (tempers the logits, as airbench does with 1/9)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"




def _fast_bn(c: int) -> nn.BatchNorm2d:
    """BatchNorm with fast-moving statistics and a fixed scale of 1 (only the shift is trained, airbench).

    A positive fixed scale also means max-pooling commutes with it, which keeps BN folding exact."""
    bn = nn.BatchNorm2d(c, momentum=0.4)
    bn.weight.requires_grad_(False)
    return bn


@register_model
def cifar_net(widths: Sequence[int] = (32, 64, 128), in_shape=(3, 32, 32), num_classes: int = 10,
              logit_scale: float = 1 / 9) -> nn.Sequential:
    """The fast CIFAR net: a 2x2 whitening conv, then per width Conv3-BN-ReLU-MaxPool-Conv3-BN-ReLU, max-pool, fc.

    Shapes on CIFAR-10 at widths (32, 64, 128): (B, 3, 32, 32) -> whiten (B, 24, 31, 31) -> (B, 32, 15, 15)
    -> (B, 64, 7, 7) -> (B, 128, 3, 3) -> global max (B, 128) -> (B, 10). Plain modules only, so every
    technique (pruning, BN folding, int8, export) sees ordinary Conv2d / BatchNorm2d / Linear layers.
    The first conv's weight is frozen: `whiten_init(model, images)` sets it from the data (the recipe does).
    """
    widths = _positive_ints("widths", widths)
    in_shape, num_classes = check_in_shape(in_shape), check_num_classes(num_classes)
    logit_scale = validate.number("logit_scale", logit_scale, low=0, low_open=True)
    _check_params(f"cifar_net(widths={widths})",
                  sum(9 * a * b + 9 * b * b for a, b in zip([8 * in_shape[0], *widths], widths)))
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], 8 * in_shape[0], 2), nn.ReLU()]   # 2 x C*2*2 filters
    c_in = 8 * in_shape[0]
    for c in widths:
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), _fast_bn(c), nn.ReLU(), nn.MaxPool2d(2),
                   nn.Conv2d(c, c, 3, padding=1, bias=False), _fast_bn(c), nn.ReLU()]
        c_in = c
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes, bias=False),
               Scale(logit_scale)]
    model = nn.Sequential(*layers)
    model[0].weight.requires_grad_(False)         # the whitening filters are set from data, not trained
    for m in model.modules():                     # identity-initialised convs train faster (airbench)
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            nn.init.dirac_(m.weight.data[:m.in_channels])
    return model


# ---------------------------------------------------------------------------------------------
# A small vision Transformer (every projection an nn.Linear, so per-layer compression reaches it)
# ---------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention with one Linear for q, k, v and one for the output projection."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # x: (B, T, D)
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, d/H)
        y = nn.functional.scaled_dot_product_attention(q, k, v)    # softmax(q k^T / sqrt(d/H)) v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP of mlp_ratio x width."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Patches (a stride-p conv) + learned positions -> blocks -> LayerNorm -> mean over tokens -> Linear."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, width: int, depth: int, heads: int,
                 patch: int, mlp_ratio: int):
        super().__init__()
        c, h, w = in_shape
        self.patch = nn.Conv2d(c, width, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, (h // patch) * (w // patch), width) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # x: (B, C, H, W)
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos   # (B, T, D), T = (H / p) * (W / p)
        return self.head(self.norm(self.blocks(x)).mean(1))      # (B, classes)


@register_model
def vit(width: int = 64, depth: int = 4, heads: int = 4, patch: int = 4, mlp_ratio: int = 2, in_shape=(1, 28, 28),
        num_classes: int = 10) -> ViT:
    """A small ViT (Dosovitskiy et al. 2021): patch 4, width 64, 4 pre-norm blocks of 4 heads, MLP x2, 139k
    weights on MNIST; mean-pooled tokens instead of a class token."""
    width = validate.integer("width", width, low=1, high=MAX_WIDTH)
    depth = validate.integer("depth", depth, low=1, high=64)
    heads = validate.integer("heads", heads, low=1, high=width)
    if width % heads:
        raise ValueError(f"width {width} must be a multiple of heads {heads} (each head gets width / heads features)")
    mlp_ratio = validate.integer("mlp_ratio", mlp_ratio, low=1, high=16)
    in_shape, num_classes = check_in_shape(in_shape), check_num_classes(num_classes)
    patch = validate.integer("patch", patch, low=1, high=min(in_shape[1:]))
    model = ViT(in_shape, num_classes, width, depth, heads, patch, mlp_ratio)
    _check_params(f"vit(width={width}, depth={depth}) on {in_shape}", sum(p.numel() for p in model.parameters()))
    return model


@torch.no_grad()
def whiten_init(model: nn.Sequential, images: torch.Tensor, eps: float = 5e-4) -> nn.Sequential:
    """Set the first conv (2x2) to whiten 2x2 patches of `images` (N, C, H, W), and freeze its weight.

    With patch covariance  Σ = V diag(λ) Vᵀ,  the filters are  ±Vᵀ / sqrt(λ + eps):  every output channel
    has unit variance and the channels are decorrelated, so the first trained layer starts from whitened input.
    """
    conv = model[0]
    if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (2, 2)):
        raise ValueError(f"whiten_init needs a model whose first layer is a 2x2 Conv2d, got {conv}")
    c = images.shape[1]
    patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)            # (N, C, H-1, W-1, 2, 2)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * 4)     # (N*(H-1)*(W-1), C*2*2)
    patches = patches - patches.mean(0)
    eigenvalues, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    filters = (vectors.T / torch.sqrt(eigenvalues + eps)[:, None]).view(c * 4, c, 2, 2)
    if conv.out_channels != 2 * c * 4:
        raise ValueError(f"the whitening conv needs {2 * c * 4} output channels, has {conv.out_channels}")
    conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight))
    conv.weight.requires_grad_(False)
    return model
