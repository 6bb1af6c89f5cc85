"""Neural-architecture search: architecture spaces -> models through the registry, mutations,
cost constraints (params, MACs, measured latency) and Pareto fronts.

    space = conv_space(max_conv=3)                  # a mokit.search space of decisions
    model = build(sample(space, rng))               # create_model("convnet", channels=..., ...)
    ok = constraint(max_params=20_000)              # config -> bool, no training needed
    result = search.evolution(arch_objective(train, val), space, budget=1, n_trials=20,
                              mutate_fn=mutate_arch, feasible=ok, metric="val_acc")
    front = pareto_front([t.metrics for t in result.trials], {"val_acc": True, "params": False})

A config is a flat dict of decisions (n_conv, c0, k0, pool0, ..., n_dense, d0, ..., activation,
batchnorm, global_pool) so every strategy of mokit.search works on it unchanged.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import nn

from . import search, validate
from .data import TensorData
from .metrics import check_objectives, dominates, pareto_front  # noqa: F401 - re-exported: nas.pareto_front
from .search import choice, int_range, repair

# ---------------------------------------------------------------------------------------------
# 1. Spaces and the config -> model map
# ---------------------------------------------------------------------------------------------

def _count(low: int, high: int):
    return int_range(low, high) if high > low else choice(low)


def _options(name: str, values, check: Callable) -> tuple:
    """A non-empty sequence of options, each passed through `check` (which raises on a bad one)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty sequence of options, got {values!r}")
    return tuple(check(v) for v in values)


def _width(name: str):
    from .models import MAX_WIDTH
    return lambda v: validate.integer(name, v, low=1, high=MAX_WIDTH)


def _bool(name: str):
    return lambda v: validate.flag(f"{name} options", v)


def _activation_name(v):
    from .models import ACTIVATIONS
    return validate.choice("activations", v, list(ACTIVATIONS))


def conv_space(*, max_conv: int = 3, channels: Sequence[int] = (4, 8, 16, 32), kernels: Sequence[int] = (3, 5),
               max_dense: int = 1, widths: Sequence[int] = (16, 32, 64),
               activations: Sequence[str] = ("relu", "gelu", "silu"),
               batchnorm: Sequence[bool] = (True, False), global_pool: Sequence[bool] = (False, True)) -> dict:
    """Convnets: 1..max_conv conv stages (channels, kernel, pool each), 0..max_dense dense layers
    (width each), one activation, batchnorm on/off, flatten or global average pooling."""
    max_conv = validate.integer("max_conv", max_conv, low=1, high=16)
    max_dense = validate.integer("max_dense", max_dense, low=0, high=16)
    channels = _options("channels", channels, _width("channels"))
    kernels = _options("kernels", kernels, lambda k: validate.choice("kernels", validate.integer("kernels", k),
                                                                     (1, 3, 5, 7)))
    widths = _options("widths", widths, _width("widths"))
    activations = _options("activations", activations, _activation_name)
    batchnorm = _options("batchnorm", batchnorm, _bool("batchnorm"))
    global_pool = _options("global_pool", global_pool, _bool("global_pool"))
    space: dict = {"n_conv": _count(1, max_conv)}
    for i in range(max_conv):
        when = {"n_conv": list(range(i + 1, max_conv + 1))} if i else None
        space[f"c{i}"] = choice(*channels, when=when)
        space[f"k{i}"] = choice(*kernels, when=when)
        space[f"pool{i}"] = choice(True, False, when=when)
    space["n_dense"] = _count(0, max_dense)
    for j in range(max_dense):
        space[f"d{j}"] = choice(*widths, when={"n_dense": list(range(j + 1, max_dense + 1))})
    space["activation"] = choice(*activations)
    space["batchnorm"] = choice(*batchnorm)
    space["global_pool"] = choice(*global_pool)
    return search.validate_space(space)


def mlp_space(*, max_layers: int = 3, widths: Sequence[int] = (32, 64, 128, 256, 512),
              activations: Sequence[str] = ("relu", "gelu", "tanh")) -> dict:
    """MLPs: 1..max_layers hidden layers (width each) and one activation."""
    max_layers = validate.integer("max_layers", max_layers, low=1, high=16)
    widths = _options("widths", widths, _width("widths"))
    activations = _options("activations", activations, _activation_name)
    space: dict = {"n_hidden": _count(1, max_layers)}
    for i in range(max_layers):
        space[f"h{i}"] = choice(*widths, when={"n_hidden": list(range(i + 1, max_layers + 1))} if i else None)
    space["activation"] = choice(*activations)
    return search.validate_space(space)


