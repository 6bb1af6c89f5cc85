"""mokit.quantize against torch's quantized tensors and kernels, brute force, and bad input."""

import math

import pytest
import torch
from conftest import within
from torch import nn

from mokit import quantize as Q

pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions:UserWarning")


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 10))
    return mlp, cnn


# ---------------------------------------------------------------------------------------------
# The arithmetic
# ---------------------------------------------------------------------------------------------

def test_qrange():
    assert Q.qrange(8) == (0, 255)
    assert Q.qrange(8, symmetric=True) == (-127, 127)
    assert Q.qrange(1) == (0, 1)
    assert Q.qrange(16, symmetric=True) == (-32767, 32767)


@pytest.mark.parametrize("bad", [0, 17, -3, 2.5, True, "8"])
def test_bits_outside_1_16_rejected(bad):
    with pytest.raises(ValueError, match=f"num_bits must be an integer in \\[1, 16\\], got {bad!r}"):
        Q.quantize_tensor(torch.randn(10), bad)


def test_symmetric_one_bit_rejected():
    with pytest.raises(ValueError, match="symmetric quantization needs num_bits >= 2"):
        Q.quantize_tensor(torch.randn(10), 1, symmetric=True)


@pytest.mark.parametrize("axis", [2, -3, 1.0])
def test_axis_that_does_not_exist(axis):
    with pytest.raises(ValueError, match=f"axis {axis!r} does not exist for a tensor of shape \\(4, 5\\)"):
        Q.quantize_tensor(torch.randn(4, 5), 8, axis=axis)


def test_unknown_calibration():
    with pytest.raises(ValueError, match=r"unknown calibrate 'median' \(the calibration\); "
                                         "valid: minmax, percentile, mse"):
        Q.quantize_tensor(torch.randn(4), 8, calibrate="median")


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 12, 16])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_roundtrip_error_at_most_half_a_step(bits, symmetric, axis):
    if symmetric and bits == 1:
        pytest.skip("symmetric 1-bit has no levels besides zero: quantize_tensor refuses it (tested above)")
    x = torch.randn(6, 50) * torch.linspace(0.1, 3, 6)[:, None] + 0.3
    qt = Q.quantize_tensor(x, bits, symmetric=symmetric, axis=axis)
    qmin, qmax = Q.qrange(bits, symmetric)
    assert qt.q.min() >= qmin and qt.q.max() <= qmax
    scale = qt.scale if axis is None else Q._broadcast(qt.scale, x, axis)
    err = (qt.dequantize() - x).abs()
    assert (err <= scale / 2 * (1 + 1e-4) + 1e-6).all()


def test_affine_matches_torch_observer_and_quantize_per_tensor():
    x = torch.randn(1000) * 2 + 0.5
    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8)
    obs(x)
    scale, zp = obs.calculate_qparams()
    qt = Q.quantize_tensor(x, 8)
    assert torch.allclose(qt.scale, scale, rtol=1e-6)
    assert int(qt.zero_point) == int(zp)
    ref = torch.quantize_per_tensor(x, float(scale), int(zp), torch.quint8)
    assert torch.equal(qt.q, ref.int_repr().int())
    assert torch.allclose(qt.dequantize(), ref.dequantize(), atol=1e-6)


def test_per_channel_matches_torch_quantize_per_channel():
    w = torch.randn(8, 20) * torch.arange(1, 9)[:, None]
    qt = Q.quantize_tensor(w, 8, symmetric=True, axis=0)
    ref = torch.quantize_per_channel(w, qt.scale.double(), qt.zero_point.long(), 0, torch.qint8)
    assert torch.equal(qt.q, ref.int_repr().int())
    # per-channel never does worse than per-tensor when channels differ in range
    per_tensor = Q.quantize_tensor(w, 4, symmetric=True).dequantize()
    per_channel = Q.quantize_tensor(w, 4, symmetric=True, axis=0).dequantize()
    assert Q.quantization_error(w, per_channel)["mse"] < Q.quantization_error(w, per_tensor)["mse"]


