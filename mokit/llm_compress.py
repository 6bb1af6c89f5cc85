"""Post-training compression of the LLM era, on one Linear weight at a time (W: (out, in), x: (n, in)).

    q = rtn(W, num_bits=3, group_size=32)                  # round to nearest, one scale per group of columns
    H = hessian(x)                                          # 2 X^T X from calibration inputs
    q = gptq(W, H, num_bits=3, group_size=32)               # GPTQ: quantize column by column, fix the rest
    s = smoothquant_scales(x.abs().amax(0), W, alpha=0.5)   # SmoothQuant: (x / s) @ (W * s).T == x @ W.T
    mask = sparsegpt(W, H, n=2, m=4).mask                   # SparseGPT 2:4 with the same error compensation
    packed = pack_int4(codes)                               # two 4-bit codes per byte

Every function works on plain tensors and returns new ones (the inputs are left alone), so each can be
checked on a hand-made matrix against its definition; a model-level wrapper is a loop over Linear layers.
References: GPTQ (Frantar et al. 2022), AWQ (Lin et al. 2023), SmoothQuant (Xiao et al. 2023),
LLM.int8() (Dettmers et al. 2022), SparseGPT (Frantar & Alistarh 2023), Wanda (Sun et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import validate
from .quantize import compute_qparams, quantize_tensor

__all__ = ["GroupQuant", "SparseResult", "activation_fake_quant", "awq_scales", "compress_linears", "gptq",
           "groupwise_quantize", "hessian", "int8_outlier_matmul", "linear_inputs", "load_int4", "pack_int4", "rtn",
           "save_int4", "smoothquant_scales", "sparsegpt", "unpack_int4", "wanda_scores"]

ACTIVATION_MODES = ("per_tensor", "per_token")


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------

def _weight(w) -> torch.Tensor:
    if not torch.is_tensor(w) or w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"weight must be a 2-D float tensor (out, in), got "
                         f"{tuple(w.shape) if torch.is_tensor(w) else type(w).__name__}")
    if w.numel() == 0 or not torch.isfinite(w).all():
        raise ValueError(f"weight {tuple(w.shape)} must be non-empty and finite (no NaN or inf)")
    return w


def _bits(num_bits) -> int:
    return validate.integer("num_bits", num_bits, low=1, high=8)


def _group(group_size, columns: int) -> int:
    """group_size None (one group per row) or a positive divisor of the weight's columns."""
    if group_size is None:
        return columns
    g = validate.integer("group_size", group_size, low=1)
    if columns % g:
        raise ValueError(f"group_size {g} does not divide the weight's {columns} columns; use a divisor of "
                         f"{columns} or None (one group per row)")
    return g