def model_kwargs(config: dict) -> tuple[str, dict]:
    """(registry name, keyword knobs) of an architecture config."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict of decisions, got {type(config).__name__}")
    if "n_conv" in config:
        n, m = config["n_conv"], config.get("n_dense", 0)
        return "convnet", {"channels": [config[f"c{i}"] for i in range(n)],
                           "kernel_sizes": [config[f"k{i}"] for i in range(n)],
                           "pool": [bool(config[f"pool{i}"]) for i in range(n)],
                           "dense": [config[f"d{j}"] for j in range(m)],
                           "activation": config.get("activation", "relu"),
                           "batchnorm": bool(config.get("batchnorm", True)),
                           "global_pool": bool(config.get("global_pool", False))}
    if "n_hidden" in config:
        return "mlp", {"hidden": [config[f"h{i}"] for i in range(config["n_hidden"])],
                       "activation": config.get("activation", "relu")}
    raise ValueError(f"not an architecture config (needs n_conv or n_hidden): {sorted(config)}")


def build(config: dict, in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """The model of an architecture config, made by the registry (models.create_model)."""
    from .models import create_model

    name, kw = model_kwargs(config)
    return create_model(name, in_shape=tuple(in_shape), num_classes=num_classes, **kw)


def describe(config: dict) -> str:
    """A one-line summary, e.g. 'conv 8k3p-16k5p | dense 32 | relu bn flat'."""
    name, kw = model_kwargs(config)
    if name == "mlp":
        return f"mlp {'-'.join(map(str, kw['hidden']))} {kw['activation']}"
    convs = "-".join(f"{c}k{k}{'p' if p else ''}" for c, k, p in zip(kw["channels"], kw["kernel_sizes"], kw["pool"]))
    dense = "-".join(map(str, kw["dense"])) or "none"
    return (f"conv {convs} | dense {dense} | {kw['activation']}{' bn' if kw['batchnorm'] else ''} "
            f"{'gap' if kw['global_pool'] else 'flat'}")


# ---------------------------------------------------------------------------------------------
# 2. Mutations for evolution and hill-climbing
# ---------------------------------------------------------------------------------------------

def _step(space: dict, config: dict, name: str, direction: int) -> dict | None:
    """config with decision `name` moved to the neighbouring option / integer (None if at an end)."""
    p = space[name]
    if p.kind == "choice":
        i = p.options.index(config[name]) + direction
        if not 0 <= i < len(p.options):
            return None
        return {**config, name: p.options[i]}
    v = config[name] + direction
    return {**config, name: v} if p.low <= v <= p.high else None


def _active(space: dict, config: dict, prefix: str) -> list[str]:
    return [n for n in config if n.startswith(prefix) and n[len(prefix):].isdigit()]


# name -> (space, config, rng) -> new config or None (not applicable)
MUTATIONS: dict[str, Callable] = {
    "add_layer": lambda s, c, r: _step(s, c, "n_conv" if "n_conv" in c else "n_hidden", +1),
    "remove_layer": lambda s, c, r: _step(s, c, "n_conv" if "n_conv" in c else "n_hidden", -1),
    "widen": lambda s, c, r: _step(s, c, r.choice(_active(s, c, "c") or _active(s, c, "h")), +1),
    "narrow": lambda s, c, r: _step(s, c, r.choice(_active(s, c, "c") or _active(s, c, "h")), -1),
    "kernel": lambda s, c, r: _step(s, c, r.choice(_active(s, c, "k")), r.choice((-1, 1)))
    if _active(s, c, "k") else None,
    "pool": lambda s, c, r: _step(s, c, r.choice(_active(s, c, "pool")), r.choice((-1, 1)))
    if _active(s, c, "pool") else None,
    "dense": lambda s, c, r: _step(s, c, r.choice(["n_dense", *_active(s, c, "d")]), r.choice((-1, 1)))
    if "n_dense" in c else None,
    "activation": lambda s, c, r: {**c, "activation": r.choice(
        [o for o in s["activation"].options if o != c["activation"]])} if len(s["activation"].options) > 1 else None,
    "head": lambda s, c, r: _step(s, c, r.choice([n for n in ("batchnorm", "global_pool") if n in c]),
                                  r.choice((-1, 1))) if "batchnorm" in c else None,
}


def mutate_arch(space: dict, config: dict, rng: random.Random) -> dict:
    """Apply one named MUTATION drawn at random (add/remove a layer, widen/narrow a layer, change a
    kernel, a pooling, the head, the activation); new layers get random decisions, as in repair."""
    names = list(MUTATIONS)
    for _ in range(100):
        name = names[rng.randrange(len(names))]
        new = MUTATIONS[name](space, config, rng)
        if new is not None and new != config:
            return repair(space, {k: new[k] for k in space if k in new}, rng)
    return search.mutate(space, config, rng)


# ---------------------------------------------------------------------------------------------
# 3. Costs and constraints (no training needed)
# ---------------------------------------------------------------------------------------------

COST_CACHE_SIZE = 4096     # architectures whose costs arch_cost keeps (least recently used dropped first)
_COSTS: OrderedDict[tuple, dict] = OrderedDict()


def arch_cost(config: dict, in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
              latency: bool = False, repeats: int = 20) -> dict:
    """{"params", "macs"(, "latency_ms": median ms per example at batch 1)} of the built model.

    Costs are cached per (config, in_shape, num_classes, latency), at most COST_CACHE_SIZE of them."""
    from .metrics import count_macs, count_params, measure_latency

    validate.flag("latency", latency)
    repeats = validate.integer("repeats", repeats, low=1, high=10_000)
    in_shape, num_classes = _shape_and_classes(in_shape, num_classes)

    key = (search.trial_key(config, 1), tuple(in_shape), num_classes, latency)
    if key in _COSTS:
        _COSTS.move_to_end(key)                       # recently used: dropped last
    else:
        model = build(config, in_shape, num_classes)
        cost = {"params": count_params(model), "macs": count_macs(model, in_shape)}
        if latency:
            cost["latency_ms"] = measure_latency(model, in_shape, batch_size=1, repeats=repeats)["ms"]
        _COSTS[key] = cost
        while len(_COSTS) > COST_CACHE_SIZE:          # bounded: a long search does not grow it forever
            _COSTS.popitem(last=False)
    return dict(_COSTS[key])


def _shape_and_classes(in_shape, num_classes) -> tuple[tuple[int, ...], int]:
    from .models import check_in_shape, check_num_classes
    return check_in_shape(in_shape, image=False), check_num_classes(num_classes)


def constraint(*, max_params: int | None = None, max_macs: int | None = None,
               max_latency_ms: float | None = None, in_shape: Sequence[int] = (1, 28, 28),
               num_classes: int = 10) -> Callable[[dict], bool]:
    """feasible(config) -> bool: params <= max_params, MACs <= max_macs, latency <= max_latency_ms."""
    limits = {"params": max_params, "macs": max_macs, "latency_ms": max_latency_ms}
    for k, v in limits.items():
        if v is not None:
            limits[k] = validate.number(f"max_{k}", v, low=0, low_open=True, what="or None")
    in_shape, num_classes = _shape_and_classes(in_shape, num_classes)
    if all(v is None for v in limits.values()):
        raise ValueError("constraint() needs at least one of max_params, max_macs, max_latency_ms")

    def feasible(config: dict) -> bool:
        cost = arch_cost(config, in_shape, num_classes, latency=max_latency_ms is not None)
        return all(v is None or cost[k] <= v for k, v in limits.items())
    return feasible


def arch_objective(train_data: TensorData, val_data: TensorData, *, seed: int = 0, latency: bool = False,
                   device=None,
                   **train_kw) -> Callable[[dict, int], dict]:
    """objective(config, budget): build, train `budget` epochs, val_acc + params, MACs (+ latency).

    The data moves to `device` once (search.train_objective), not once per architecture.
    """
    seed = validate.integer("seed", seed)
    validate.flag("latency", latency)
    shape, k = train_data.shape, train_data.num_classes
    inner = search.train_objective(lambda c: build(c, shape, k), train_data, val_data, seed=seed,
                                   device=device, **train_kw)

    def objective(config: dict, budget: int) -> dict:
        return {**inner(config, budget), **arch_cost(config, shape, k, latency=latency)}
    return objective


# ---------------------------------------------------------------------------------------------
# 4. Pareto fronts
# ---------------------------------------------------------------------------------------------

def trial_front(trials: Sequence, objectives: dict[str, bool]) -> list:
    """The successful trials on the Pareto front of `objectives` (metrics of each trial); trials
    with NaN in an objective are left off, as in pareto_front."""
    objectives = check_objectives(objectives)
    unique = {search.trial_key(t.config, t.budget): t for t in trials}      # one per (config, budget)
    ok = [t for t in unique.values() if t.status == "ok" and all(k in t.metrics for k in objectives)]
    return [ok[i] for i in pareto_front([t.metrics for t in ok], objectives)]