def test_calibration_methods():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(5000), torch.tensor([40.0, -35.0])])      # two outliers
    errs = {m: Q.quantization_error(x, Q.quantize_tensor(x, 4, calibrate=m).dequantize())["mse"]
            for m in Q.CALIBRATORS}
    assert errs["mse"] <= errs["minmax"] and errs["percentile"] < errs["minmax"]
    _lo, hi = Q.percentile_range(x, percentile=99.0)
    assert torch.allclose(hi, torch.quantile(x, 0.99))
    # the MSE search picks the best clip ratio of a brute-force grid
    best = min((Q.quantization_error(x, Q.quantize_tensor(
        x, 4, calibrate=lambda t, r=r, **_: (t.min() * r, t.max() * r)).dequantize())["mse"], r)
        for r in torch.linspace(1 / 50, 1, 50).tolist())
    assert errs["mse"] == pytest.approx(best[0], rel=1e-4)


def test_quantization_error_stats():
    x = torch.tensor([1.0, 2.0, 3.0])
    e = Q.quantization_error(x, torch.tensor([1.0, 2.5, 3.0]))
    assert e["max_abs"] == 0.5 and e["mse"] == pytest.approx(0.25 / 3)
    assert e["sqnr_db"] == pytest.approx(10 * math.log10(14 / 0.25))


def test_int8_linear_matches_torch_quantized_linear():
    torch.manual_seed(0)
    x, w, b = torch.randn(16, 40), torch.randn(12, 40) * 0.2, torch.randn(12) * 0.1
    xq = Q.quantize_tensor(x, 8)                                      # uint8 affine activations
    wq = Q.quantize_tensor(w, 8, symmetric=True, axis=0)              # int8 per-channel weights
    y = x @ w.T + b
    s_out, z_out = Q.compute_qparams(y.min(), y.max(), 8)
    ours = Q.int8_linear(xq, wq, b, float(s_out), int(z_out))
    ref = torch.ao.nn.quantized.Linear(40, 12)
    ref.set_weight_bias(torch.quantize_per_channel(w, wq.scale.double(), wq.zero_point.long(), 0,
                                                   torch.qint8), b)
    ref.scale, ref.zero_point = float(s_out), int(z_out)
    theirs = ref(torch.quantize_per_tensor(x, float(xq.scale), int(xq.zero_point), torch.quint8))
    assert (ours - theirs.int_repr().int()).abs().max() <= 1          # within one quantization step
    assert (Q.dequantize(ours, s_out, z_out) - y).abs().max() <= 2 * s_out


@pytest.mark.parametrize("multiplier", [1e-6, 0.000123, 0.3, 0.5, 0.75, 1 - 1e-12, 1.0, 3.7, 1000.0])
def test_fixed_point_multiplier_is_m0_times_a_power_of_two(multiplier):
    m0, shift = Q.fixed_point_multiplier(multiplier)
    assert 2 ** 30 <= int(m0) < 2 ** 31                                # M0 in [0.5, 1) as a Q31 integer
    assert int(m0) * 2.0 ** -int(shift) == pytest.approx(multiplier, rel=2 ** -31)


def test_rescale_fixed_point_matches_the_float_rescale():
    torch.manual_seed(0)
    acc = torch.randint(-2 ** 24, 2 ** 24, (64, 5))
    multiplier = torch.tensor([1e-5, 3e-4, 0.01, 0.2, 0.9], dtype=torch.float64)
    got = Q.rescale_fixed_point(acc, *Q.fixed_point_multiplier(multiplier))
    exact = torch.floor(acc.double() * multiplier + 0.5).long()        # round half up, in float64
    assert (got - exact).abs().max() <= 1 and (got == exact).float().mean() > 0.99
    assert torch.equal(Q.rescale_fixed_point(torch.tensor([5, -5, 6]), torch.tensor(2 ** 30), torch.tensor(32)),
                       torch.tensor([1, -1, 2]))                        # x / 4: 1.25, -1.25, 1.5 (half up)


def test_int8_linear_fixed_point_equals_float_rescale_within_one_step():
    torch.manual_seed(0)
    x, w, b = torch.rand(32, 100), torch.randn(20, 100) * 0.1, torch.randn(20) * 0.1
    xq, wq = Q.quantize_tensor(x, 8), Q.quantize_tensor(w, 8, symmetric=True, axis=0)
    y = x @ w.T + b
    s, z = Q.compute_qparams(y.min(), y.max(), 8)
    floats = Q.int8_linear(xq, wq, b, float(s), int(z))
    fixed = Q.int8_linear(xq, wq, b, float(s), int(z), fixed_point=True)
    assert fixed.dtype == torch.int32 and (fixed - floats).abs().max() <= 1
    with pytest.raises(TypeError, match="fixed_point must be True or False, got 'yes'"):
        Q.int8_linear(xq, wq, b, float(s), int(z), fixed_point="yes")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), 2.0 ** 31])
