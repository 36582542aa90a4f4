"""The docstring examples of every module of the reference engine run (the package's own walk in
``tests/test_structure.py`` covers ``pyrofail/`` and not the subpackages installed from ``analysis/``)."""

import doctest
import importlib
import pkgutil

import pytest

import pyrofail.analysis.reference as reference

MODULES = sorted(info.name for info in pkgutil.iter_modules(reference.__path__, reference.__name__ + "."))


@pytest.mark.parametrize("name", [reference.__name__, *MODULES])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
