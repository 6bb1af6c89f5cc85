"""The usage examples in mokit's docstrings run and print what they say (doctest)."""

import doctest
import importlib
import pkgutil

import pytest

import mokit

MODULES = sorted(m.name for m in pkgutil.walk_packages(mokit.__path__, "mokit.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, (f"{name}: {result.failed} of {result.attempted} docstring examples failed "
                                "(run python -m doctest -v)")


def test_the_usage_blocks_are_examples():
    attempted = {name: doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS,
                                       verbose=False, report=False).attempted
                 for name in ("mokit.validate", "mokit.metrics")}
    assert all(n >= 2 for n in attempted.values()), attempted