def test_fixed_point_multiplier_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="multiplier must be finite, > 0 and < 2"):
        Q.fixed_point_multiplier(bad)


def test_rescale_fixed_point_refuses_what_an_int32_kernel_cannot_hold():
    with pytest.raises(ValueError, match="acc must fit an int32 accumulator"):
        Q.rescale_fixed_point(torch.tensor([2 ** 31]), torch.tensor(2 ** 30), torch.tensor(31))
    with pytest.raises(ValueError, match="acc must hold integers"):
        Q.rescale_fixed_point(torch.tensor([1.5]), torch.tensor(2 ** 30), torch.tensor(31))
    with pytest.raises(ValueError, match=r"shift must be in \[1, 62\]"):
        Q.rescale_fixed_point(torch.tensor([3]), torch.tensor(2 ** 30), torch.tensor(0))


# ---------------------------------------------------------------------------------------------
# Fake quantization, STE, QAT
# ---------------------------------------------------------------------------------------------

def test_fake_quant_straight_through_gradient():
    x = torch.randn(5, 7, requires_grad=True)
    y = Q.FakeQuant(3)(x)
    assert torch.allclose(y, Q.quantize_tensor(x.detach(), 3).dequantize())
    (y * torch.arange(7.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(7.0).expand(5, 7))


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quantize_model_levels_and_training(per_channel):
    mlp, _ = _models()
    Q.fake_quantize_model(mlp, 2, per_channel=per_channel)
    w = mlp[1].weight
    levels = [len(torch.unique(r)) for r in w] if per_channel else [len(torch.unique(w))]
    assert max(levels) <= 4
    before = mlp[1].parametrizations.weight.original.clone()
    loss = mlp(torch.randn(8, 1, 8, 8)).pow(2).mean()
    loss.backward()
    torch.optim.SGD(mlp.parameters(), lr=0.1).step()                 # QAT moves the float weights
    assert not torch.equal(before, mlp[1].parametrizations.weight.original)
    Q.strip_quantization(mlp)
    assert isinstance(mlp[1].weight, nn.Parameter) and len(torch.unique(mlp[1].weight)) <= (
        4 * 32 if per_channel else 4)


def test_quantize_unsupported_layer_and_model():
    mlp, _ = _models()
    with pytest.raises(TypeError, match="cannot quantize layer '2' of type ReLU"):
        Q.fake_quantize_model(mlp, 4, layers=["2"])
    with pytest.raises(ValueError, match="no layer named 'fc9'"):
        Q.fake_quantize_model(mlp, 4, layers=["fc9"])
    with pytest.raises(ValueError, match="no Linear or Conv2d layer"):
        Q.fake_quantize_model(nn.Sequential(nn.ReLU()), 4)


# ---------------------------------------------------------------------------------------------
# k-means sharing, Huffman, Deep Compression size
# ---------------------------------------------------------------------------------------------

def test_kmeans_1d_is_a_fixed_point_of_lloyd():
    torch.manual_seed(0)
    v = torch.randn(2000)
    c, idx = Q.kmeans_1d(v, 8, iters=100)
    assert len(c) == 8 and torch.all(c[1:] >= c[:-1])
    for k in range(8):                                               # centroid = mean of its members
        assert torch.allclose(c[k], v[idx == k].mean(), atol=1e-5)
    brute = (v[:, None] - c[None]).abs().argmin(1)                   # each value at its nearest centroid
    assert torch.equal(idx, brute)


def test_kmeans_share_codebook_gradient_and_mask():
    mlp, _ = _models()
    mask = (torch.rand_like(mlp[1].weight) > 0.5).float()
    books = Q.kmeans_share(mlp, 2, masks={"1": mask})
    with torch.nn.utils.parametrize.cached():                       # forward uses this very `w`
        w = mlp[1].weight
        assert len(torch.unique(w[mask.bool()])) <= 4 and torch.all(w[~mask.bool()] == 0)
        out = mlp(torch.randn(8, 1, 8, 8)).sum()
        g_w = torch.autograd.grad(out, [w], retain_graph=True)[0]
        out.backward()
    book = books["1"]
    expect = torch.zeros(4).index_add_(0, book.index[mask.bool()], g_w[mask.bool()])
    assert torch.allclose(book.centroids.grad, expect, atol=1e-5)   # Han et al.'s rule
    assert mlp[1].parametrizations.weight.original.grad is None


def test_huffman_roundtrip_and_bound():
    torch.manual_seed(0)
    symbols = torch.multinomial(torch.tensor([0.5, 0.2, 0.1, 0.1, 0.05, 0.05]), 5000, True).tolist()
    payload, code = Q.huffman_encode(symbols)
    assert Q.huffman_decode(payload, code, len(symbols)) == symbols
    p = torch.bincount(torch.tensor(symbols)).float() / len(symbols)
    entropy = float(-(p * p.log2()).sum())
    bits = sum(len(code[s]) for s in symbols) / len(symbols)
    assert entropy <= bits < entropy + 1


def test_relative_positions_rebuild_the_mask():
    mask = torch.zeros(200)
    mask[[0, 3, 4, 90, 199]] = 1
    gaps, filler = Q.relative_positions(mask, 4)
    assert max(gaps) <= 15
    pos, kept = -1, []
    for g, f in zip(gaps, filler, strict=True):
        pos += g
        if not f:
            kept.append(pos)
    assert kept == [0, 3, 4, 90, 199]


def test_deep_compression_size_without_huffman():
    mlp, _ = _models()
    mask = (torch.rand_like(mlp[1].weight) > 0.9).float()
    books = Q.kmeans_share(mlp, 3, layers=["1"], masks={"1": mask})
    size = Q.deep_compression_size(mlp, books, index_bits=8, huffman=False)
    kept = int(mask.sum())
    gaps, _ = Q.relative_positions(mask, 8)
    expect = -(-len(gaps) * 8 // 8) + -(-len(gaps) * 3 // 8) + 8 * 4 + 32 * 4
    assert size["layers"][0]["bytes"] == expect and size["layers"][0]["kept"] == kept
    assert size["layers"][1]["bytes"] == 4 * (32 * 10 + 10)          # layer 3 left dense
    assert size["ratio"] == pytest.approx(size["dense_bytes"] / size["bytes"])


# ---------------------------------------------------------------------------------------------
# Real int8 kernels
# ---------------------------------------------------------------------------------------------

def test_quantize_int8_close_to_float_and_reloads(tmp_path):
    for model in _models():
        model.eval()
        x = torch.randn(256, 1, 8, 8)
        int8 = Q.quantize_int8(model, [(x, None)])
        ref, out = model(x), int8(x)
        assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
        assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.9
        size = Q.save_int8(int8, tmp_path / "m.pt")
        assert size == (tmp_path / "m.pt").stat().st_size
        again = Q.load_int8(model, tmp_path / "m.pt")
        assert torch.equal(again(x), out)


def test_load_int8_names_a_corrupt_file(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"broken\.pt"):
        Q.load_int8(_models()[0], bad)


def test_int8_file_is_a_quarter():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10)).eval()
    int8 = Q.quantize_int8(model, [torch.randn(64, 1, 28, 28)])
    assert Q.file_bytes(int8) <= 0.3 * Q.file_bytes(model)


