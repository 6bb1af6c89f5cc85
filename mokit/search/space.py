"""Search spaces: categorical choices, int / float ranges (optionally log), conditions (`when=`).

A space is a dict {name: Param}; sample / grid / values / repair / mutate turn it into configs.
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass

from .. import validate
from .checks import MAX_COUNT


@dataclass(frozen=True)
class Param:
    """One decision. kind: 'choice' (options) | 'int' | 'float' (low..high, inclusive, log?).

    when={"other": [values]} makes it active only when an earlier decision took one of those values.
    """
    kind: str
    options: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    when: tuple = ()          # ((name, (values, ...)), ...)


def _when(when: dict | None) -> tuple:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when or not all(isinstance(k, str) and k for k in when):
        raise ValueError(f"when must be a non-empty dict {{name: [values]}}, got {when!r}")
    out = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else (v,)) for k, v in when.items())
    for k, values_ in out:
        if not values_:
            raise ValueError(f"when[{k!r}] must list at least one value, got {when[k]!r}")
    return out


def _plain_option(o):
    """An option as the trial log stores it: None, a bool, a string, a finite number, or a tuple of them."""
    if isinstance(o, (list, tuple)):
        return tuple(_plain_option(x) for x in o)
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):      # numpy / torch scalars
        o = o.item()
    if o is None or isinstance(o, (bool, str)) or (isinstance(o, numbers.Real) and math.isfinite(o)):
        return o
    raise ValueError(f"a choice option must be None, a bool, a string, a finite number or a tuple of them "
                     f"(the trial log holds it as JSON), got {o!r}")


def choice(*options, when: dict | None = None) -> Param:
    """A categorical decision among `options` (None, bools, strings, finite numbers, tuples of them)."""
    if not options:
        raise ValueError("choice() needs at least one option")
    options = tuple(_plain_option(o) for o in options)
    if len(set(map(repr, options))) != len(options):
        raise ValueError(f"choice options must be distinct, got {options}")
    return Param("choice", options=options, when=_when(when))


def _range(kind: str, low, high, log: bool, when) -> Param:
    check = validate.integer if kind == "int" else validate.number
    low, high = check(f"{kind}_range low", low), check(f"{kind}_range high", high)
    validate.flag(f"{kind}_range log", log)
    if low >= high:
        raise ValueError(f"{kind}_range needs low < high, got low={low}, high={high}")
    if log and low <= 0:
        raise ValueError(f"a log-scale {kind}_range must lie above 0, got low={low} (use a choice for 0)")
    return Param(kind, low=low, high=high, log=log, when=_when(when))


def int_range(low: int, high: int, *, log: bool = False, when: dict | None = None) -> Param:
    """Integers low..high inclusive (log=True: uniform in log space, e.g. widths)."""
    return _range("int", low, high, log, when)


def float_range(low: float, high: float, *, log: bool = False, when: dict | None = None) -> Param:
    """Reals in [low, high] (log=True: log-uniform, e.g. learning rates)."""
    return _range("float", low, high, log, when)


def validate_space(space: dict) -> dict:
    """Check a space up front: non-empty, Params only, conditions on earlier decisions' values."""
    if not isinstance(space, dict) or not space:
        raise ValueError(f"a search space must be a non-empty dict of name -> Param, got {space!r}")
    seen: dict[str, Param] = {}
    for name, p in space.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"a search space's decision names must be non-empty strings, got name {name!r}")
        if not isinstance(p, Param):
            raise ValueError(f"space[{name!r}] must be a Param from choice/int_range/float_range, got {p!r}")
        for other, values in p.when:
            if other not in seen:
                raise ValueError(f"space[{name!r}] depends on {other!r}, which must be defined before it")
            if seen[other].kind == "choice" and not set(map(repr, values)) <= set(map(repr, seen[other].options)):
                raise ValueError(f"space[{name!r}]: when {other!r} in {list(values)}, but {other!r} "
                                 f"only takes {list(seen[other].options)}")
        seen[name] = p
    return space


