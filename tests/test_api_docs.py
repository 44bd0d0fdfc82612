"""The public names of ``hassod`` (its ``__all__``) document themselves: every function says
what it returns and raises and annotates its parameters; every class has a docstring."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

import hassod

FUNCTIONS = [name for name in hassod.__all__ if inspect.isfunction(getattr(hassod, name, None))]
CLASSES = [name for name in hassod.__all__ if inspect.isclass(getattr(hassod, name, None))]


def test_the_lists_found_the_api():
    assert {"fast_cluster", "build_hierarchy", "dedup_masks"} <= set(FUNCTIONS)
    assert {"ClusterResult", "Hierarchy"} <= set(CLASSES)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_functions_state_returns_raises_and_types(name):
    function = getattr(hassod, name)
    doc = inspect.getdoc(function) or ""
    assert "Args:" in doc and "Returns:" in doc and "Raises:" in doc, name
    signature = inspect.signature(function)
    untyped = [p for p, v in signature.parameters.items() if v.annotation is v.empty]
    assert not untyped, f"{name}: parameters without a type hint: {untyped}"
    assert signature.return_annotation is not signature.empty, name
    for parameter in signature.parameters:
        assert parameter in doc, f"{name}'s docstring does not mention {parameter}"


@pytest.mark.parametrize("name", CLASSES)
def test_classes_document_their_fields(name):
    cls = getattr(hassod, name)
    doc = inspect.getdoc(cls) or ""
    assert "Attributes:" in doc, name
    for field in getattr(cls, "__dataclass_fields__", {}):
        assert field in doc, f"{name}'s docstring does not describe {field}"


def test_the_package_docstring_maps_the_pipeline_to_names_that_exist():
    """help(hassod) names the modules of the pipeline and their entry points: each exists."""
    doc = hassod.__doc__
    for name in re.findall(r":(?:func|class):`(\w+)`", doc):
        assert name in hassod.__all__, name
    bullets = re.findall(r"^\* (.*?)(?=^\*|^$)", doc, flags=re.MULTILINE | re.DOTALL)
    assert len(bullets) >= 6
    for bullet in bullets:
        modules = re.findall(r":mod:`(hassod[\w.]*)`", bullet)
        assert modules, bullet
        for name in re.findall(r"``(\w+)``", bullet):
            owners = [importlib.import_module(module) for module in modules]
            assert any(hasattr(owner, name) for owner in owners), (modules, name)