def test_int8_bad_input():
    mlp, _ = _models()
    with pytest.raises(ValueError, match="calibration data is empty"):
        Q.quantize_int8(mlp, [])
    with pytest.raises(TypeError, match="cannot quantize layer 1 of type GELU"):
        Q.quantize_int8(nn.Sequential(nn.Linear(4, 4), nn.GELU()), [torch.randn(2, 4)])
    with pytest.raises(ValueError, match="quantized engine 'tpu' is not available"):
        Q.quantize_int8(mlp, [torch.randn(2, 1, 8, 8)], engine="tpu")


@pytest.mark.parametrize("axis", [None, 0])
def test_torch_int8_linear_reference_agrees(axis):
    torch.manual_seed(1)
    x, w, b = torch.randn(8, 30), torch.randn(5, 30) * 0.3, torch.randn(5) * 0.1
    xq, wq = Q.quantize_tensor(x, 8), Q.quantize_tensor(w, 8, symmetric=True, axis=axis)
    y = x @ w.T + b
    s, z = Q.compute_qparams(y.min(), y.max(), 8)
    ours = Q.int8_linear(xq, wq, b, float(s), int(z))
    assert (ours - Q.torch_int8_linear(xq, wq, b, float(s), int(z))).abs().max() <= 1


def _saturating_case():
    """uint8 activations at 254 and int8 weights at 127 on adjacent inputs: one pair sums to 64516."""
    x = torch.tensor([[1.0, 1.0, -1.0, -1.0], [0.5, -0.5, 0.25, 1.0]])
    w = torch.tensor([[1.0, 1.0, 0.1, -0.2], [0.3, -1.0, 0.5, 0.2]])
    xq, wq = Q.quantize_tensor(x, 8), Q.quantize_tensor(w, 8, symmetric=True, axis=0)
    y = x @ w.T
    s, z = Q.compute_qparams(y.min(), y.max(), 8)
    return xq, wq, float(s), int(z)


