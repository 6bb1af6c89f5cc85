"""Quantization: the arithmetic written out, fake-quant + QAT, k-means sharing, real int8 kernels.

    qt = quantize_tensor(w, num_bits=4, axis=0)            # per-channel affine 4-bit
    fake_quantize_model(model, num_bits=4)                 # weights now snap to a 4-bit grid (STE)
    share = kmeans_share(model, num_bits=2)                # 4 shared values per layer, trainable
    int8 = quantize_int8(model, calib_data)                # real int8 kernels (x86 / fbgemm)

Linear quantization maps a real x to an integer q in [qmin, qmax] and back:
    q = clamp(round(x / scale) + zero_point, qmin, qmax),     x_hat = scale * (q - zero_point)
affine:    q in [0, 2^b - 1],                scale = (max - min) / (2^b - 1), zero_point = round(-min / scale)
symmetric: q in [-(2^(b-1) - 1), 2^(b-1) - 1], scale = max|x| / (2^(b-1) - 1),  zero_point = 0
Per-tensor uses one (scale, zero_point); per-channel one pair per slice along `axis`.
"""

from __future__ import annotations

import copy
import heapq
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import validate

if TYPE_CHECKING:
    from .data import TensorData

# ---------------------------------------------------------------------------------------------
# 1. The arithmetic
# ---------------------------------------------------------------------------------------------

def check_bits(num_bits, symmetric: bool = False) -> int:
    """num_bits must be an integer in 1..16 (symmetric needs >= 2: one level each side of zero)."""
    validate.integer("num_bits", num_bits, low=1, high=16)
    if symmetric and num_bits < 2:
        raise ValueError(f"symmetric quantization needs num_bits >= 2 (got {num_bits}): 1 bit has no "
                         f"level for zero; use symmetric=False for 1-bit")
    return num_bits


def qrange(num_bits: int, symmetric: bool = False) -> tuple[int, int]:
    """(qmin, qmax): [0, 2^b - 1] affine, [-(2^(b-1) - 1), 2^(b-1) - 1] symmetric."""
    check_bits(num_bits, symmetric)
    if symmetric:
        return -(2 ** (num_bits - 1) - 1), 2 ** (num_bits - 1) - 1
    return 0, 2 ** num_bits - 1


def _check_axis(x: torch.Tensor, axis: int | None) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis {axis!r} does not exist for a tensor of shape {tuple(x.shape)}; "
                         f"use None (per-tensor) or an integer in [{-x.dim()}, {x.dim() - 1}]")
    return axis % x.dim()




def _check_tensor(name: str, x, *, finite: bool = True, empty_ok: bool = False) -> torch.Tensor:
    """x must be a real tensor; NaN / inf refused (they give out-of-range integers or NaN scales)."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be a real-valued tensor, got dtype {x.dtype}")
    if not empty_ok and x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): there is no range to quantize")
    if finite and x.is_floating_point() and x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite: {bad} of its {x.numel()} values are NaN or inf")
    return x


def _reduce(x: torch.Tensor, axis: int | None, fn: Callable) -> torch.Tensor:
    """fn over all elements (axis None) -> (); or over all but `axis` -> (C,)."""
    if axis is None:
        return fn(x.flatten(), 0)
    return fn(x.transpose(0, axis).flatten(1), 1)


def _broadcast(v: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """A per-channel vector (C,) reshaped to broadcast against x along `axis`."""
    if axis is None or v.dim() == 0:
        return v
    shape = [1] * x.dim()
    shape[axis] = -1
    return v.view(shape)


def compute_qparams(xmin: torch.Tensor, xmax: torch.Tensor, num_bits: int = 8,
                    symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) mapping [xmin, xmax] (widened to include 0) onto the integer grid."""
    qmin, qmax = qrange(num_bits, symmetric)
    device = xmin.device if torch.is_tensor(xmin) else None           # stay on the range's device
    xmin = torch.as_tensor(xmin, dtype=torch.float32, device=device).clamp(max=0)
    xmax = torch.as_tensor(xmax, dtype=torch.float32, device=device).clamp(min=0)
    if symmetric:
        scale = torch.maximum(-xmin, xmax) / qmax
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (xmax - xmin) / (qmax - qmin)
        zero_point = (qmin - torch.round(xmin / scale.clamp(min=1e-12))).clamp(qmin, qmax).int()
    return scale.clamp(min=1e-12), zero_point


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, num_bits: int = 8,
             symmetric: bool = False, axis: int | None = None) -> torch.Tensor:
    """q = clamp(round(x / scale) + zero_point, qmin, qmax), as int32."""
    qmin, qmax = qrange(num_bits, symmetric)
    s, z = _broadcast(scale, x, axis), _broadcast(zero_point, x, axis)
    return (torch.round(x / s) + z).clamp(qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               axis: int | None = None) -> torch.Tensor:
    """x_hat = scale * (q - zero_point)."""
    return _broadcast(scale, q, axis) * (q.float() - _broadcast(zero_point, q, axis))


# Calibration: how the range [xmin, xmax] is chosen. Each returns (xmin, xmax), () or (C,).
# quantize_tensor passes num_bits and symmetric to every calibrator; any other keyword must be one
# of the calibrator's own options (a misspelt `percentil=99` is refused, never ignored).
CALIBRATOR_OPTIONS: dict[str, tuple[str, ...]] = {"minmax": (), "percentile": ("percentile",),
                                                   "mse": ("grid",)}


