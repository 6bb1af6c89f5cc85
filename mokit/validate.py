"""One way to check arguments: every module says a bad value the same way, before any work starts.

    >>> number("lr", 0.01, low=0, low_open=True)          # a finite real > 0
    0.01
    >>> integer("epochs", 3, low=1)                       # an integer >= 1
    3
    >>> choice("precision", "bf16", ["fp32", "bf16", "fp16"])
    'bf16'
    >>> number("lr", float("nan"), low=0, low_open=True)
    Traceback (most recent call last):
    ...
    mokit.validate.ArgumentError: lr must be a finite number > 0, got nan
    >>> integer("epochs", True, low=1)                    # True is not 1
    Traceback (most recent call last):
    ...
    mokit.validate.ArgumentError: epochs must be an integer >= 1, got True
    >>> flag("verbose", "yes")                            # a switch is True or False, never a truthy string
    Traceback (most recent call last):
    ...
    mokit.validate.ArgumentError: verbose must be True or False, got 'yes'

Each returns the value as a plain Python float / int / bool / the table's entry, and raises ArgumentError
naming the argument, the value and what is allowed. ArgumentError is both a ValueError and a TypeError, so
either `except` catches it. NumPy scalars count as numbers and NumPy bools as flags; bools are never numbers.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Literal, overload


class ArgumentError(ValueError, TypeError):
    """A bad argument: the wrong kind of value (a TypeError) or one out of range (a ValueError)."""


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def _in_range(v, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and (v < low or (low_open and v == low)):
        return False
    return not (high is not None and (v > high or (high_open and v == high)))


def _fail(name: str, kind: str, value, what: str):
    raise ArgumentError(f"{name} must be {kind}{f' ({what})' if what else ''}, got {value!r}")


def number(name: str, value, *, low=None, high=None, low_open: bool = False, high_open: bool = False,
           what: str = "") -> float:
    """`value` as a float: a finite real (not a bool) within the bounds, else ArgumentError."""
    kind = "a finite number" + _range_text(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not _in_range(value, low, high, low_open, high_open):
        _fail(name, kind, value, what)
    return float(value)


def integer(name: str, value, *, low=None, high=None, what: str = "") -> int:
    """`value` as an int: an integer (not a bool; NumPy integers allowed) within the bounds, else ArgumentError."""
    kind = "an integer" + _range_text(low, high, False, False)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not _in_range(value, low, high, False, False):
        _fail(name, kind, value, what)
    return int(value)


def choice(name: str, value, allowed: dict | Iterable):
    """The entry of `allowed` (a dict: its value; any other iterable: the name itself) called `value`."""
    names = list(allowed)
    try:
        ok = value in names
    except TypeError:       # unhashable or uncomparable values are simply not names
        ok = False
    if not ok:
        raise ArgumentError(f"unknown {name} {value!r}; valid names: {', '.join(map(str, names))}")
    return allowed[value] if isinstance(allowed, dict) else value


@overload
def flag(name: str, value, *, none_ok: Literal[False] = False) -> bool: ...
@overload
def flag(name: str, value, *, none_ok: bool) -> bool | None: ...
def flag(name: str, value, *, none_ok: bool = False) -> bool | None:
    """`value` as a bool: True or False (NumPy bools too; None when none_ok), else ArgumentError."""
    if none_ok and value is None:
        return None
    if type(value).__name__ not in ("bool", "bool_"):
        raise ArgumentError(f"{name} must be True or False{' (or None)' if none_ok else ''}, got {value!r}")
    return bool(value)
