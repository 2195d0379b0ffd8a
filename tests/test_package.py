"""The package's surface: every public name is importable and documented."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import minillm


def test_top_level_names_resolve_and_have_docstrings():
    for name in minillm.__all__:
        obj = getattr(minillm, name)
        assert inspect.getdoc(obj), f"minillm.{name} has no docstring"


def test_every_module_has_a_docstring_and_documented_public_functions():
    undocumented = []
    for info in pkgutil.walk_packages(minillm.__path__, "minillm."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        assert module.__doc__ and module.__doc__.strip(), f"{info.name} has no module docstring"
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != info.name:
                continue
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj):
                undocumented.append(f"{info.name}.{name}")
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_submodules_are_not_shadowed_by_reexports():
    import types

    for info in pkgutil.iter_modules(minillm.__path__):
        importlib.import_module(f"minillm.{info.name}")
        assert isinstance(getattr(minillm, info.name), types.ModuleType), f"minillm.{info.name} is shadowed"
