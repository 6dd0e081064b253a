"""Fixtures of the experiments tests: a registered dummy experiment."""

import importlib.util
import pathlib
import sys

import pytest

from experiments import registry

_NAME = "_paretolab_dummy_experiment"


@pytest.fixture
def dummy(monkeypatch):
    """Register tests/experiments/_dummy_experiment.py as experiment "dummy"; yields the module."""
    path = pathlib.Path(__file__).with_name("_dummy_experiment.py")
    spec = importlib.util.spec_from_file_location(_NAME, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, _NAME, module)
    spec.loader.exec_module(module)
    monkeypatch.setitem(registry.EXPERIMENTS, "dummy", _NAME)
    module.CALLS.clear()
    yield module
