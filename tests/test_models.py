import pytest
import torch

from mokit import models
from mokit.metrics import count_params

SHAPES = {"lenet300": (1, 28, 28), "lenet5": (1, 28, 28), "mlp": (1, 28, 28), "convnet": (1, 28, 28),
          "cifar_cnn": (3, 32, 32), "cifar_resnet": (3, 32, 32)}


@pytest.mark.parametrize("name", models.list_models())
def test_every_model_forwards_on_its_shape_and_on_other_shapes(name):
    for shape in {SHAPES.get(name, (1, 28, 28)), (3, 32, 32), (1, 28, 28)}:
        m = models.create_model(name, in_shape=shape, num_classes=7)
        out = m(torch.randn(2, *shape))
        assert out.shape == (2, 7)
        out.sum().backward()


def test_classic_sizes():
    assert count_params(models.create_model("lenet300")) == 266_610    # 784*300+300 + 300*100+100 + 100*10+10
    assert count_params(models.create_model("lenet5")) == 431_080      # Han et al.: 431K


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match=r"valid names: .*lenet5"):
        models.create_model("resnet50")


def test_bad_knobs():
    with pytest.raises(ValueError, match="channels"):
        models.create_model("convnet", channels=[0])
    with pytest.raises(ValueError, match="activation"):
        models.create_model("mlp", activation="swishy")
    with pytest.raises(ValueError, match="kernel"):
        models.create_model("convnet", channels=[8], kernel_sizes=[4])


def test_knobs_change_the_model():
    small, big = models.create_model("cifar_cnn", width=0.5), models.create_model("cifar_cnn", width=1.0)
    assert count_params(small) < count_params(big) / 3
    r20 = models.create_model("cifar_resnet", blocks=(3, 3, 3))
    assert count_params(r20) > count_params(models.create_model("cifar_resnet"))


def test_whiten_init_decorrelates_patches_and_freezes_the_filters():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 3, 16, 16, generator=g)
    images = base + 0.8 * base.roll(1, dims=1) + 0.5 * base.roll(1, dims=3)    # correlated channels / pixels
    model = models.cifar_net(in_shape=(3, 16, 16))
    assert not model[0].weight.requires_grad                                   # frozen from the start
    models.whiten_init(model, images, eps=0.0)
    out = torch.nn.functional.conv2d(images, model[0].weight[:12])            # (N, 12, 15, 15), no bias
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(flat.T)
    assert torch.allclose(cov, torch.eye(12), atol=1e-3)                       # whitened: Σ = I
    assert torch.equal(model[0].weight[12:], -model[0].weight[:12])           # and the negated copies


def test_whiten_init_refuses_a_model_without_a_whitening_conv():
    with pytest.raises(ValueError, match="first layer is a 2x2 Conv2d"):
        models.whiten_init(models.create_model("lenet5"), torch.randn(4, 1, 28, 28))


def test_cifar_net_bn_scales_fixed_and_convs_start_as_identity():
    model = models.create_model("cifar_net")
    bns = [m for m in model if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.weight.requires_grad and bool((bn.weight == 1).all()) for bn in bns)
    square = [m for m in model if isinstance(m, torch.nn.Conv2d) and m.in_channels == m.out_channels]
    x = torch.randn(1, square[0].in_channels, 8, 8)
    assert torch.allclose(square[0](x), x, atol=1e-6)                         # dirac init: identity map


# ---------------------------------------------------------------------------------------------
# Bad knobs and tiny inputs (issue 13)
# ---------------------------------------------------------------------------------------------

def test_deep_convnet_on_mnist_builds_in_eval_mode_and_leaves_batchnorm_untouched():
    """Five pooled stages take 28x28 down to 1x1: the flat size is measured in eval mode (a batch of
    1 in train mode has no BatchNorm statistics, and would move the running ones)."""
    m = models.create_model("convnet", channels=(4,) * 5)
    bns = [b for b in m if isinstance(b, torch.nn.BatchNorm2d)]
    assert len(bns) == 5 and all(b.training for b in bns)
    assert all(int(b.num_batches_tracked) == 0 and bool((b.running_var == 1).all())
               and bool((b.running_mean == 0).all()) for b in bns)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    lenet = models.create_model("lenet5")
    assert lenet.training and all(mod.training for mod in lenet.modules())


