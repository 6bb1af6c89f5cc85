"""The model zoo: the baselines every notebook reuses, each trained once by its recipe and cached.

    model, info = baseline("lenet5")              # trained by RECIPES["lenet5"], or loaded from its checkpoint
    info["test_acc"], info["train"], info["test"]  # accuracy (measured once per checkpoint) and the data
    model, meta = load_or_train("lenet5", train_data, epochs=3, lr=1e-3)   # any settings, one checkpoint each

A checkpoint's name hashes everything that shapes the result (model, knobs, init, data, seed, training
settings), so SMOKE and full runs, or fp32 and bf16 runs, never share a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import cast

from torch import nn

from . import validate
from .data import TensorData, checkpoint_path
from .models import create_model, whiten_init
from .train import (
    check_train_args,
    evaluate,
    load_state,
    pick_device,
    resolve_precision,
    save_model,
    seed_everything,
    train,
)

# name -> init(model, train_data) run on a fresh model before training (data-dependent initialisation)
INITS: dict[str, Callable[[nn.Module, TensorData], object]] = {
    "none": lambda model, data: None,
    # patch whitening of the first conv
    "whiten": lambda model, data: whiten_init(cast(nn.Sequential, model), data.x[:5000]),
}


def load_or_train(model_name: str, data: TensorData, *, model_kw: dict | None = None, init: str = "none",
                  seed: int = 0, device=None, progress: bool = True, **train_kw) -> tuple[nn.Module, dict]:
    """The model `model_name` trained on `data` with `train_kw`, from its checkpoint when one exists.

    The checkpoint's name hashes everything that shapes the result (model, knobs, init, data, seed,
    training settings with the precision resolved for this device), so SMOKE runs and full runs,
    or fp32 and bf16 runs, never share a file.
    """
    make_init = validate.choice("init", init, INITS)
    train_kw["precision"] = resolve_precision(train_kw.get("precision", "fp32"), device)
    model_kw = dict(model_kw or {})
    model_kw.setdefault("in_shape", data.shape)
    model_kw.setdefault("num_classes", data.num_classes)
    key = {"model": model_name, "model_kw": model_kw, "init": init,
           "data": [data.name, data.split, len(data), data.real],
           "seed": seed, "train": {k: v for k, v in train_kw.items() if k not in ("val_data",)}}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = checkpoint_path(f"{model_name}-{data.name}-{digest}")
    seed_everything(seed)
    model = create_model(model_name, **model_kw)
    check_train_args(model, data, seed=seed, device=device, progress=progress, **train_kw)   # before any work
    if path.exists():
        try:
            state, meta = load_state(path)
            model.load_state_dict(state)
            return model.to(pick_device(device)), {**meta, "loaded": True, "path": str(path)}
        except (ValueError, RuntimeError) as e:
            print(f"checkpoint {path} unusable ({e}); training again")
    make_init(model, data)
    history = train(model, data, seed=seed, device=device, progress=progress, **train_kw)
    meta = {"key": json.loads(json.dumps(key, default=str)), "history": history.to_dict(),
            "train_seconds": sum(history.column("seconds"))}
    save_model(model, path, meta)
    return model, {**meta, "loaded": False, "path": str(path)}


# The recipes notebook 00 trains and every later notebook reuses (same settings -> same checkpoint).
RECIPES: dict[str, dict] = {
    "lenet300": {"dataset": "mnist", "epochs": 5, "optimizer": "adam", "lr": 2e-3, "schedule": "cosine",
                 "batch_size": 128},
    "lenet5": {"dataset": "mnist", "epochs": 5, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
               "batch_size": 128},
    "cifar_cnn": {"dataset": "cifar10", "epochs": 2, "optimizer": "adam", "lr": 3e-3, "schedule": "onecycle",
                  "batch_size": 256},
    "vit": {"dataset": "mnist", "epochs": 3, "optimizer": "adamw", "lr": 2e-3, "schedule": "warmup_cosine",
            "batch_size": 128},
    # the fast CIFAR-10 recipe (airbench-style, sized for a 2-core CPU; benchmarks/cifar_speed.py measures it)
    "cifar_net": {"dataset": "cifar10", "init": "whiten", "epochs": 8, "optimizer": "nesterov_split",
                  "lr": 0.375, "weight_decay": 0.00204, "schedule": "triangle", "batch_size": 256,
                  "label_smoothing": 0.2, "augment": "flip_translate", "lookahead": True,
                  "freeze": {"0.bias": 0.25}, "precision": "auto", "tta": "flip_translate", "smoke_epochs": 4},
}
SMOKE_TRAIN = 2000     # training examples used by smoke runs (SMOKE=True in the notebooks)
RECIPE_EXTRAS = ("dataset", "init", "tta", "smoke_epochs")   # recipe keys that are not train() arguments


def recipe_train_kw(model_name: str) -> dict:
    """The train() keyword arguments of RECIPES[model_name] (without dataset, init, tta, smoke_epochs)."""
    if not isinstance(model_name, str) or model_name not in RECIPES:
        raise ValueError(f"no baseline recipe for {model_name!r}; recipes exist for: {', '.join(RECIPES)}")
    return {k: v for k, v in RECIPES[model_name].items() if k not in RECIPE_EXTRAS}


def baseline(model_name: str, *, smoke: bool = False, dataset: str | None = None, seed: int = 0,
             device=None, progress: bool = True) -> tuple[nn.Module, dict]:
    """The baseline `model_name` trained by its RECIPES entry, loaded from its checkpoint if present.

    smoke=True trains 1 epoch (or the recipe's smoke_epochs) on SMOKE_TRAIN examples (tests); it never shares a
    checkpoint with the full recipe. Returns (model, info) where info has "train", "test" (TensorData on the
    device), "test_acc" and "seconds" (training time, 0 if it was loaded). The model is in eval mode.
    """
    from .data import load_dataset

    if model_name not in RECIPES:
        raise ValueError(f"no baseline recipe for {model_name!r}; recipes exist for: {', '.join(RECIPES)}")
    recipe = dict(RECIPES[model_name])
    dataset = dataset or recipe.pop("dataset")
    recipe.pop("dataset", None)
    tta = recipe.pop("tta", "none")
    smoke_epochs = recipe.pop("smoke_epochs", 1)     # cifar_net needs a few 8-step epochs to beat chance
    device = pick_device(device)
    train_data = load_dataset(dataset, "train", subset=SMOKE_TRAIN if smoke else None, device=device)
    test_data = load_dataset(dataset, "test", subset=1000 if smoke else None, device=device)
    if smoke:
        recipe["epochs"] = smoke_epochs
    model, meta = load_or_train(model_name, train_data, seed=seed, device=device, progress=progress, **recipe)
    model.eval()            # trained or loaded, it comes back ready to evaluate (train() switches it back)
    return model, {**meta, "train": train_data, "test": test_data,
                   "test_acc": _checkpoint_accuracy(model, meta, test_data, tta), "tta": tta,
                   "seconds": 0.0 if meta["loaded"] else meta["train_seconds"]}


def _checkpoint_accuracy(model: nn.Module, meta: dict, data: TensorData, tta: str) -> float:
    """evaluate(model, data, tta=tta) once per checkpoint, then kept in its meta: every notebook loads
    the baselines, and a TTA pass over CIFAR-10's test set costs seconds each time."""
    key = f"{data.name}/{data.split}/{len(data)}/{'real' if data.real else 'stand-in'}/tta={tta}"
    evals = dict(meta.get("evals", {}))
    if key not in evals:
        evals[key] = evaluate(model, data, tta=tta)["accuracy"]
        kept = {k: v for k, v in meta.items() if k not in ("loaded", "path")}
        save_model(model, meta["path"], {**kept, "evals": evals})
    meta["evals"] = evals
    return evals[key]