def _calibration(x, columns: int) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != columns:
        raise ValueError(f"calibration inputs must be a 2-D tensor (n, {columns}), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if len(x) == 0:
        raise ValueError("calibration inputs are empty: give at least one row")
    if not torch.isfinite(x).all():
        raise ValueError("calibration inputs must be finite (no NaN or inf)")
    return x


def _hessian_like(h, columns: int) -> torch.Tensor:
    if not torch.is_tensor(h) or tuple(h.shape) != (columns, columns):
        raise ValueError(f"H must be a ({columns}, {columns}) tensor (hessian(x) of inputs with {columns} features), "
                         f"got {tuple(h.shape) if torch.is_tensor(h) else type(h).__name__}")
    if not torch.isfinite(h).all():
        raise ValueError("H must be finite (no NaN or inf)")
    return h


# ---------------------------------------------------------------------------------------------
# 1. Round to nearest, group-wise
# ---------------------------------------------------------------------------------------------

@dataclass
class GroupQuant:
    """Integer codes (out, in) in [0, 2^bits - 1], and one scale and zero point per (row, group)."""
    codes: torch.Tensor          # uint8 (out, in)
    scale: torch.Tensor          # (out, in / group_size)
    zero: torch.Tensor           # (out, in / group_size), integer-valued floats
    num_bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        """w_hat = scale * (codes - zero), each group with its own scale and zero."""
        s = self.scale.repeat_interleave(self.group_size, dim=1)
        z = self.zero.repeat_interleave(self.group_size, dim=1)
        return s * (self.codes.float() - z)


def _qparams(w: torch.Tensor, num_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min-max scale and zero point of each row of w (..., k): quantize.compute_qparams."""
    scale, zero = compute_qparams(w.amin(-1), w.amax(-1), num_bits)
    return scale.to(w.dtype), zero.to(w.dtype)


def _round(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, num_bits: int) -> torch.Tensor:
    """The codes of w: clamp(round(w / scale) + zero, 0, 2^bits - 1)."""
    return (torch.round(w / scale) + zero).clamp(0, 2 ** num_bits - 1)


def groupwise_quantize(w: torch.Tensor, num_bits: int = 4, group_size: int | None = None) -> GroupQuant:
    """Round to nearest with one min-max (scale, zero) per group of `group_size` consecutive columns of a row."""
    w = _weight(w)
    num_bits, g = _bits(num_bits), _group(group_size, w.shape[1])
    rows = w.detach().float().reshape(-1, g)                                 # (out * groups, g): one per group
    q = quantize_tensor(rows, num_bits, axis=0)                              # min-max per row, as everywhere
    groups = (w.shape[0], w.shape[1] // g)
    return GroupQuant(q.q.reshape(w.shape).to(torch.uint8), q.scale.reshape(groups),
                      q.zero_point.reshape(groups).float(), num_bits, g)


def rtn(w: torch.Tensor, num_bits: int = 4, group_size: int | None = None) -> torch.Tensor:
    """The round-to-nearest weight (dequantized, like w): groupwise_quantize(...).dequantize()."""
    return groupwise_quantize(w, num_bits, group_size).dequantize().to(w.dtype)


# ---------------------------------------------------------------------------------------------
# 2. GPTQ
# ---------------------------------------------------------------------------------------------

def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n of calibration inputs x (n, in): the Hessian of the layer's squared output error
    sum ||x W^T - x W_hat^T||^2 / n with respect to each row of W_hat."""
    if not torch.is_tensor(x) or x.dim() != 2:
        raise ValueError(f"calibration inputs must be a 2-D tensor (n, in), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    x = _calibration(x, x.shape[1]).double()
    return (2 * x.T @ x / len(x)).float()


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1 (= U^T U): row i of U holds what
    quantizing column i does to the columns after it."""
    h = h.double().clone()
    h += damp * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


def _prepare(w, h, damp) -> tuple[torch.Tensor, torch.Tensor, float]:
    w = _weight(w)
    h = _hessian_like(h, w.shape[1])
    damp = validate.number("damp", damp, low=0, high=1, low_open=True)
    w, h = w.detach().double().clone(), h.detach().double().clone()
    dead = torch.diag(h) == 0                                  # inputs that were always 0: any weight will do
    h[dead, dead] = 1
    w[:, dead] = 0
    return w, h, damp


def gptq(w: torch.Tensor, h: torch.Tensor, num_bits: int = 4, group_size: int | None = None, *,
         damp: float = 0.01, block_size: int = 128, act_order: bool = False) -> torch.Tensor:
    """GPTQ: quantize W's columns one at a time and move each column's rounding error onto the columns not
    yet quantized, weighted by the inverse Hessian, so the layer's output on the calibration inputs changes
    as little as possible. Returns the dequantized weight (like w).

    Per column i (U: upper Cholesky factor of the damped H^-1):
        q_i = Q(w_i);  e = (w_i - q_i) / U_ii;  w_j -= e * U_ij for every later column j.
    Lazy blocks: the updates inside a block of `block_size` columns are applied at once to the columns after it.
    act_order: quantize columns in order of decreasing H_ii (inputs with the largest energy first)."""
    num_bits = _bits(num_bits)
    g = _group(group_size, w.shape[1] if torch.is_tensor(w) and w.dim() == 2 else 1)
    block_size = validate.integer("block_size", block_size, low=1)
    validate.flag("act_order", act_order)
    work, h, damp = _prepare(w, h, damp)
    columns = work.shape[1]
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(columns)
    work, h = work[:, perm], h[perm][:, perm]
    u = _inverse_cholesky(h, damp)
    q = torch.zeros_like(work)
    scale = zero = None
    for b0 in range(0, columns, block_size):                   # 1. blocks of columns
        b1 = min(b0 + block_size, columns)
        block, errors = work[:, b0:b1].clone(), torch.zeros_like(work[:, b0:b1])
        for i in range(b1 - b0):                               # 2. one column at a time
            col = b0 + i
            if col % g == 0:                                   # a new group: its range from the current weights
                current = torch.cat([block[:, i:], work[:, b1:]], dim=1)[:, :g]
                scale, zero = _qparams(current, num_bits)
            assert scale is not None and zero is not None
            wi = block[:, i]
            qi = scale * (_round(wi, scale, zero, num_bits) - zero)
            q[:, col] = qi
            err = (wi - qi) / u[col, col]                      # 3. the error, scaled
            block[:, i:] -= err[:, None] * u[col, b0 + i:b1][None, :]     # 4. onto this block's later columns
            errors[:, i] = err
        work[:, b1:] -= errors @ u[b0:b1, b1:]                 # 5. lazily onto every column after the block
    return q[:, torch.argsort(perm)].to(w.dtype)


# ---------------------------------------------------------------------------------------------
# 3. Activation-aware scaling (AWQ) and SmoothQuant
# ---------------------------------------------------------------------------------------------

def _alpha(alpha) -> float:
    return validate.number("alpha", alpha, low=0, high=1)


def smoothquant_scales(x_absmax: torch.Tensor, w: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's per-input-channel scales s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha): dividing the
    activations by s and multiplying W's columns by s keeps x W^T, and moves outliers from X into W."""
    w = _weight(w)
    alpha = _alpha(alpha)
    if not torch.is_tensor(x_absmax) or tuple(x_absmax.shape) != (w.shape[1],) or not torch.isfinite(x_absmax).all() \
            or (x_absmax < 0).any():
        raise ValueError(f"x_absmax must hold the {w.shape[1]} inputs' finite max |x| (shape ({w.shape[1]},)), got "
                         f"{tuple(x_absmax.shape) if torch.is_tensor(x_absmax) else type(x_absmax).__name__}")
    a = x_absmax.float().clamp(min=1e-5)
    m = w.detach().abs().amax(0).float().clamp(min=1e-5)
    return (a ** alpha / m ** (1 - alpha)).clamp(min=1e-5)


def activation_fake_quant(x: torch.Tensor, num_bits: int = 8, *, mode: str = "per_token",
                          scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """Symmetric fake quantization of activations x (..., features): per_token (one dynamic scale per row,
    max|row| / (2^(b-1) - 1)) or per_tensor (one scale: `scale` if given, static from calibration, else max|x|)."""
    if not torch.is_tensor(x) or x.dim() < 1 or not torch.isfinite(x).all():
        raise ValueError("x must be a finite tensor of activations (..., features)")
    num_bits = validate.integer("num_bits", num_bits, low=2, high=16)
    mode = validate.choice("mode", mode, ACTIVATION_MODES)
    top = 2 ** (num_bits - 1) - 1
    if mode == "per_token":
        if scale is not None:
            raise ValueError("per_token scales are dynamic (one per row, from the row itself): leave scale=None")
        s = x.abs().amax(-1, keepdim=True) / top
    else:
        s = torch.as_tensor(x.abs().max() / top if scale is None else
                            validate.number("scale", float(scale), low=0, low_open=True))
    s = s.clamp(min=1e-12)
    return torch.round(x / s).clamp(-top, top) * s


def awq_scales(w: torch.Tensor, x: torch.Tensor, num_bits: int = 4, group_size: int | None = None, *,
               grid: int = 20) -> tuple[torch.Tensor, float]:
    """AWQ-style scales: s = mean|X_j|^alpha for the alpha on a grid over [0, 1] whose scaled weight,
    rounded to nearest, Q(W diag(s)) diag(s)^-1, best reproduces x W^T on the calibration inputs.
    alpha 0 is plain RTN (s = 1), so the search never does worse than RTN on its inputs. Returns (s, alpha)."""
    w = _weight(w)
    x = _calibration(x, w.shape[1]).float()
    grid = validate.integer("grid", grid, low=1, high=1000)
    _bits(num_bits)
    _group(group_size, w.shape[1])
    wf = w.detach().float()
    reference, energy = x @ wf.T, x.abs().mean(0).clamp(min=1e-5)
    best: tuple[float, torch.Tensor, float] | None = None
    for k in range(grid + 1):
        alpha = k / grid
        s = energy ** alpha
        s = s / (s.max() * s.min()).sqrt()                   # centred around 1: the rounding grid stays sane
        approx = x @ (rtn(wf * s, num_bits, group_size) / s).T
        err = float((approx - reference).pow(2).mean())
        if best is None or err < best[0]:
            best = (err, s, alpha)
    assert best is not None
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------
# 4. LLM.int8(): outlier features in floating point, the rest in int8
# ---------------------------------------------------------------------------------------------

def _int8_rows(t: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 fake quantization with one scale per row (vector-wise)."""
    return quantize_tensor(t, 8, symmetric=True, axis=0).dequantize()


def int8_outlier_matmul(x: torch.Tensor, w: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """x W^T with LLM.int8()'s decomposition: the input features where some |x| > threshold are multiplied in
    floating point; every other feature in int8 (x per row, W per output row)."""
    w = _weight(w)
    x = _calibration(x, w.shape[1])
    if not (isinstance(threshold, float) and threshold == float("inf")):        # inf: no outliers, all int8
        threshold = validate.number("threshold", threshold, low=0)
    outliers = (x.abs() > threshold).any(0)                  # (in,) features kept in floating point
    regular = ~outliers
    out = x[:, outliers] @ w[:, outliers].T
    if regular.any():
        out = out + _int8_rows(x[:, regular]) @ _int8_rows(w[:, regular]).T
    return out


# ---------------------------------------------------------------------------------------------
# 5. Sparsity with calibration data: Wanda and SparseGPT
# ---------------------------------------------------------------------------------------------

def wanda_scores(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Wanda's importance |W_ij| * ||X_j||_2: a weight matters as much as it is large times its input's norm."""
    w = _weight(w)
    x = _calibration(x, w.shape[1])
    return w.detach().abs() * x.float().norm(dim=0)[None, :]


@dataclass
class SparseResult:
    weight: torch.Tensor        # the pruned and error-compensated weight (zeros where mask is 0)
    mask: torch.Tensor          # 1 kept, 0 pruned


def sparsegpt(w: torch.Tensor, h: torch.Tensor, n: int = 2, m: int = 4, *, damp: float = 0.01,
              block_size: int = 128) -> SparseResult:
    """SparseGPT at N:M: in each group of m columns keep, per row, the n weights whose removal costs least,
    w^2 / U_jj^2 (the OBS saliency), then zero the others column by column, moving each removed weight's
    error onto the later columns as GPTQ does with rounding errors."""
    n, m = validate.integer("n", n, low=1), validate.integer("m", m, low=1)
    if n >= m:
        raise ValueError(f"n must be below m (keep n of every m), got {n}:{m}")
    block_size = validate.integer("block_size", block_size, low=1)
    work, h, damp = _prepare(w, h, damp)
    columns = work.shape[1]
    if columns % m:
        raise ValueError(f"the weight's {columns} columns are not a multiple of m={m}: N:M groups need whole groups")
    u = _inverse_cholesky(h, damp)
    mask = torch.ones_like(work, dtype=torch.bool)
    for b0 in range(0, columns, block_size):
        b1 = min(b0 + block_size, columns)
        block, errors = work[:, b0:b1].clone(), torch.zeros_like(work[:, b0:b1])
        for i in range(b1 - b0):
            col = b0 + i
            if col % m == 0:                                   # choose this group's survivors now
                span = slice(i, i + m) if i + m <= b1 - b0 else None
                current = block[:, span] if span else torch.cat([block[:, i:], work[:, b1:]], 1)[:, :m]
                saliency = current ** 2 / torch.diag(u)[col:col + m][None, :] ** 2
                drop = saliency.topk(m - n, dim=1, largest=False).indices
                mask[:, col:col + m].scatter_(1, drop, False)
            wi = block[:, i]
            qi = wi * mask[:, col]
            err = (wi - qi) / u[col, col]
            block[:, i:] -= err[:, None] * u[col, b0 + i:b1][None, :]
            errors[:, i] = err
            work[:, col] = qi
        work[:, b1:] -= errors @ u[b0:b1, b1:]
    return SparseResult(work.to(w.dtype), mask.to(w.dtype))


# ---------------------------------------------------------------------------------------------
# 6. Int4 packing: two codes per byte
# ---------------------------------------------------------------------------------------------

def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], an even number of them, packed two per byte: low nibble first."""
    if not torch.is_tensor(codes) or codes.dtype != torch.uint8:
        raise ValueError(f"codes must be a uint8 tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    flat = codes.flatten()
    if len(flat) % 2:
        raise ValueError(f"int4 packing needs an even number of codes, got {len(flat)}")
    if len(flat) and int(flat.max()) > 15:
        raise ValueError(f"int4 codes must lie in 0..15, got a {int(flat.max())}")
    return flat[0::2] | (flat[1::2] << 4)


def unpack_int4(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The codes pack_int4 packed, reshaped to `shape`."""
    if not torch.is_tensor(packed) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError("packed must be a 1-D uint8 tensor from pack_int4")
    count = 1
    for d in shape:
        count *= validate.integer("shape entry", d, low=0)
    if count != 2 * len(packed):
        raise ValueError(f"shape {tuple(shape)} holds {count} codes, the packed bytes hold {2 * len(packed)}")
    return torch.stack([packed & 0xF, packed >> 4], dim=1).flatten().reshape(tuple(shape))


# ---------------------------------------------------------------------------------------------
# 7. A model, one Linear at a time
# ---------------------------------------------------------------------------------------------

def linear_inputs(model: torch.nn.Module, x: torch.Tensor, *, skip: tuple[str, ...] = ("head",),
                  max_rows: int = 8192, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The inputs each nn.Linear of `model` (but those named in `skip`) sees on the calibration batch x,
    flattened to (rows, in_features) (a Transformer's tokens are rows), at most max_rows of them, evenly spaced."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in skip}
    if not linears:
        raise ValueError("the model has no nn.Linear layer to compress (besides the skipped ones)")
    if not torch.is_tensor(x) or len(x) == 0 or not torch.isfinite(x).all():
        raise ValueError("calibration inputs x must be a non-empty finite tensor (a batch of model inputs)")
    max_rows = validate.integer("max_rows", max_rows, low=1)
    batch_size = validate.integer("batch_size", batch_size, low=1)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in linears}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: seen[n].append(
        args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu())) for n, m in linears.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {}
    for n, parts in seen.items():
        rows = torch.cat(parts)
        keep = torch.linspace(0, len(rows) - 1, min(max_rows, len(rows))).long()
        out[n] = rows[keep]
    return out


def compress_linears(model: torch.nn.Module, inputs: dict[str, torch.Tensor], transform) -> torch.nn.Module:
    """A copy of `model` whose Linear weights named in `inputs` are replaced by transform(weight, x) (x: that
    layer's calibration inputs), e.g. lambda w, x: gptq(w, hessian(x), 3)."""
    import copy

    if not callable(transform):
        raise TypeError(f"transform must be a callable (weight, inputs) -> weight, got {transform!r}")
    new = copy.deepcopy(model)
    modules = dict(new.named_modules())
    missing = [n for n in inputs if not isinstance(modules.get(n), torch.nn.Linear)]
    if missing:
        raise ValueError(f"no nn.Linear named {missing[0]!r} in the model")
    for n, x in inputs.items():
        lin = modules[n]
        assert isinstance(lin, torch.nn.Linear)
        w = lin.weight.detach()
        out = transform(w.cpu().float(), x)
        if not torch.is_tensor(out) or out.shape != w.shape:
            raise ValueError(f"transform returned {getattr(out, 'shape', type(out).__name__)} for {n!r}, "
                             f"expected a tensor of shape {tuple(w.shape)}")
        with torch.no_grad():
            lin.weight.copy_(out.to(w))
    return new


def save_int4(model: torch.nn.Module, path, *, skip: tuple[str, ...] = ("head",),
              group_size: int | None = None) -> int:
    """Write `model` with every nn.Linear weight (but `skip`) as 4-bit RTN codes packed two per byte, plus fp16
    scales and zero points; everything else as it is. Written atomically; returns the file's bytes."""
    from .files import atomic_torch_save

    state: dict[str, torch.Tensor] = {}
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in skip}
    for name, tensor in model.state_dict().items():
        layer, _, kind = name.rpartition(".")
        if layer in linears and kind == "weight":
            q = groupwise_quantize(tensor.float().cpu(), 4, group_size)
            state[f"{name}.int4"] = pack_int4(q.codes)
            state[f"{name}.scale"], state[f"{name}.zero"] = q.scale.half(), q.zero.to(torch.uint8)
            state[f"{name}.shape"] = torch.tensor([*tensor.shape, q.group_size])
        else:
            state[name] = tensor.detach().cpu()
    return atomic_torch_save(state, path).stat().st_size


def load_int4(model: torch.nn.Module, path) -> torch.nn.Module:
    """A copy of `model` holding the weights of a save_int4 file, the 4-bit ones dequantized (weights only:
    nothing in the file can run code)."""
    import copy

    from .files import safe_torch_load

    blob = safe_torch_load(path)
    state = {}
    for name in model.state_dict():
        if f"{name}.int4" in blob:
            rows, cols, g = (int(v) for v in blob[f"{name}.shape"])
            q = GroupQuant(unpack_int4(blob[f"{name}.int4"], (rows, cols)), blob[f"{name}.scale"].float(),
                           blob[f"{name}.zero"].float(), 4, g)
            state[name] = q.dequantize()
        elif name in blob:
            state[name] = blob[name]
        else:
            raise ValueError(f"{path}: no entry for {name!r}; not a save_int4 file of this model")
    new = copy.deepcopy(model)
    new.load_state_dict(state)
    return new