def test_torch_int8_linear_reference_exact_on_full_range_activations():
    xq, wq, s, z = _saturating_case()
    assert int(xq.q.max()) >= 254 and int(wq.q.max()) == 127
    before = torch.backends.quantized.engine
    ours = Q.int8_linear(xq, wq, None, s, z)
    assert torch.equal(Q.torch_int8_linear(xq, wq, None, s, z), ours)
    assert torch.backends.quantized.engine == before                  # the process's engine is kept
    with pytest.raises(ValueError, match="unknown engine 'tpu'"):
        Q.torch_int8_linear(xq, wq, None, s, z, engine="tpu")


def test_x86_engine_differs_only_by_int16_pair_saturation():
    """Why x86/fbgemm is not the reference: without VNNI it adds u8 x s8 products pairwise in a
    saturating int16 (vpmaddubsw). Its output is either exact (VNNI CPUs) or exactly that emulation."""
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("no x86 quantized engine")
    torch.manual_seed(1)                                              # the seed that showed 36 steps
    cases = [_saturating_case()]
    x, w = torch.randn(8, 30), torch.randn(5, 30) * 0.3
    xq, wq = Q.quantize_tensor(x, 8), Q.quantize_tensor(w, 8, symmetric=True, axis=0)
    y = x @ w.T
    s, z = Q.compute_qparams(y.min(), y.max(), 8)
    cases.append((xq, wq, float(s), int(z)))
    for xq, wq, s, z in cases:
        qx, qw = xq.q.long(), wq.q.long()
        prod = qx[:, None, :] * qw[None, :, :]                        # (N, O, I) raw uint8 x int8
        pairs = prod[..., 0::2] + prod[..., 1::2]
        acc = {"exact": pairs.sum(-1), "int16": pairs.clamp(-32768, 32767).sum(-1)}
        expect = {k: (torch.round((a - xq.zero_point.long() * qw.sum(1)).double() * xq.scale.double()
                                  * wq.scale.double() / s) + z).clamp(0, 255).int() for k, a in acc.items()}
        x86 = Q.torch_int8_linear(xq, wq, None, s, z, engine="x86")
        assert torch.equal(x86, expect["exact"]) or torch.equal(x86, expect["int16"])
        assert torch.equal(Q.torch_int8_linear(xq, wq, None, s, z), expect["exact"])


# ---------------------------------------------------------------------------------------------
# Device flow: everything is built on the input's device (no GPU here: a wrong default device
# stands in for it - any tensor created without device=... lands on "meta" and breaks the run)
# ---------------------------------------------------------------------------------------------

def test_kmeans_and_codebook_build_on_the_inputs_device():
    torch.manual_seed(0)
    v = torch.randn(500)
    expect_c, expect_idx = Q.kmeans_1d(v, 4)
    with torch.device("meta"):
        c, idx = Q.kmeans_1d(v, 4)
        book = Q.Codebook(v.view(25, 20), 2)
    assert c.device == idx.device == v.device and torch.allclose(c, expect_c) and torch.equal(idx, expect_idx)
    assert {t.device.type for t in (book.centroids, book.index, book.mask)} == {"cpu"}


