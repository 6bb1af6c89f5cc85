"""mokit.data's argument checks: bad sizes, bools, NaN, empty data and path tricks are refused with a
ValueError naming the argument, before any work (nothing loaded, nothing written)."""

import os

import numpy as np
import pytest
import torch

from mokit import data

NAN, INF = float("nan"), float("inf")


def _tiny(n=20, classes=10):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    return data.TensorData(torch.randn(n, 1, 4, 4, generator=g), y, "mnist", "train",
                           tuple(map(str, range(classes))), real=False)


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a dataset is work: a bad argument must be refused before it starts."""
    def refuse(*a, **k):
        raise AssertionError("the dataset was loaded before the arguments were checked")
    monkeypatch.setattr(data, "_load_uint8", refuse)


@pytest.mark.parametrize("kw, match", [
    ({"subset": 10**9}, r"subset.*60000"),
    ({"subset": 60001}, r"subset.*60000"),
    ({"subset": True}, "subset"),
    ({"subset": 0}, "subset"),
    ({"subset": -5}, "subset"),
    ({"subset": 2.0}, "subset"),
    ({"subset": NAN}, "subset"),
    ({"subset": INF}, "subset"),
    ({"subset": "100"}, "subset"),
    ({"seed": NAN}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"name": ["mnist"]}, "dataset"),
    ({"name": None}, "dataset"),
    ({"split": "val"}, "split"),
    ({"split": 0}, "split"),
    ({"root": 5}, "root"),
])
def test_load_dataset_refuses_bad_arguments_before_loading(no_loading, kw, match):
    kw = {"name": "mnist", "split": "train", **kw}
    with pytest.raises(ValueError, match=match):
        data.load_dataset(kw.pop("name"), kw.pop("split"), **kw)


def test_a_subset_larger_than_the_split_it_found_is_refused_naming_its_size(standin):
    assert len(data.load_dataset("mnist", "test", subset=np.int64(100))) == 100    # NumPy ints are fine
    with pytest.raises(ValueError, match=r"subset 5000 .*2000 examples"):             # the stand-in's test split
        data.load_dataset("mnist", "test", subset=5000)
    assert len(data.load_dataset("mnist", "test", subset=2000)) == 2000


@pytest.mark.parametrize("call, match", [
    (lambda d: d.subset(True), "subset"),
    (lambda d: d.subset(0), "subset"),
    (lambda d: d.subset(21), r"subset.*20"),
    (lambda d: d.subset(NAN), "subset"),
    (lambda d: d.subset(5, seed=NAN), "seed"),
    (lambda d: d.subset(5, seed=True), "seed"),
    (lambda d: d.subset(10, balanced="yes"), "balanced"),
    (lambda d: d.subset(5, balanced=True), r"balanced.*10 classes"),
    (lambda d: d.subset(30, balanced=True), "subset"),
    (lambda d: d.split_off(True), "held-out"),
    (lambda d: d.split_off(20), "held-out"),
    (lambda d: d.split_off(0), "held-out"),
    (lambda d: d.split_off(INF), "held-out"),
    (lambda d: d.split_off(5, seed=NAN), "seed"),
    (lambda d: d.batches(True), "batch_size"),
    (lambda d: d.batches(0), "batch_size"),
    (lambda d: d.batches(NAN), "batch_size"),
    (lambda d: d.batches(8.0), "batch_size"),
    (lambda d: d.batches(8, seed=NAN), "seed"),
    (lambda d: d.batches(8, shuffle="no"), "shuffle"),
    (lambda d: d.batches(8, drop_last=1), "drop_last"),
    (lambda d: d.batches(8, augment="crop"), "augment"),
    (lambda d: data.Batches(d.take(slice(0, 0)), 8), "empty"),
    (lambda d: data.Batches([], 8), "TensorData"),
    (lambda d: data.Batches(None, 8), "TensorData"),
])
def test_tensor_data_methods_refuse_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(_tiny())


def test_a_balanced_subset_short_of_examples_in_a_class_is_refused():
    d = _tiny(n=20, classes=10)                      # 2 examples per class
    assert torch.bincount(d.subset(20, balanced=True).y).tolist() == [2] * 10
    skewed = data.TensorData(d.x, torch.tensor([0] * 11 + list(range(1, 10))), d.name, d.split, d.classes, d.real)
    assert torch.bincount(skewed.subset(10, balanced=True).y).tolist() == [1] * 10
    with pytest.raises(ValueError, match="class '1' has 1 example"):
        skewed.subset(20, balanced=True)             # 2 per class: it would silently return 11


def test_empty_batches_are_a_value_error_not_a_division_by_zero():
    empty = _tiny().take(slice(0, 0))
    with pytest.raises(ValueError, match="empty"):
        len(empty.batches(8))


@pytest.mark.parametrize("name", ["../../x", "../x", "a/b", "/etc/passwd", "..", ".", "", "a\\b", "x\0y",
                                  ".hidden", None, 5, ["x"]])
def test_checkpoint_path_stays_inside_the_cache(tmp_path, monkeypatch, name):
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="checkpoint name"):
        data.checkpoint_path(name)


def test_good_checkpoint_names_are_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path / "cache"))
    p = data.checkpoint_path("convnet-mnist-0123456789")
    assert p == (tmp_path / "cache" / "checkpoints" / "convnet-mnist-0123456789.pt").resolve()
    assert os.path.commonpath([p, tmp_path / "cache"]) == str((tmp_path / "cache").resolve())


@pytest.mark.parametrize("call, match", [
    (lambda x, g: data.random_crop(x, g, pad=-1), "pad"),
    (lambda x, g: data.random_crop(x, g, pad=True), "pad"),
    (lambda x, g: data.random_crop_flip(x, g, pad=NAN), "pad"),
    (lambda x, g: data.random_crop(x, None), "generator"),
])
def test_augment_helpers_refuse_bad_padding(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 1, 8, 8), torch.Generator().manual_seed(0))