@pytest.mark.parametrize("name, kw, match", [
    ("lenet5", {"in_shape": (1, 8, 8)}, "lenet5\\(channels=\\(20, 50\\)\\) does not fit input shape \\(1, 8, 8\\)"),
    ("cifar_net", {"in_shape": (3, 2, 2)}, "does not run on input shape \\(3, 2, 2\\)"),
])
def test_inputs_too_small_for_the_model_are_refused_naming_the_shape(name, kw, match):
    with pytest.raises(ValueError, match=match):
        models.create_model(name, **kw)


@pytest.mark.parametrize("name, kw, error, match", [
    ("convnet", {"channels": [True]}, ValueError, "channels must be an integer"),
    ("convnet", {"channels": [10 ** 9]}, ValueError, "channels must be an integer in \\[1, 4096\\]"),
    ("convnet", {"channels": "8"}, TypeError, "channels must be a sequence"),
    ("convnet", {"kernel_sizes": True, "channels": [4]}, ValueError, "kernel"),
    ("convnet", {"batchnorm": "yes"}, TypeError, "batchnorm must be True or False"),
    ("convnet", {"pool": "no"}, TypeError, "pool must be True or False"),
    ("convnet", {"in_shape": (1, 28)}, ValueError, "in_shape must be \\(C, H, W\\)"),
    ("mlp", {"hidden": [4096] * 10}, ValueError, "parameters; at most"),
    ("mlp", {"hidden": [8] * 65}, ValueError, "at most 64 entries"),
    ("mlp", {"dropout": 1.0}, ValueError, "dropout must be a finite number in \\[0, 1\\)"),
    ("mlp", {"dropout": float("nan")}, ValueError, "dropout"),
    ("mlp", {"num_classes": 0}, ValueError, "num_classes must be an integer"),
    ("mlp", {"num_classes": True}, ValueError, "num_classes must be an integer"),
    ("mlp", {"in_shape": (0, 28, 28)}, ValueError, "in_shape must be an integer >= 1"),
    ("mlp", {"activation": ["relu"]}, ValueError, "unknown activation"),
    ("mlp", {"hiden": (8,)}, TypeError, "unknown keyword 'hiden' for model 'mlp'; valid: hidden"),
    ("lenet5", {"channels": (1, 2, 3)}, ValueError, "two conv widths"),
    ("lenet5", {"hidden": 0}, ValueError, "hidden must be an integer"),
    ("cifar_cnn", {"width": float("inf")}, ValueError, "width must be a finite number"),
    ("cifar_resnet", {"width": 2.0}, ValueError, "width must be an integer"),
    ("cifar_resnet", {"blocks": (0,)}, ValueError, "blocks per stage"),
    ("cifar_net", {"logit_scale": float("nan")}, ValueError, "logit_scale"),
    (["mlp"], {}, ValueError, "unknown model"),
])
def test_bad_knobs_are_refused_before_building(name, kw, error, match):
    with pytest.raises(error, match=match):
        models.create_model(name, **kw)


def test_vit_sizes_and_knobs():
    vit = models.create_model("vit")
    assert count_params(vit) == 138_890                 # the probe's 139k ViT: patch 4, width 64, 4 x 4 heads
    linears = [m for m in vit.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 * 4 + 1                     # qkv, proj, fc1, fc2 per block, and the head
    with pytest.raises(ValueError, match="width 30 must be a multiple of heads 4"):
        models.create_model("vit", width=30)
    with pytest.raises(ValueError, match="patch"):
        models.create_model("vit", patch=29)
    with pytest.raises(ValueError, match="heads"):
        models.create_model("vit", heads=0)