@pytest.mark.parametrize("calibrate", ["minmax", "percentile", "mse"])
def test_quantize_tensor_builds_on_the_inputs_device(calibrate):
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    expect = Q.quantize_tensor(w, 4, axis=0, calibrate=calibrate)
    with torch.device("meta"):
        got = Q.quantize_tensor(w, 4, axis=0, calibrate=calibrate)
    assert got.q.device.type == got.scale.device.type == "cpu" and torch.equal(got.q, expect.q)


def test_int8_linear_accumulates_exactly_off_the_cpu():
    """On a GPU (here: the meta device) the integer product runs in float64; on the CPU in int64."""
    from torch.overrides import TorchFunctionMode

    class Matmuls(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("matmul", "__matmul__"):
                self.dtypes.append((args[0].device.type, args[0].dtype))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    x, w, b = torch.randn(4, 8), torch.randn(3, 8), torch.randn(3)
    xq, wq = Q.quantize_tensor(x, 8), Q.quantize_tensor(w, 8, symmetric=True, axis=0)
    meta = [Q.QTensor(t.q.to("meta"), t.scale.to("meta"), t.zero_point.to("meta"), 8, t.symmetric, t.axis)
            for t in (xq, wq)]
    with Matmuls() as seen:
        cpu = Q.int8_linear(xq, wq, b, 0.05, 128)
        out = Q.int8_linear(*meta, b.to("meta"), 0.05, 128)
    assert seen.dtypes == [("cpu", torch.int64), ("meta", torch.float64)]
    assert out.device.type == "meta" and out.dtype == cpu.dtype == torch.int32 and out.shape == cpu.shape
    exact = Q.int8_linear(xq, wq, b, 0.05, 128)                     # float64 gives the same integers
    as_float = (xq.q - xq.zero_point).double() @ (wq.q - wq.zero_point[:, None]).double().T
    assert torch.equal(as_float.long(), ((xq.q - xq.zero_point).long() @ (wq.q - wq.zero_point[:, None]).long().T))
    assert torch.equal(exact, cpu)


# ---------------------------------------------------------------------------------------------
# BatchNorm folding and FX-mode int8
# ---------------------------------------------------------------------------------------------

def _conv_bn(bias: bool):
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    return conv, bn.eval()


@pytest.mark.parametrize("bias", [False, True])
def test_fold_conv_bn_matches_torch_fusion(bias):
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    conv, bn = _conv_bn(bias)
    ours, ref = Q.fold_conv_bn(conv, bn), fuse_conv_bn_eval(conv.eval(), bn)
    assert torch.allclose(ours.weight, ref.weight, atol=1e-6) and torch.allclose(ours.bias, ref.bias, atol=1e-6)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(ours(x), bn(conv(x)), atol=1e-5)


def test_fold_batchnorm_keeps_outputs_and_bad_input():
    from mokit.models import create_model

    model = create_model("cifar_net", widths=(8, 16, 16))
    model.train()
    with torch.no_grad():
        for _ in range(3):                                          # give the BNs running statistics
            model(torch.randn(16, 3, 32, 32))
    model.eval()
    folded = Q.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())          # the original is kept
    with pytest.raises(ValueError, match="no Conv2d followed by a BatchNorm2d"):
        Q.fold_batchnorm(_models()[0])
    with pytest.raises(TypeError, match="Conv2d and a BatchNorm2d"):
        Q.fold_conv_bn(nn.Linear(2, 2), nn.BatchNorm2d(2))


