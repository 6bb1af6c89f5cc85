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
    with pytest.raises(ValueError, match="valid names: .*lenet5"):
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
