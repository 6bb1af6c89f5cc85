"""mokit.llm_compress against definitions and references: RTN against a hand computation, GPTQ = RTN when H is
the identity and the closed-form OBS update on two columns, GPTQ / SparseGPT / AWQ beat their naive forms on
correlated inputs, SmoothQuant keeps x W^T, LLM.int8's decomposition, int4 packing; bad input named."""

from __future__ import annotations

import pytest
import torch

from mokit import llm_compress as L
from mokit.prune import nm_mask


def correlated(n=512, d=32, seed=0) -> torch.Tensor:
    """Inputs whose features are strongly correlated and of unequal energy, as a layer's inputs are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -1.5, d)[None, :]
    return torch.randn(n, d, generator=g) @ mix.T + 0.1 * torch.randn(n, d, generator=g)


def weight(out=16, d=32, seed=1) -> torch.Tensor:
    return torch.randn(out, d, generator=torch.Generator().manual_seed(seed))


def out_error(x, w, w_hat) -> float:
    return float((x @ (w - w_hat).T).pow(2).mean())


def test_rtn_by_hand_one_group():
    w = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
    q = L.groupwise_quantize(w, num_bits=2, group_size=4)       # range [-1, 2], 3 steps of 1.0, zero at code 1
    assert q.scale.item() == pytest.approx(1.0) and q.zero.item() == 1
    assert q.codes.tolist() == [[0, 1, 2, 3]] or q.codes.tolist() == [[0, 1, 1, 3]]   # 0.5 / 1.0 rounds to even
    torch.testing.assert_close(L.rtn(w, 8, None), w, atol=2e-2, rtol=0)


def test_groups_have_their_own_ranges():
    w = torch.cat([torch.full((2, 4), 0.01), torch.full((2, 4), 100.0)], 1) * torch.linspace(1, 2, 8)
    per_group, per_row = L.rtn(w, 4, 4), L.rtn(w, 4, None)
    assert (per_group[:, :4] - w[:, :4]).abs().max() < (per_row[:, :4] - w[:, :4]).abs().max()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_is_rtn_when_the_inputs_are_uncorrelated(bits):
    w = weight()
    q = L.gptq(w, torch.eye(32), bits, group_size=8, damp=0.01, block_size=5)
    torch.testing.assert_close(q, L.rtn(w, bits, 8), atol=1e-5, rtol=0)


def test_gptq_second_column_takes_the_closed_form_update():
    """After rounding column 0, the best continuous column 1 is w1 + (w0 - q0) * H01 / H11 (OBS on 2 columns)."""
    h = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
    w = torch.tensor([[0.37, -0.81], [1.13, 0.42]])
    q = L.gptq(w, h, num_bits=8, group_size=1, damp=1e-6)
    q0 = L.rtn(w[:, :1], 8, 1)
    target = w[:, 1] + (w[:, 0] - q0[:, 0]) * 1.2 / 1.0
    torch.testing.assert_close(q[:, 0], q0[:, 0])
    torch.testing.assert_close(q[:, 1], target, atol=2e-3, rtol=0)          # within one 8-bit step of it


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits", [2, 3])
def test_gptq_beats_rtn_on_correlated_inputs(bits, act_order):
    x, w = correlated(), weight()
    h = L.hessian(x)
    g = L.gptq(w, h, bits, group_size=16, block_size=8, act_order=act_order)
    assert out_error(x, w, g) < 0.8 * out_error(x, w, L.rtn(w, bits, 16))
    before = w.clone()
    L.gptq(w, h, bits)
    assert torch.equal(w, before)                                          # inputs left alone


def test_lazy_blocks_change_nothing():
    x, w = correlated(), weight()
    h = L.hessian(x)
    torch.testing.assert_close(L.gptq(w, h, 3, 8, block_size=1), L.gptq(w, h, 3, 8, block_size=32), atol=1e-5, rtol=0)


def test_hessian_is_twice_the_input_covariance():
    x = correlated(64, 6)
    torch.testing.assert_close(L.hessian(x), 2 * x.T @ x / 64, rtol=1e-5, atol=1e-5)


def test_smoothquant_keeps_the_product_and_balances_the_ranges():
    x, w = correlated() * torch.tensor([30.0] * 2 + [1.0] * 30), weight()
    s = L.smoothquant_scales(x.abs().amax(0), w, alpha=0.5)
    torch.testing.assert_close((x / s) @ (w * s).T, x @ w.T, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close((x / s).abs().amax(0), (w * s).abs().amax(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(L.smoothquant_scales(x.abs().amax(0), w, alpha=0.0), 1 / w.abs().amax(0))


def test_per_token_activations_beat_one_static_scale_when_rows_differ():
    x = correlated() * torch.logspace(-2, 1, 512)[:, None]
    static = L.activation_fake_quant(x, 4, mode="per_tensor")
    dynamic = L.activation_fake_quant(x, 4, mode="per_token")
    assert (dynamic - x).pow(2).mean() < (static - x).pow(2).mean()
    torch.testing.assert_close(L.activation_fake_quant(x, 16, mode="per_token"), x, atol=1e-3, rtol=1e-3)


def test_awq_is_never_worse_than_rtn_on_its_inputs_and_helps_with_salient_channels():
    x, w = correlated(), weight()
    x[:, :3] *= 20                                                         # three salient input channels
    s, alpha = L.awq_scales(w, x, 3, 16, grid=10)
    awq = L.rtn(w * s, 3, 16) / s
    assert 0 <= alpha <= 1 and out_error(x, w, awq) <= out_error(x, w, L.rtn(w, 3, 16))


def test_llm_int8_decomposition():
    x, w = correlated(), weight()
    x[:, 5] *= 50                                                          # one outlier feature
    exact = x @ w.T
    no_split = L.int8_outlier_matmul(x, w, threshold=float("inf"))
    split = L.int8_outlier_matmul(x, w, threshold=6.0)
    torch.testing.assert_close(L.int8_outlier_matmul(x, w, threshold=0.0), exact)     # every feature fp
    assert (split - exact).pow(2).mean() < 0.5 * (no_split - exact).pow(2).mean()


def test_wanda_scores_weigh_by_input_norms():
    x, w = correlated(), weight()
    torch.testing.assert_close(L.wanda_scores(w, x), w.abs() * x.norm(dim=0))


def test_sparsegpt_keeps_2_of_4_and_beats_magnitude():
    x, w = correlated(), weight()
    result = L.sparsegpt(w, L.hessian(x), 2, 4, block_size=6)
    groups = result.mask.reshape(16, -1, 4)
    assert (groups.sum(-1) == 2).all()
    assert (result.weight[result.mask == 0] == 0).all()
    magnitude = w * nm_mask(w.abs(), 2, 4)
    wanda = w * nm_mask(L.wanda_scores(w, x), 2, 4)
    assert out_error(x, w, result.weight) < 0.8 * min(out_error(x, w, magnitude), out_error(x, w, wanda))


def test_int4_packing_round_trip_and_size():
    codes = torch.randint(0, 16, (6, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = L.pack_int4(codes)
    assert packed.numel() == 30 and torch.equal(L.unpack_int4(packed, codes.shape), codes)
    assert L.pack_int4(torch.tensor([1, 2], dtype=torch.uint8)).tolist() == [1 + (2 << 4)]


@pytest.mark.parametrize("call, match", [
    (lambda: L.rtn(weight(), 0), "num_bits"),
    (lambda: L.rtn(weight(), 9), "num_bits"),
    (lambda: L.rtn(weight(), 4, 5), "group_size 5 does not divide the weight's 32 columns"),
    (lambda: L.rtn(weight(), 4, 0), "group_size"),
    (lambda: L.rtn(torch.full((2, 4), float("nan"))), "finite"),
    (lambda: L.rtn(torch.zeros(4)), "2-D float tensor"),
    (lambda: L.gptq(weight(), torch.eye(31)), r"H must be a \(32, 32\)"),
    (lambda: L.gptq(weight(), torch.eye(32), damp=0), "damp"),
    (lambda: L.gptq(weight(), torch.eye(32) * float("inf")), "H must be finite"),
    (lambda: L.hessian(torch.zeros(0, 4)), "empty"),
    (lambda: L.hessian(torch.zeros(4)), "2-D tensor"),
    (lambda: L.smoothquant_scales(torch.ones(32), weight(), alpha=1.5), "alpha"),
    (lambda: L.smoothquant_scales(torch.ones(32), weight(), alpha=float("nan")), "alpha"),
    (lambda: L.smoothquant_scales(torch.ones(31), weight()), "x_absmax"),
    (lambda: L.awq_scales(weight(), torch.zeros(5, 31)), r"\(n, 32\)"),
    (lambda: L.awq_scales(weight(), torch.zeros(0, 32)), "empty"),
    (lambda: L.activation_fake_quant(torch.ones(3, 4), 8, mode="per_channel"), "mode"),
    (lambda: L.activation_fake_quant(torch.ones(3, 4), 8, mode="per_token", scale=1.0), "dynamic"),
    (lambda: L.int8_outlier_matmul(torch.ones(3, 32), weight(), threshold=-1), "threshold"),
    (lambda: L.sparsegpt(weight(), torch.eye(32), 4, 4), "n must be below m"),
    (lambda: L.sparsegpt(weight(d=30), torch.eye(30), 2, 4), "not a multiple of m=4"),
    (lambda: L.pack_int4(torch.tensor([1, 2, 3], dtype=torch.uint8)), "even number"),
    (lambda: L.pack_int4(torch.tensor([1, 16], dtype=torch.uint8)), "0..15"),
    (lambda: L.pack_int4(torch.tensor([1, 2])), "uint8"),
    (lambda: L.unpack_int4(torch.zeros(3, dtype=torch.uint8), (2, 2)), "holds 4 codes"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_linear_inputs_and_compress_linears_on_a_small_vit():
    from mokit.models import create_model
    torch.manual_seed(0)
    vit = create_model("vit", width=16, depth=2, heads=2, in_shape=(1, 8, 8), num_classes=3)
    x = torch.randn(5, 1, 8, 8)
    inputs = L.linear_inputs(vit, x, max_rows=12)             # 5 images x 4 tokens = 20 rows, 12 kept
    assert sorted(inputs) == sorted(n for n, m in vit.named_modules() if isinstance(m, torch.nn.Linear) and n != "head")
    assert inputs["blocks.0.attn.qkv"].shape == (12, 16) and inputs["blocks.1.mlp.2"].shape == (12, 32)
    same = L.compress_linears(vit, inputs, lambda w, xs: w)
    torch.testing.assert_close(same(x), vit(x))
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    small = L.compress_linears(vit, inputs, lambda w, xs: L.gptq(w, L.hessian(xs), 2))
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in before.items())          # a copy was compressed
    assert len(small.blocks[0].mlp[0].weight.unique()) < len(vit.blocks[0].mlp[0].weight.unique())
    with pytest.raises(ValueError, match=r"no nn\.Linear named 'nope'"):
        L.compress_linears(vit, {"nope": x}, lambda w, xs: w)
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        L.compress_linears(vit, inputs, lambda w, xs: w[:1])
    with pytest.raises(ValueError, match=r"no nn\.Linear layer"):
        L.linear_inputs(torch.nn.Conv2d(1, 1, 3), x)
    with pytest.raises(ValueError, match="non-empty finite"):
        L.linear_inputs(vit, x[:0])


def test_int4_file_round_trip_is_rtn_and_about_an_eighth(tmp_path):
    from mokit.models import create_model
    torch.manual_seed(0)
    vit = create_model("vit", width=32, depth=2, heads=2, in_shape=(1, 8, 8), num_classes=3)
    fp32 = tmp_path / "fp32.pt"
    torch.save(vit.state_dict(), fp32)
    size = L.save_int4(vit, tmp_path / "int4.pt", group_size=16)
    back = L.load_int4(vit, tmp_path / "int4.pt")
    w = vit.blocks[0].mlp[0].weight.detach()
    torch.testing.assert_close(back.blocks[0].mlp[0].weight, L.rtn(w, 4, 16), atol=2e-3 * float(w.abs().max()), rtol=0)
    torch.testing.assert_close(back.head.weight, vit.head.weight)                      # skipped: kept as it was
    assert size == (tmp_path / "int4.pt").stat().st_size and size < 0.5 * fp32.stat().st_size
    with pytest.raises(ValueError, match="not a save_int4 file"):
        L.load_int4(create_model("vit", width=32, depth=3, heads=2, in_shape=(1, 8, 8), num_classes=3),
                    tmp_path / "int4.pt")