def test_quantize_int8_fx_runs_int8_kernels_close_to_float():
    from mokit.models import create_model

    torch.manual_seed(0)
    model = create_model("cifar_net", widths=(8, 16, 16))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    model.eval()
    calib = [torch.randn(32, 3, 32, 32) for _ in range(3)]
    int8 = Q.quantize_int8_fx(model, calib)
    kinds = {type(m).__name__ for m in int8.modules()}
    assert "ConvReLU2d" in kinds and any(m.__module__.startswith("torch.ao.nn.quantized") for m in int8.modules())
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), int8(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    with pytest.raises(ValueError, match="calibration data is empty"):
        Q.quantize_int8_fx(model, [])
    with pytest.raises(ValueError, match="engine 'tpu'"):
        Q.quantize_int8_fx(model, calib, engine="tpu")


# ---------------------------------------------------------------------------------------------
# Bad input (issue 13): refused before any work, never a hang or a silent wrong result
# ---------------------------------------------------------------------------------------------



@pytest.mark.parametrize("bits", [0, -1, 33, 2.0, True, float("nan")])
def test_relative_positions_refuses_bits_that_bridge_no_gap(bits):
    mask = torch.zeros(50)
    mask[[0, 40]] = 1
    with pytest.raises(ValueError, match=f"index_bits must be an integer in \\[1, 32\\], got {bits!r}"):
        within(5, lambda: Q.relative_positions(mask, bits))


def test_deep_compression_size_refuses_zero_index_bits_before_any_work():
    mlp, _ = _models()
    books = Q.kmeans_share(mlp, 2, layers=["1"])
    with pytest.raises(ValueError, match="index_bits must be an integer in \\[1, 32\\], got 0"):
        within(5, lambda: Q.deep_compression_size(mlp, books, index_bits=0))
    with pytest.raises(ValueError, match="books names layer 'nope'"):
        Q.deep_compression_size(mlp, {"nope": books["1"]})
    with pytest.raises(TypeError, match="huffman must be True or False"):
        Q.deep_compression_size(mlp, books, huffman="yes")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("axis", [None, 0])
def test_quantize_tensor_refuses_non_finite_input(bad, axis):
    x = torch.randn(4, 6)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="x must be finite: 1 of its 24 values are NaN or inf"):
        Q.quantize_tensor(x, 8, axis=axis)


def test_quantize_tensor_refuses_empty_and_non_tensors():
    with pytest.raises(ValueError, match="x is empty"):
        Q.quantize_tensor(torch.empty(0), 8)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got list"):
        Q.quantize_tensor([1.0, 2.0], 8)
    with pytest.raises(TypeError, match="symmetric must be True or False, got 'no'"):
        Q.quantize_tensor(torch.randn(4), 8, symmetric="no")
    with pytest.raises(ValueError, match="axis True does not exist"):
        Q.quantize_tensor(torch.randn(4, 5), 8, axis=True)


@pytest.mark.parametrize("calibrate, kw, valid", [("percentile", {"percentil": 99}, "valid: percentile"),
                                                  ("mse", {"grdi": 10}, "valid: grid"),
                                                  ("minmax", {"percentile": 99},
                                                   r"valid: none \(minmax has no options\)")])
def test_calibrators_refuse_unknown_keywords(calibrate, kw, valid):
    (key,) = kw
    with pytest.raises(ValueError, match=f"unknown keyword '{key}' for calibrate='{calibrate}'; {valid}"):
        Q.quantize_tensor(torch.randn(100), 8, calibrate=calibrate, **kw)
    with pytest.raises(ValueError, match=f"unknown keyword '{key}'"):
        Q.CALIBRATORS[calibrate](torch.randn(100), **kw)


@pytest.mark.parametrize("grid", [0, -3, 2.5, True, 10 ** 5])
def test_mse_grid_must_be_a_positive_integer(grid):
    with pytest.raises(ValueError, match=f"grid must be an integer in \\[1, 10000\\], got {grid!r}"):
        Q.quantize_tensor(torch.randn(100), 8, calibrate="mse", grid=grid)


@pytest.mark.parametrize("p", [float("nan"), 50, 101, "99", True])
def test_percentile_must_be_in_50_100(p):
    with pytest.raises(ValueError, match="percentile must be a finite number in \\(50, 100\\]"):
        Q.quantize_tensor(torch.randn(100), 8, calibrate="percentile", percentile=p)


def test_huffman_refuses_no_symbols_and_non_integers():
    with pytest.raises(ValueError, match="symbols is empty: huffman_code needs at least one symbol"):
        Q.huffman_code([])
    with pytest.raises(ValueError, match="symbols is empty: huffman_code needs at least one symbol"):
        Q.huffman_encode([])
    with pytest.raises(ValueError, match=r"symbols must be an integer \(each symbol an integer\), got 2\.5"):
        Q.huffman_code([1, 2.5])
    assert Q.huffman_code(torch.tensor([3, 3, 1])) == Q.huffman_code([3, 3, 1])
    with pytest.raises(ValueError, match="count must be an integer >= 0"):
        Q.huffman_decode(b"\x00", {0: "0"}, -1)