def _calib_kw(method: str, kw: dict) -> None:
    valid = CALIBRATOR_OPTIONS[method]
    for k in kw:
        if k not in ("num_bits", "symmetric", *valid):
            raise ValueError(f"unknown keyword {k!r} for calibrate={method!r}; valid: "
                             f"{', '.join(valid) if valid else 'none (minmax has no options)'}")


def minmax_range(x: torch.Tensor, axis: int | None = None, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The full observed range: clips nothing, wastes levels on outliers."""
    _calib_kw("minmax", kw)
    return _reduce(x, axis, lambda t, d: t.amin(d)), _reduce(x, axis, lambda t, d: t.amax(d))


def percentile_range(x: torch.Tensor, axis: int | None = None, percentile: float = 99.9,
                     **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The (100 - p)th and p-th percentiles: outliers beyond them are clipped."""
    _calib_kw("percentile", kw)
    p = validate.number("percentile", percentile, low=50, high=100, low_open=True) / 100
    t = x.float() if x.numel() <= 2 ** 24 else \
        x.flatten()[torch.randperm(x.numel(), device=x.device)[:2 ** 24]].float()
    return (_reduce(t, axis, lambda v, d: torch.quantile(v, 1 - p, dim=d)),
            _reduce(t, axis, lambda v, d: torch.quantile(v, p, dim=d)))


def mse_range(x: torch.Tensor, axis: int | None = None, num_bits: int = 8, symmetric: bool = False,
              grid: int = 50, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Search clip ratios r in (0, 1]: the range r * [min, max] whose quantization MSE is lowest.

    grid: how many ratios (1/grid, 2/grid, ..., 1), an integer in [1, 10000]."""
    _calib_kw("mse", kw)
    grid = validate.integer("grid", grid, low=1, high=10_000)
    check_bits(num_bits, symmetric)
    lo, hi = minmax_range(x, axis)
    best_err = torch.full_like(lo, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    for r in torch.linspace(1.0 / grid, 1.0, grid, device=x.device):
        s, z = compute_qparams(lo * r, hi * r, num_bits, symmetric)
        err = (dequantize(quantize(x, s, z, num_bits, symmetric, axis), s, z, axis) - x) ** 2
        err = _reduce(err, axis, lambda t, d: t.mean(d))
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, lo * r, best_lo), torch.where(better, hi * r, best_hi)
    return best_lo, best_hi


CALIBRATORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "minmax": minmax_range, "percentile": percentile_range, "mse": mse_range,
}


def _check_calibrate(calibrate) -> Callable:
    """The calibrator: a callable, or a name in CALIBRATORS."""
    if callable(calibrate):
        return calibrate
    method = CALIBRATORS.get(calibrate) if isinstance(calibrate, str) else None
    if method is None:
        raise ValueError(f"unknown calibrate {calibrate!r} (the calibration); valid: {', '.join(CALIBRATORS)}, "
                         f"or a callable")
    return method


@dataclass
class QTensor:
    """Integers q with the (scale, zero_point) that give them meaning; dequantize() maps back."""
    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    num_bits: int
    symmetric: bool
    axis: int | None

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.q, self.scale, self.zero_point, self.axis)


def quantize_tensor(x: torch.Tensor, num_bits: int = 8, *, symmetric: bool = False,
                    axis: int | None = None, calibrate: str | Callable = "minmax", **calib_kw) -> QTensor:
    """Quantize x to num_bits: range from `calibrate` (name in CALIBRATORS or a callable), then q.

    x must be a non-empty, finite tensor (NaN / inf refused: they have no place on an integer grid).
    calib_kw are the named calibrator's options (CALIBRATOR_OPTIONS); unknown keywords are refused.
    """
    _check_tensor("x", x)
    check_bits(num_bits, symmetric)
    symmetric = validate.flag("symmetric", symmetric)
    axis = _check_axis(x, axis)
    method = _check_calibrate(calibrate)
    if not callable(calibrate):
        _calib_kw(calibrate, calib_kw)
    return _quantize_checked(x, num_bits, symmetric, axis, method, calib_kw)


def _quantize_checked(x: torch.Tensor, num_bits: int, symmetric: bool, axis: int | None,
                      method: Callable, calib_kw: dict) -> QTensor:
    """quantize_tensor's work, on arguments already checked (FakeQuant checks once, not per forward)."""
    x = x.detach().float()
    xmin, xmax = method(x, axis=axis, num_bits=num_bits, symmetric=symmetric, **calib_kw)
    scale, zero_point = compute_qparams(xmin, xmax, num_bits, symmetric)
    return QTensor(quantize(x, scale, zero_point, num_bits, symmetric, axis), scale, zero_point,
                   num_bits, symmetric, axis)


def quantization_error(x: torch.Tensor, x_hat: torch.Tensor) -> dict:
    """mse, mean and max |x - x_hat|, and SQNR = 10 log10(sum x^2 / sum (x - x_hat)^2) in dB."""
    err = (x.float() - x_hat.float())
    noise = float((err ** 2).sum())
    sqnr = 10 * math.log10(float((x.float() ** 2).sum()) / noise) if noise > 0 else float("inf")
    return {"mse": float((err ** 2).mean()), "mean_abs": float(err.abs().mean()),
            "max_abs": float(err.abs().max()), "sqnr_db": sqnr}


def _check_linear_args(x_q, w_q, bias, out_scale, out_zero_point) -> tuple[float, int]:
    for name, t in (("x_q", x_q), ("w_q", w_q)):
        if not isinstance(t, QTensor):
            raise TypeError(f"{name} must be a QTensor (from quantize_tensor), got {type(t).__name__}")
    if x_q.q.dim() != 2 or w_q.q.dim() != 2 or x_q.q.shape[1] != w_q.q.shape[1]:
        raise ValueError(f"x_q (N, I) and w_q (O, I) must share I, got shapes {tuple(x_q.q.shape)} "
                         f"and {tuple(w_q.q.shape)}")
    if x_q.axis is not None or w_q.axis not in (None, 0):
        raise ValueError(f"x_q must be per-tensor and w_q per-tensor or per output channel (axis 0), got "
                         f"axes {x_q.axis} and {w_q.axis}")
    if bias is not None:
        _check_tensor("bias", bias)
        if tuple(bias.shape) != (w_q.q.shape[0],):
            raise ValueError(f"bias must have shape ({w_q.q.shape[0]},), got {tuple(bias.shape)}")
    return (validate.number("out_scale", out_scale, low=0, low_open=True),
            validate.integer("out_zero_point", out_zero_point, low=0, high=255))


def fixed_point_multiplier(multiplier, bits: int = 31) -> tuple[torch.Tensor, torch.Tensor]:
    """(m0, shift), integers with multiplier ~= m0 * 2^-shift and m0 in [2^(bits-1), 2^bits).

    The int8 rescale M = s_x s_w / s_y as a fixed-point number: M = M0 * 2^-n with M0 in [0.5, 1)
    stored as the integer m0 = round(M0 * 2^bits) (Q31 for bits=31, gemmlowp's choice), so that
    a kernel rescales with one integer multiply and one shift. Relative error <= 2^-bits.
    multiplier: a positive finite number or tensor (one per output channel) below 2^bits.
    """
    bits = validate.integer("bits", bits, low=2, high=31, what="bits of the fixed-point mantissa")
    m = torch.as_tensor(multiplier, dtype=torch.float64)
    if m.numel() == 0 or not bool(torch.isfinite(m).all()) or bool((m <= 0).any()) or bool((m >= 2.0 ** bits).any()):
        raise ValueError(f"multiplier must be finite, > 0 and < 2^{bits}, got {multiplier!r}")
    mantissa, exponent = torch.frexp(m)                                 # m = mantissa * 2^exponent, [0.5, 1)
    m0 = torch.round(mantissa * 2.0 ** bits).long()
    carry = m0 == 2 ** bits                                             # the mantissa rounded up to 1.0
    m0, exponent = torch.where(carry, m0 // 2, m0), exponent.long() + carry.long()
    return m0, bits - exponent


def rescale_fixed_point(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """round(acc * m0 * 2^-shift) in integers only: (acc * m0 + 2^(shift-1)) >> shift (half rounds up).

    acc: integer accumulators (..., O) within int32, as a kernel holds them; m0, shift from
    fixed_point_multiplier (scalars or one per output channel O). The product fits int64.
    """
    if acc.dtype.is_floating_point:
        if not bool(torch.isfinite(acc).all()) or not torch.equal(acc, acc.round()):
            raise ValueError("acc must hold integers (a float accumulator must be integer-valued)")
        acc = acc.long()
    acc = acc.long()
    if acc.numel() and int(acc.abs().max()) >= 2 ** 31:
        raise ValueError(f"acc must fit an int32 accumulator, got |acc| up to {int(acc.abs().max())}")
    m0, shift = torch.as_tensor(m0).long().to(acc.device), torch.as_tensor(shift).long().to(acc.device)
    if bool((shift < 1).any()) or bool((shift > 62).any()):
        raise ValueError(f"shift must be in [1, 62], got {shift.tolist()}")
    return (acc * m0 + (1 << (shift - 1))) >> shift


def int8_linear(x_q: QTensor, w_q: QTensor, bias: torch.Tensor | None, out_scale: float,
                out_zero_point: int, *, fixed_point: bool = False) -> torch.Tensor:
    """A quantized linear layer in integer arithmetic (uint8 activations, int8 weights).

    acc[n, o] = sum_i (qx[n, i] - zx) * (qw[o, i] - zw[o]) + round(bias[o] / (sx * sw[o]))   (int32)
    qy = clamp(round(acc * M[o]) + zy, 0, 255),  M[o] = sx * sw[o] / sy                     (uint8)

    fixed_point=False rescales with M in float64; True as integer kernels do, M = m0 * 2^-shift
    (fixed_point_multiplier, rescale_fixed_point): no float operation after the scales are set.
    Runs on the inputs' device. The accumulator is int64 on the CPU; GPUs have no integer matrix
    product in PyTorch, so there it is float64, which is still exact: every partial sum is an
    integer far below 2^53 (|term| <= 255 * 255, so up to 2^37 terms).
    """
    out_scale, out_zero_point = _check_linear_args(x_q, w_q, bias, out_scale, out_zero_point)
    fixed_point = validate.flag("fixed_point", fixed_point)
    sw = w_q.scale if w_q.scale.dim() else w_q.scale.expand(w_q.q.shape[0])
    zw = w_q.zero_point if w_q.zero_point.dim() else w_q.zero_point.expand(w_q.q.shape[0])
    acc_dtype = torch.int64 if x_q.q.device.type == "cpu" else torch.float64
    xi = (x_q.q - x_q.zero_point).to(acc_dtype)                         # (N, I)
    wi = (w_q.q - zw[:, None]).to(acc_dtype)                            # (O, I)
    acc = xi @ wi.T                                                     # (N, O) exact integers
    if bias is not None:
        acc = acc + torch.round(bias / (x_q.scale * sw)).to(acc_dtype)
    multiplier = (x_q.scale * sw / out_scale).double()                  # M, one per output channel
    if fixed_point:
        y = rescale_fixed_point(acc, *fixed_point_multiplier(multiplier.cpu()))
    else:
        y = torch.round(acc.double() * multiplier)                      # the one float rescale
    return (y + out_zero_point).clamp(0, 255).to(torch.int32)


# The engine of the reference kernel. qnnpack accumulates u8 x s8 products in int32 straight away, so
# it is exact for full-range uint8 activations. fbgemm / x86 on a CPU without VNNI (AVX2 only) sums
# adjacent products pairwise in a saturating int16 (vpmaddubsw): 255 * 127 + 255 * 127 = 64770 clips
# to 32767. PyTorch's own x86/fbgemm qconfigs avoid that with reduce_range=True (7-bit activations);
# a 0..255 activation here would not, and one clipped pair moved an output by 36 steps.
REFERENCE_ENGINE = "qnnpack"


def torch_int8_linear(x_q: QTensor, w_q: QTensor, bias: torch.Tensor | None, out_scale: float,
                      out_zero_point: int, *, engine: str | None = None) -> torch.Tensor:
    """The same layer through PyTorch's quantized Linear kernel (the reference): uint8 integers.

    engine: the quantized engine to run (default REFERENCE_ENGINE, qnnpack: int32 accumulation,
    exact on full-range uint8 input; falls back to ENGINE where qnnpack is not built). "x86" /
    "fbgemm" on an AVX2-only CPU saturate int16 pair sums and can differ by many steps when
    activations use all 8 bits (their qconfigs use reduce_range=True, 7-bit activations, for this).
    PyTorch's int8 kernels are CPU kernels: the layer runs on the CPU, the result returns to x's
    device. The process-wide quantized engine is restored afterwards.
    """
    out_scale, out_zero_point = _check_linear_args(x_q, w_q, bias, out_scale, out_zero_point)
    supported = torch.backends.quantized.supported_engines
    if engine is None:
        engine = REFERENCE_ENGINE if REFERENCE_ENGINE in supported else ENGINE
    validate.choice("engine", engine, [e for e in supported if e != "none"])
    device = x_q.q.device
    x_q, w_q = _cpu_qtensor(x_q), _cpu_qtensor(w_q)
    bias = None if bias is None else bias.detach().float().cpu()
    w = w_q.dequantize()
    with _quiet_ao(), _engine(engine):
        layer = torch.ao.nn.quantized.Linear(w.shape[1], w.shape[0])
        if w_q.axis is None:
            qw = torch.quantize_per_tensor(w, float(w_q.scale), int(w_q.zero_point), torch.qint8)
        else:
            qw = torch.quantize_per_channel(w, w_q.scale.double(), w_q.zero_point.long(), w_q.axis,
                                            torch.qint8)
        layer.set_weight_bias(qw, bias)
        layer.scale, layer.zero_point = float(out_scale), int(out_zero_point)
        x = x_q.dequantize()
        qx = torch.quantize_per_tensor(x, float(x_q.scale), int(x_q.zero_point), torch.quint8)
        return layer(qx).int_repr().to(torch.int32).to(device)


def _cpu_qtensor(t: QTensor) -> QTensor:
    return QTensor(t.q.cpu(), t.scale.cpu(), t.zero_point.cpu(), t.num_bits, t.symmetric, t.axis)


# ---------------------------------------------------------------------------------------------
# 2. Fake quantization with a straight-through gradient, on a whole model; QAT
# ---------------------------------------------------------------------------------------------

QUANTIZABLE = (nn.Linear, nn.Conv2d)


def quantizable_layers(model: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    """Linear and Conv2d layers by name: the layers whose weights mokit quantizes."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)}


def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_layers(model: nn.Module, layers: Iterable[str] | None) -> dict[str, nn.Linear | nn.Conv2d]:
    _check_model(model)
    if isinstance(layers, str):
        raise TypeError(f"layers must be a list of layer names, not the string {layers!r}")
    found = quantizable_layers(model)
    if layers is None:
        if not found:
            raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer to quantize")
        return found
    named = dict(model.named_modules())
    out: dict[str, nn.Linear | nn.Conv2d] = {}
    for name in layers:
        if name not in named:
            raise ValueError(f"no layer named {name!r} in layers; quantizable layers: {', '.join(found)}")
        layer = named[name]
        if not isinstance(layer, QUANTIZABLE):
            raise TypeError(f"cannot quantize layer {name!r} of type {type(layer).__name__}; "
                            f"supported: Linear, Conv2d")
        out[name] = layer
    return out


class FakeQuant(nn.Module):
    """x -> dequantize(quantize(x)) in the forward pass; identity gradient in the backward (STE).

    Used as a parametrization of a weight, the model trains its float weights while every
    forward pass sees the quantized ones: x + (x_hat - x).detach() has value x_hat, gradient 1.
    """

    def __init__(self, num_bits: int = 8, *, symmetric: bool = False, axis: int | None = None,
                 calibrate: str | Callable = "minmax"):
        super().__init__()
        self.num_bits, self.symmetric = check_bits(num_bits, symmetric), validate.flag("symmetric", symmetric)
        if axis is not None:
            validate.integer("axis", axis, what="or None")
        self.axis, self.calibrate = axis, calibrate
        self._method = _check_calibrate(calibrate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = _quantize_checked(x, self.num_bits, self.symmetric, _check_axis(x, self.axis),
                                  self._method, {}).dequantize()
        return x + (x_hat - x).detach()

    def extra_repr(self) -> str:
        return f"num_bits={self.num_bits}, symmetric={self.symmetric}, axis={self.axis}"


def fake_quantize_model(model: nn.Module, num_bits: int = 8, *, per_channel: bool = True,
                        symmetric: bool = False, calibrate: str | Callable = "minmax",
                        layers: Iterable[str] | None = None) -> nn.Module:
    """Put a FakeQuant on the weight of every Linear/Conv2d (in place): simulate num_bits weights.

    Training the model afterwards is quantization-aware training (QAT). Per-channel = one scale
    per output channel (axis 0). `strip_quantization(model)` bakes the quantized weights in.
    """
    check_bits(num_bits, symmetric)
    per_channel, symmetric = validate.flag("per_channel", per_channel), validate.flag("symmetric", symmetric)
    _check_calibrate(calibrate)
    targets = _check_layers(model, layers)
    for name, m in targets.items():
        _check_tensor(f"the weight of layer {name!r}", m.weight.detach())
    strip_quantization(model, bake=False)
    for m in targets.values():
        parametrize.register_parametrization(
            m, "weight", FakeQuant(num_bits, symmetric=symmetric, axis=0 if per_channel else None,
                                   calibrate=calibrate))
    return model


def strip_quantization(model: nn.Module, *, bake: bool = True) -> nn.Module:
    """Remove FakeQuant / Codebook parametrizations; bake=True keeps the quantized values."""
    _check_model(model)
    bake = validate.flag("bake", bake)
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=bake)
    return model


def quantized_copy(model: nn.Module, num_bits: int, **kw) -> nn.Module:
    """A copy of model whose weights are rounded to num_bits (post-training, weights only)."""
    return strip_quantization(fake_quantize_model(copy.deepcopy(model), num_bits, **kw))


# ---------------------------------------------------------------------------------------------
# 3. k-means weight sharing (Deep Compression, Han et al. 2016)
# ---------------------------------------------------------------------------------------------

def kmeans_1d(values: torch.Tensor, k: int, *, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars with linear initialisation over [min, max] (Han et al.'s best).

    Returns (centroids (k,), index of each value's centroid), on the values' device.
    Empty clusters keep their centroid.
    """
    _check_tensor("values", values, empty_ok=True)
    if values.numel() == 0:
        raise ValueError("k-means needs at least one value")
    k = validate.integer("k", k, low=1, high=2 ** 16)
    iters = validate.integer("iters", iters, low=0, high=100_000)
    v = values.detach().flatten().float()
    lo, hi = v.min(), v.max()                                            # stay on the device: no sync
    centroids = lo + (hi - lo) * torch.linspace(0, 1, k, device=v.device)
    for _ in range(iters):
        idx = torch.bucketize(v, (centroids[1:] + centroids[:-1]) / 2)   # nearest of sorted centroids
        sums = torch.zeros(k, device=v.device).index_add_(0, idx, v)
        counts = torch.bincount(idx, minlength=k).float()
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        new, _ = new.sort()
        if torch.allclose(new, centroids):
            break
        centroids = new
    return centroids, torch.bucketize(v, (centroids[1:] + centroids[:-1]) / 2)


class Codebook(nn.Module):
    """weight = centroids[index] * mask: the layer stores k shared values and an index per weight.

    The centroids are a trainable parameter; autograd sums the gradients of all weights sharing a
    centroid, which is exactly Deep Compression's codebook fine-tuning rule.
    """

    index: torch.Tensor                                  # buffers, registered in __init__
    mask: torch.Tensor

    def __init__(self, weight: torch.Tensor, num_bits: int, mask: torch.Tensor | None = None):
        super().__init__()
        mask = (weight != 0).float() if mask is None else mask.float()
        kept = weight[mask.bool()]
        centroids, idx = kmeans_1d(kept if kept.numel() else weight.flatten(), 2 ** num_bits)
        index = torch.zeros(weight.numel(), dtype=torch.long, device=weight.device)
        index[mask.flatten().bool()] = idx if kept.numel() else index[:0]
        self.num_bits = num_bits
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("index", index.view_as(weight))
        self.register_buffer("mask", mask.to(weight.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.centroids[self.index] * self.mask


def kmeans_share(model: nn.Module, num_bits: int = 4, *, layers: Iterable[str] | None = None,
                 masks: dict | None = None) -> dict[str, Codebook]:
    """Replace each layer's weights by 2^num_bits shared values (in place); zeros stay zero.

    Train the model afterwards to fine-tune the codebooks (only centroids and biases move).
    Returns {layer name: Codebook}; strip_quantization(model) bakes the shared weights in.
    """
    check_bits(num_bits)
    targets = _check_layers(model, layers)
    if masks is not None:
        if not isinstance(masks, dict):
            raise TypeError(f"masks must be a dict {{layer name: mask}}, got {type(masks).__name__}")
        for name, mask in masks.items():
            if name not in targets:
                raise ValueError(f"masks names layer {name!r}, which is not quantized here; layers: "
                                 f"{', '.join(targets)}")
            _check_tensor(f"masks[{name!r}]", mask)
            if tuple(mask.shape) != tuple(targets[name].weight.shape):
                raise ValueError(f"masks[{name!r}] has shape {tuple(mask.shape)}, the weight "
                                 f"{tuple(targets[name].weight.shape)}")
    for name, m in targets.items():
        _check_tensor(f"the weight of layer {name!r}", m.weight.detach())
    strip_quantization(model, bake=False)
    books = {}
    for name, m in targets.items():
        mask = None if masks is None or name not in masks else masks[name]
        w = m.weight.detach()                                   # k-means runs where the layer lives
        book = Codebook(w, num_bits, None if mask is None else mask.to(w.device))
        parametrize.register_parametrization(m, "weight", book, unsafe=True)
        parametrizations = cast(nn.ModuleDict, m.parametrizations)      # made by register_parametrization
        cast(parametrize.ParametrizationList, parametrizations.weight).original.requires_grad_(False)
        books[name] = book
    return books


# ---------------------------------------------------------------------------------------------
# 4. Deep Compression storage: sparse positions + shared-weight indices, Huffman coded
# ---------------------------------------------------------------------------------------------

def _symbol(s) -> int:
    if torch.is_tensor(s) and s.numel() == 1 and not s.is_floating_point() and s.dtype != torch.bool:
        return int(s)
    return validate.integer("symbols", s, what="each symbol an integer")


def huffman_code(symbols: Iterable[int]) -> dict[int, str]:
    """Optimal prefix code {symbol: bit string} for the symbols' frequencies (at least one symbol,
    each an integer)."""
    if isinstance(symbols, (str, bytes, dict)) or not isinstance(symbols, Iterable):
        raise TypeError(f"symbols must be an iterable of integers, got {type(symbols).__name__}")
    freq = Counter(_symbol(s) for s in symbols)
    if not freq:
        raise ValueError("symbols is empty: huffman_code needs at least one symbol")
    if len(freq) == 1:
        return {next(iter(freq)): "0"}
    heap = [(n, i, {s: ""}) for i, (s, n) in enumerate(sorted(freq.items()))]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        n1, _, a = heapq.heappop(heap)
        n2, _, b = heapq.heappop(heap)
        merged = {s: "0" + c for s, c in a.items()} | {s: "1" + c for s, c in b.items()}
        heapq.heappush(heap, (n1 + n2, tie, merged))
        tie += 1
    return heap[0][2]


def huffman_encode(symbols: list[int]) -> tuple[bytes, dict[int, str]]:
    """(packed bit stream, code) for symbols; decode with huffman_decode."""
    code = huffman_code(symbols)
    bits = "".join(code[s] for s in symbols)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)), code


def huffman_decode(payload: bytes, code: dict[int, str], count: int) -> list[int]:
    """The first `count` symbols of a stream written by huffman_encode."""
    count = validate.integer("count", count, low=0)
    if not isinstance(payload, (bytes, bytearray)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if count == 0:
        return []
    inverse, out, cur = {c: s for s, c in code.items()}, [], ""
    for byte in payload:
        for bit in f"{byte:08b}":
            cur += bit
            if cur in inverse:
                out.append(inverse[cur])
                cur = ""
                if len(out) == count:
                    return out
    return out


def relative_positions(mask: torch.Tensor, index_bits: int) -> tuple[list[int], list[int]]:
    """Sparse storage as Han et al.: gaps between kept weights in index_bits-bit numbers.

    A gap larger than 2^index_bits - 1 is bridged by filler entries (gap max, value 'zero').
    Returns (gaps, is_filler) with one entry per stored weight or filler. index_bits: an integer
    in [1, 32] (0 bits could not bridge any gap: the loop would never end).
    """
    _check_tensor("mask", mask, empty_ok=True)
    top = 2 ** validate.integer("index_bits", index_bits, low=1, high=32) - 1
    gaps, filler, last = [], [], -1
    for p in torch.nonzero(mask.flatten()).flatten().tolist():
        gap = p - last
        while gap > top:
            gaps.append(top)
            filler.append(1)
            gap -= top
        gaps.append(gap)
        filler.append(0)
        last = p
    return gaps, filler


def deep_compression_size(model: nn.Module, books: dict[str, Codebook], *, index_bits: int = 5,
                          huffman: bool = True) -> dict:
    """Real bytes of the compressed weights, layer by layer, and of the float32 original.

    Per layer: relative positions (index_bits each, or Huffman coded), one cluster index per stored
    weight (num_bits each, or Huffman coded; fillers use cluster 0), the codebook (k float32),
    the code tables (1 byte per symbol for its code length: canonical Huffman), the bias (float32).
    """
    index_bits = validate.integer("index_bits", index_bits, low=1, high=32)
    huffman = validate.flag("huffman", huffman)
    layers = quantizable_layers(_check_model(model))
    if not isinstance(books, dict):
        raise TypeError(f"books must be a dict {{layer name: Codebook}} (from kmeans_share), "
                        f"got {type(books).__name__}")
    for name, book in books.items():
        if name not in layers:
            raise ValueError(f"books names layer {name!r}, not a Linear/Conv2d layer of the model; "
                             f"layers: {', '.join(layers)}")
        if not isinstance(book, Codebook):
            raise TypeError(f"books[{name!r}] must be a Codebook, got {type(book).__name__}")
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer to size")
    rows, total, dense = [], 0, 0
    for name, m in layers.items():
        w = m.weight.detach()
        dense_bytes = 4 * (w.numel() + (m.bias.numel() if m.bias is not None else 0))
        bias_bytes = 4 * (m.bias.numel() if m.bias is not None else 0)
        if name not in books:
            rows.append({"layer": name, "bytes": dense_bytes, "dense_bytes": dense_bytes})
            total, dense = total + dense_bytes, dense + dense_bytes
            continue
        book = books[name]
        gaps, filler = relative_positions(book.mask, index_bits)
        kept_idx = book.index.flatten()[book.mask.flatten().bool()].tolist()
        it = iter(kept_idx)
        idx = [0 if f else next(it) for f in filler]
        if huffman:
            pos_stream, pos_code = huffman_encode(gaps)
            idx_stream, idx_code = huffman_encode(idx)
            pos_bytes, idx_bytes = len(pos_stream) + len(pos_code), len(idx_stream) + len(idx_code)
        else:
            pos_bytes, idx_bytes = -(-len(gaps) * index_bits // 8), -(-len(idx) * book.num_bits // 8)
        codebook_bytes = 4 * book.centroids.numel()
        size = pos_bytes + idx_bytes + codebook_bytes + bias_bytes
        rows.append({"layer": name, "weights": w.numel(), "kept": len(kept_idx), "positions B": pos_bytes,
                     "indices B": idx_bytes, "codebook B": codebook_bytes, "bias B": bias_bytes,
                     "bytes": size, "dense_bytes": dense_bytes, "ratio": dense_bytes / size})
        total, dense = total + size, dense + dense_bytes
    return {"layers": rows, "bytes": total, "dense_bytes": dense, "ratio": dense / total}


# ---------------------------------------------------------------------------------------------
# 5. Real int8 inference through PyTorch's quantized kernels (x86 / fbgemm backend)
# ---------------------------------------------------------------------------------------------
# torch.ao.quantization (eager mode) is deprecated in favour of torchao's pt2e flow. We still use
# it because, measured on a 2-core CPU, it is what runs int8 faster than float32 here without
# torch.compile: its fbgemm/x86 kernels gave >= 1.5x at batch 256, while torchao's int8 path
# needs torch.compile to beat float32 (see benchmarks/quantization.py). Its deprecation warning
# is filtered inside mokit so learners see one explanation instead of a flood of warnings.

ENGINE = "x86"


@contextmanager
def _quiet_ao():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.ao")
        warnings.filterwarnings("ignore", message=".*reduce_range.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*must run observer before.*")   # load_int8's shell
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        yield


@contextmanager
def _engine(engine: str):
    """torch.backends.quantized.engine set to `engine` inside, and what it was restored after (even on error)."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _check_int8_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"quantize_int8 handles nn.Sequential models, got {type(model).__name__}")
    allowed = (nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.AvgPool2d,
               nn.AdaptiveAvgPool2d, nn.BatchNorm2d)
    for i, m in enumerate(model):
        if not isinstance(m, allowed):
            raise TypeError(f"cannot quantize layer {i} of type {type(m).__name__} to int8; supported: "
                            f"{', '.join(t.__name__ for t in allowed)}")


def _fusable(model: nn.Sequential) -> list[list[str]]:
    """[[conv, bn, relu], [linear, relu], ...] index groups that fuse into one int8 kernel."""
    groups, i = [], 0
    while i < len(model):
        if isinstance(model[i], (nn.Conv2d, nn.Linear)):
            g = [str(i)]
            if isinstance(model[i], nn.Conv2d) and i + 1 < len(model) and isinstance(model[i + 1], nn.BatchNorm2d):
                g.append(str(i + 1))
            if i + len(g) < len(model) and isinstance(model[i + len(g)], nn.ReLU):
                g.append(str(i + len(g)))
            if len(g) > 1:
                groups.append(g)
            i += len(g)
        else:
            i += 1
    return groups


def _check_calibration_data(data) -> None:
    if hasattr(data, "x"):
        return
    if isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable) or torch.is_tensor(data):
        raise TypeError(f"calibration data must be a TensorData or an iterable of batches (x or (x, y)), "
                        f"got {type(data).__name__}")


def _batches(data, batch_size: int) -> Iterable[torch.Tensor]:
    if hasattr(data, "x"):                                  # a TensorData
        return (data.x[i:i + batch_size] for i in range(0, len(data.x), batch_size))
    return (b[0] if isinstance(b, (tuple, list)) else b for b in data)


def prepare_int8(model: nn.Module, *, engine: str = ENGINE) -> nn.Module:
    """A float copy of model, fused (conv/linear + relu), wrapped in Quant/DeQuant stubs, observed."""
    from torch.ao import quantization as tq

    _check_int8_model(model)
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {engine!r} is not available here; available: "
                         f"{', '.join(torch.backends.quantized.supported_engines)}")
    with _quiet_ao(), _engine(engine):
        m = copy.deepcopy(model).cpu().eval()
        groups = _fusable(cast(nn.Sequential, m))         # _check_int8_model: a Sequential
        if groups:
            m = tq.fuse_modules(m, groups)
        wrapped = tq.QuantWrapper(m)
        wrapped.qconfig = tq.get_default_qconfig(engine)
        tq.prepare(wrapped, inplace=True)
    # convert_int8 packs the weights for the same engine (torch types Module.__setattr__ for tensors and
    # modules only; any value is allowed)
    wrapped.mokit_engine = engine  # type: ignore[assignment]
    return wrapped


def convert_int8(prepared: nn.Module) -> nn.Module:
    """Swap observed float modules for int8 modules (weights per-channel int8, activations uint8)."""
    from torch.ao import quantization as tq

    with _quiet_ao(), _engine(getattr(prepared, "mokit_engine", ENGINE)):
        return tq.convert(prepared.eval(), inplace=False)


@torch.no_grad()
def quantize_int8(model: nn.Module, data: TensorData | Iterable, *, num_batches: int = 20,
                  batch_size: int = 256,
                  engine: str = ENGINE) -> nn.Module:
    """Post-training static int8: calibrate activation ranges on real `data`, then convert.

    data: a TensorData or an iterable of (x, y) batches; the first num_batches batches are used.
    The result runs int8 kernels on the CPU; it takes and returns float tensors.
    """
    num_batches = validate.integer("num_batches", num_batches, low=1)
    batch_size = validate.integer("batch_size", batch_size, low=1)
    _check_calibration_data(data)
    prepared = prepare_int8(model, engine=engine)
    seen = 0
    for i, x in enumerate(_batches(data, batch_size)):
        if i >= num_batches:
            break
        prepared(x.cpu())
        seen += len(x)
    if seen == 0:
        raise ValueError("calibration data is empty: int8 activation ranges need at least one batch")
    return convert_int8(prepared)


def save_int8(model: nn.Module, path) -> int:
    """Save an int8 model's state dict atomically; returns the file size in bytes."""
    from .data import atomic_torch_save

    with _quiet_ao():
        return atomic_torch_save(model.state_dict(), path).stat().st_size


def load_int8(float_model: nn.Module, path, *, engine: str = ENGINE) -> nn.Module:
    """Rebuild an int8 model: prepare + convert float_model's architecture, load the saved state
    (weights_only=True)."""
    int8 = convert_int8(prepare_int8(float_model, engine=engine))
    from .data import safe_torch_load

    with _quiet_ao():
        int8.load_state_dict(safe_torch_load(path))
    return int8


def dynamic_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 (weights int8, activations quantized on the fly per batch): Linear layers only."""
    from torch.ao import quantization as tq

    with _quiet_ao(), _engine(ENGINE):
        return tq.quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def file_bytes(model: nn.Module) -> int:
    """Bytes of torch.save(model.state_dict()) - metrics.model_size, without torch.ao's warnings."""
    from .metrics import model_size

    with _quiet_ao():
        return model_size(model)["bytes"]


# ---------------------------------------------------------------------------------------------
# 6. Conv-BatchNorm folding, and int8 for any traceable model (torch.ao FX graph mode, x86)
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One Conv2d computing bn(conv(x)) in eval mode (running statistics), per output channel c:

        w'_c = w_c * gamma_c / sigma_c,   b'_c = beta_c + (b_c - mu_c) * gamma_c / sigma_c,
        sigma_c = sqrt(running_var_c + eps)   (b = 0 for a conv without bias)
    """
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"fold_conv_bn needs a Conv2d and a BatchNorm2d, got {type(conv).__name__} "
                        f"and {type(bn).__name__}")
    if bn.num_features != conv.out_channels or bn.running_var is None:
        raise ValueError(f"the BatchNorm ({bn.num_features} channels, running stats: "
                         f"{bn.running_var is not None}) does not fit the conv's {conv.out_channels} outputs")
    assert bn.running_mean is not None                 # registered with running_var (track_running_stats)
    factor = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded = copy.deepcopy(conv)
    folded.weight = nn.Parameter(conv.weight * factor.view(-1, 1, 1, 1))    # (O, I, kh, kw) * (O, 1, 1, 1)
    folded.bias = nn.Parameter(shift + (bias - bn.running_mean) * factor)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with every Conv2d -> BatchNorm2d pair of an nn.Sequential
    folded into one Conv2d (the BatchNorm becomes nn.Identity). Same outputs, fewer layers."""
    out = copy.deepcopy(model).eval()
    folded = 0
    for seq in [m for m in out.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i], seq[i + 1] = fold_conv_bn(conv, bn), nn.Identity()
                folded += 1
    if folded == 0:
        raise ValueError(f"{type(model).__name__} has no Conv2d followed by a BatchNorm2d to fold")
    return out


class ChannelsLastInput(nn.Module):
    """Feeds `inner` its input in channels_last (NHWC): the layout x86's int8 conv kernels run fastest."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


@torch.no_grad()
def quantize_int8_fx(model: nn.Module, data: TensorData | Iterable, *, num_batches: int = 20,
                     batch_size: int = 256,
                     engine: str = ENGINE) -> nn.Module:
    """Post-training static int8 through torch.ao's FX graph mode (x86 qconfig mapping).

    Unlike quantize_int8 (eager mode, plain Sequentials of supported layers), it traces the model
    and quantizes what the backend supports: convs with their BatchNorm and ReLU fused (BN folded),
    max-pools and linears in int8; anything else (a global max-pool, say) runs in float between a
    dequantize and a quantize. Calibrates on the first num_batches batches of `data`. The result runs
    on the CPU (int8 kernels are CPU kernels), takes and returns float tensors, and feeds conv nets
    channels_last input.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    _check_model(model)
    num_batches = validate.integer("num_batches", num_batches, low=1)
    batch_size = validate.integer("batch_size", batch_size, low=1)
    _check_calibration_data(data)
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {engine!r} is not available here; available: "
                         f"{', '.join(torch.backends.quantized.supported_engines)}")
    batches = iter(_batches(data, batch_size))
    first = next(batches, None)
    if first is None or len(first) == 0:
        raise ValueError("calibration data is empty: int8 activation ranges need at least one batch")
    with _quiet_ao(), _engine(engine):
        warnings.filterwarnings("ignore", message=".*fx.*")
        float_model = copy.deepcopy(model).cpu().eval()
        prepared = prepare_fx(float_model, get_default_qconfig_mapping(engine), (first[:2].cpu(),))
        prepared(first.cpu())
        for i, x in enumerate(batches, start=1):
            if i >= num_batches:
                break
            prepared(x.cpu())
        int8 = convert_fx(prepared)
    is_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return ChannelsLastInput(int8) if is_conv else int8