def is_active(p: Param, config: dict) -> bool:
    """Whether decision p is taken, given the decisions already in config."""
    return all(k in config and config[k] in values for k, values in p.when)


def _draw(p: Param, rng: random.Random):
    if p.kind == "choice":
        return p.options[rng.randrange(len(p.options))]
    if p.kind == "float":
        return math.exp(rng.uniform(math.log(p.low), math.log(p.high))) if p.log else rng.uniform(p.low, p.high)
    if p.log:   # log-uniform over the integers: floor of a log-uniform real in [low, high + 1)
        return min(int(p.high), int(math.exp(rng.uniform(math.log(p.low), math.log(p.high + 1)))))
    return rng.randint(int(p.low), int(p.high))


def sample(space: dict, rng: random.Random) -> dict:
    """One random config: each active decision drawn in order (inactive ones left out)."""
    config: dict = {}
    for name, p in space.items():
        if is_active(p, config):
            config[name] = _draw(p, rng)
    return config


def values(p: Param, points: int = 3) -> list:
    """`points` evenly spaced values of a range (log-spaced if log), or a choice's options."""
    points = validate.integer("points", points, low=1, high=MAX_COUNT, what="values per range")
    if p.kind == "choice":
        return list(p.options)
    ts = [0.5] if points == 1 else [i / (points - 1) for i in range(points)]
    lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
    out = [math.exp(lo + t * (hi - lo)) if p.log else lo + t * (hi - lo) for t in ts]
    return sorted({round(v) for v in out}) if p.kind == "int" else out


def grid(space: dict, points: int | dict = 3) -> list[dict]:
    """Every combination of `values(p, points)` over the active decisions (points may be per name)."""
    validate_space(space)
    points = _check_points(space, points)
    configs: list[dict] = [{}]
    for name, p in space.items():
        k = points.get(name, 3) if isinstance(points, dict) else points
        configs = [{**c, name: v} if is_active(p, c) else c
                   for c in configs for v in (values(p, k) if is_active(p, c) else [None])]
    return configs


def _check_points(space: dict, points) -> int | dict:
    """points: values per range, one integer >= 1 for every range or a dict of them by decision name."""
    if isinstance(points, dict):
        unknown = [k for k in points if k not in space]
        if unknown:
            raise ValueError(f"points names {unknown} that are not decisions of the space ({', '.join(space)})")
        return {k: validate.integer(f"points[{k!r}]", v, low=1, what="values per range") for k, v in points.items()}
    return validate.integer("points", points, low=1, high=MAX_COUNT, what="values per range, or a dict of them by name")


def repair(space: dict, config: dict, rng: random.Random) -> dict:
    """Keep config's valid active decisions in order; drop inactive ones, draw newly active ones."""
    out: dict = {}
    for name, p in space.items():
        if is_active(p, out):
            out[name] = config[name] if name in config else _draw(p, rng)
    return out


def mutate(space: dict, config: dict, rng: random.Random) -> dict:
    """Change one active decision: another option, or a range value moved by a Gaussian step.

    Range step: x' = x + N(0, (0.2 * (high - low))^2), in log space for log ranges, clipped.
    """
    names = [n for n in config if n in space]
    movable = [n for n in names if space[n].kind != "choice" or len(space[n].options) > 1]
    if not movable:
        return dict(config)
    name = movable[rng.randrange(len(movable))]
    p, new = space[name], dict(config)
    if p.kind == "choice":
        new[name] = rng.choice([o for o in p.options if o != config[name]])
    else:
        f, inv = (math.log, math.exp) if p.log else (float, float)
        step = rng.gauss(0, 0.2 * (f(p.high) - f(p.low)))
        x = min(max(inv(f(config[name]) + step), p.low), p.high)
        if x == config[name]:                         # clipped at a bound: step the other way
            x = min(max(inv(f(config[name]) - step), p.low), p.high)
        if p.kind == "int":
            x = round(x)
            if x == config[name]:
                x = min(max(x + rng.choice((-1, 1)), int(p.low)), int(p.high))
        new[name] = x
    return repair(space, new, rng)