def test_model_quantizers_change_nothing_on_bad_input():
    mlp, _ = _models()
    Q.fake_quantize_model(mlp, 4, layers=["1"])
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    cases = [(lambda: Q.fake_quantize_model(mlp, 4, calibrate="median"), ValueError, "unknown calibrate 'median'"),
             (lambda: Q.fake_quantize_model(mlp, 4, per_channel="yes"), TypeError, "per_channel"),
             (lambda: Q.fake_quantize_model(mlp, 4, layers="1"), TypeError, "layers must be a list"),
             (lambda: Q.kmeans_share(mlp, 2, masks={"3": torch.ones(2, 2)}), ValueError, "masks\\['3'\\] has shape"),
             (lambda: Q.kmeans_share(mlp, 2, masks={"9": torch.ones(2, 2)}), ValueError, "masks names layer '9'"),
             (lambda: Q.quantize_int8(mlp, [torch.randn(2, 1, 8, 8)], num_batches=0), ValueError, "num_batches"),
             (lambda: Q.quantize_int8_fx(mlp, [torch.randn(2, 1, 8, 8)], batch_size=True), ValueError, "batch_size")]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
        after = mlp.state_dict()
        assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items()), match
    nan_model, _ = _models()
    with torch.no_grad():
        nan_model[1].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="the weight of layer '1' must be finite"):
        Q.fake_quantize_model(nan_model, 4)
    assert not torch.nn.utils.parametrize.is_parametrized(nan_model[1])


def test_int8_linear_refuses_bad_output_grid():
    xq, wq, s, z = _saturating_case()
    for fn in (Q.int8_linear, Q.torch_int8_linear):
        with pytest.raises(ValueError, match="out_scale must be a finite number > 0, got nan"):
            fn(xq, wq, None, float("nan"), z)
        with pytest.raises(ValueError, match="out_zero_point must be an integer in \\[0, 255\\], got 300"):
            fn(xq, wq, None, s, 300)
        with pytest.raises(ValueError, match="bias must have shape \\(2,\\)"):
            fn(xq, wq, torch.zeros(3), s, z)


@pytest.mark.parametrize("kw, match", [({"k": 0}, "k must be an integer"), ({"k": True}, "k must be"),
                                       ({"k": 4, "iters": -1}, "iters must be")])
def test_kmeans_1d_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        Q.kmeans_1d(torch.randn(10), **kw)
    with pytest.raises(ValueError, match="values must be finite"):
        Q.kmeans_1d(torch.tensor([1.0, float("nan")]), 2)


def test_calibration_data_and_symbols_of_the_wrong_type():
    mlp, _ = _models()
    for fn in (Q.quantize_int8, Q.quantize_int8_fx):
        with pytest.raises(TypeError, match="calibration data must be a TensorData or an iterable"):
            fn(mlp, None)
    with pytest.raises(TypeError, match="symbols must be an iterable of integers, got NoneType"):
        Q.huffman_code(None)


def test_every_quantize_call_restores_the_process_quantized_engine():
    """A quantize call sets torch.backends.quantized.engine for its own work only: the caller's choice stays."""
    mlp, cnn = _models()
    torch.manual_seed(1)
    train_data = [(torch.randn(16, 1, 8, 8), torch.zeros(16, dtype=torch.long))]
    others = [e for e in torch.backends.quantized.supported_engines if e not in ("none", Q.ENGINE)]
    if not others:
        pytest.skip(f"no quantized engine besides {Q.ENGINE} here")
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = others[0]
    try:
        int8 = Q.quantize_int8(mlp, train_data, num_batches=1)
        assert torch.backends.quantized.engine == others[0]
        Q.dynamic_int8(mlp)
        assert torch.backends.quantized.engine == others[0]
        Q.quantize_int8_fx(cnn, train_data, num_batches=1)
        assert torch.backends.quantized.engine == others[0]
        x = train_data[0][0][:8]
        assert (int8(x) - mlp.eval()(x)).abs().max() < 0.5        # packed for x86, still runs and agrees
    finally:
        torch.backends.quantized.engine = before
