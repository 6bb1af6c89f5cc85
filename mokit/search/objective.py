"""A training objective: config -> model, trained `budget` epochs, scored on validation data."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable

from .. import validate
from .checks import check_callable


def train_objective(build: Callable[[dict], object], train_data, val_data, *, seed: int = 0,
                    device=None, **train_kw) -> Callable[[dict, int], dict]:
    """objective(config, budget): build(config) -> model, train(epochs=budget), evaluate on val_data.

    Keys of config that train() accepts (lr, optimizer, batch_size, weight_decay, momentum,
    schedule) go to train(); the rest are for build. Returns val_acc (%), val_loss, params, seconds.
    The data moves to `device` (default: pick_device()) once, here, not once per trial; data
    already there is kept as it is (no copy).
    """
    check_callable("build", build, "build(config) -> model", optional=False)
    validate.integer("seed", seed)
    from ..metrics import count_params
    from ..train import evaluate, pick_device, seed_everything, train

    accepted = set(inspect.signature(train).parameters) - {"model", "data", "epochs", "device"}
    device = pick_device(device)
    train_data, val_data = train_data.to(device), val_data.to(device)     # once for every trial

    def objective(config: dict, budget: int) -> dict:
        seed_everything(seed)
        model = build(config)
        kw = {**train_kw, **{k: v for k, v in config.items() if k in accepted}}
        t0 = time.perf_counter()
        train(model, train_data, epochs=budget, seed=seed, progress=False, device=device, **kw)
        m = evaluate(model, val_data, device=device)
        return {"val_acc": m["accuracy"], "val_loss": m["loss"], "params": count_params(model),
                "train_seconds": time.perf_counter() - t0}
    return objective


