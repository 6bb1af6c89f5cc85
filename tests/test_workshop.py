"""make workshop: every baseline cached (a second run loads them all), bad dataset names refused first."""

import pytest

from mokit import workshop
from mokit.zoo import RECIPES


def test_plan_covers_every_recipe_and_the_extra_datasets():
    pairs = workshop.plan(["fashion_mnist", "cifar10"])
    assert [(n, RECIPES[n]["dataset"]) for n in RECIPES] == pairs[:len(RECIPES)]
    assert ("lenet300", "fashion_mnist") in pairs and ("lenet5", "cifar10") in pairs
    assert len(pairs) == len(set(pairs))
    with pytest.raises(ValueError, match=r"imagenet.*valid: .*mnist"):
        workshop.plan(["imagenet"])


def test_workshop_caches_every_baseline_then_loads_them(tmp_path, monkeypatch, capsys):
    """On one recipe and one extra dataset (the mechanism; `make workshop` trains them all)."""
    recipes = {"lenet300": RECIPES["lenet300"]}
    monkeypatch.setattr(workshop, "RECIPES", recipes)
    monkeypatch.setattr(workshop, "FOLLOW_DATASET", ("lenet300",))
    monkeypatch.setenv("MOKIT_STANDIN", "1")
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path / "runs"))
    assert workshop.main(["--smoke", "--no-student", "--datasets", "fashion_mnist"]) == 0
    first = capsys.readouterr().out
    n = len(recipes) + 1
    assert first.count(" trained ") == n and len(list((tmp_path / "cache" / "checkpoints").glob("*.pt"))) == n
    assert workshop.main(["--smoke", "--no-student", "--datasets", "fashion_mnist"]) == 0
    again = capsys.readouterr().out
    assert again.count(" loaded ") == n and " trained " not in again


def test_unknown_dataset_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path / "cache"))
    assert workshop.main(["--datasets", "imagenet"]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "checkpoints").exists()
