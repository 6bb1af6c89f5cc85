"""mokit.validate: the one way every module checks a number, an integer or a name."""
import math

import numpy as np
import pytest

from mokit import validate


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"), True,
                                 "1", None, [1.0], 1 + 2j])
def test_number_refuses_non_finite_bools_and_non_numbers(bad):
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0.*got"):
        validate.number("lr", bad, low=0, low_open=True)


@pytest.mark.parametrize("value, kw, ok", [
    (0.0, dict(low=0, high=1, high_open=True), True), (1.0, dict(low=0, high=1, high_open=True), False),
    (0.0, dict(low=0, low_open=True), False), (1e-12, dict(low=0, low_open=True), True),
    (np.float32(0.5), dict(low=0, high=1), True), (2, dict(high=1), False), (-5, {}, True)])
def test_number_bounds_open_and_closed(value, kw, ok):
    if ok:
        assert validate.number("x", value, **kw) == float(value)
        assert type(validate.number("x", value, **kw)) is float
    else:
        with pytest.raises(ValueError, match="x must be a finite number"):
            validate.number("x", value, **kw)


@pytest.mark.parametrize("bad", [True, False, 1.0, 2.5, math.nan, "3", None, 0, -1, np.int64(0)])
def test_integer_refuses_bools_floats_and_out_of_range(bad):
    with pytest.raises(ValueError, match=r"epochs must be an integer >= 1 \(passes over the data\), got"):
        validate.integer("epochs", bad, low=1, what="passes over the data")


def test_integer_accepts_numpy_integers_as_plain_ints():
    out = validate.integer("n", np.int64(3), low=1, high=3)
    assert out == 3 and type(out) is int
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 3\], got 4"):
        validate.integer("n", 4, low=1, high=3)


def test_choice_lists_the_valid_names_and_returns_the_entry():
    table = {"sgd": 1, "adam": 2}
    assert validate.choice("optimizer", "adam", table) == 2
    assert validate.choice("precision", "bf16", ("fp32", "bf16")) == "bf16"
    for bad in ["adamw", ["sgd"], None]:
        with pytest.raises(ValueError, match=r"unknown optimizer .*; valid names: sgd, adam"):
            validate.choice("optimizer", bad, table)
