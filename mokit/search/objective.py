"""A training objective: config -> model, trained `budget` epochs, scored on validation data."""

from __future__ import annotations

import difflib
import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import validate
from .checks import check_callable

if TYPE_CHECKING:
    from torch import nn

    from ..data import TensorData

# train() arguments a config may not set: the objective sets them itself
_OBJECTIVE_SETS = ("model", "data", "epochs", "device", "seed", "progress")


class _ReadKeys(dict):
    """A config that records which keys its reader looked at (a read of all of them counts as all)."""

    def __init__(self, config: dict):
        super().__init__(config)
        self.read: set = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def _all(self):
        self.read.update(super().keys())

    def __iter__(self):
        self._all()
        return super().__iter__()

    def keys(self):
        self._all()
        return super().keys()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()

    def copy(self):
        self._all()
        return dict(super().items())


def check_config_keys(config: dict, build_read: set, accepted: set) -> None:
    """Refuse a config key that neither train() takes nor build(config) read (a typo, or a decision
    that would be searched over without any effect), naming it and what is taken."""
    unused = [k for k in config if k not in accepted and k not in build_read]
    if unused:
        k = unused[0]
        close = difflib.get_close_matches(str(k), [*accepted, *map(str, build_read)], n=1)
        raise ValueError(f"config key {k!r} is taken by neither train() nor build(config)"
                         f"{f' (did you mean {close[0]!r}?)' if close else ''}; build read "
                         f"{sorted(map(str, build_read)) or 'no key'}, train() takes {', '.join(sorted(accepted))}")


def train_objective(build: Callable[[dict], nn.Module], train_data: TensorData, val_data: TensorData, *,
                    seed: int = 0,
                    device=None, **train_kw) -> Callable[[dict, int], dict]:
    """objective(config, budget): build(config) -> model, train(epochs=budget), evaluate on val_data.

    Keys of config that train() accepts (lr, optimizer, batch_size, weight_decay, momentum,
    schedule) go to train(); the rest are for build. A key that neither train() takes nor build
    read is refused (ValueError naming it) after the build, before any training. Fixed train_kw
    that train() does not take are refused here, before the data moves.
    Returns val_acc (%), val_loss, params, seconds.
    The data moves to `device` (default: pick_device()) once, here, not once per trial; data
    already there is kept as it is (no copy).
    """
    check_callable("build", build, "build(config) -> model", optional=False)
    validate.integer("seed", seed)
    from ..metrics import count_params
    from ..train import evaluate, pick_device, seed_everything, train

    accepted = set(inspect.signature(train).parameters) - set(_OBJECTIVE_SETS)
    bad = [k for k in train_kw if k not in accepted]
    if bad:
        raise ValueError(f"train_objective() cannot pass {bad[0]!r} to train(); it passes "
                         f"{', '.join(sorted(accepted))} (and sets {', '.join(_OBJECTIVE_SETS[2:])} itself)")
    device = pick_device(device)
    train_data, val_data = train_data.to(device), val_data.to(device)     # once for every trial

    def objective(config: dict, budget: int) -> dict:
        seed_everything(seed)
        seen = _ReadKeys(config)
        model = build(seen)
        check_config_keys(config, seen.read, accepted)                    # before any training
        kw = {**train_kw, **{k: v for k, v in config.items() if k in accepted}}
        t0 = time.perf_counter()
        train(model, train_data, epochs=budget, seed=seed, progress=False, device=device, **kw)
        m = evaluate(model, val_data, device=device)
        return {"val_acc": m["accuracy"], "val_loss": m["loss"], "params": count_params(model),
                "train_seconds": time.perf_counter() - t0}
    return objective
