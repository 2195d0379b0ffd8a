"""The package's surface: every public name is importable, documented and imported lazily."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import types

import pytest

import minillm


@pytest.mark.parametrize("name", minillm.__all__)
def test_top_level_names_resolve_and_have_docstrings(name):
    module = minillm._EXPORTS[name] or name
    if importlib.util.find_spec(f"minillm.{module}") is None:
        pytest.skip(f"minillm.{module} has not landed yet")
    obj = getattr(minillm, name)
    assert inspect.getdoc(obj), f"minillm.{name} has no docstring"
    if minillm._EXPORTS[name]:  # defined where the map says
        assert getattr(obj, "__module__", None) == f"minillm.{module}", (name, obj)


def test_the_public_names_are_the_ones_builders_reach_for():
    from minillm import errors

    expected = {
        "GPT", "GPTConfig", "AttentionConfig", "CausalSelfAttention", "KVCache", "AdamW", "make_optimizer",
        "BPETokenizer", "CharTokenizer", "Tokenizer", "load_tokenizer", "download", "load", "read_text",
        "SlidingWindowDataset", "TokenShards", "get_batch", "make_dataloader", "read_shards", "split_tokens",
        "write_shards", "TrainConfig", "preset_config", "prepare_corpus", "open_corpus", "TrainResult",
        "load_model", "save_checkpoint", "load_checkpoint", "pretrained_tiny", "book_model", "book_run", "book_config", "book_scale", "curated_stdlib", "list_tasks", "export_hf", "complete",
        "stream_text", "scaling", "FamilyConfig", "MaskedLM", "EncoderClassifier", "Seq2SeqLM", "QuantizedLinear", "load_quantized",
        "speculative_generate", "CodeTask", "load_code_task", "generate_samples", "evaluate_samples", "pass_at_k",
        "run_code", "function_pairs", "code_tasks", *errors.__all__,
    }  # fmt: skip
    assert set(minillm.__all__) == expected
    assert minillm.__all__ == sorted(minillm.__all__)
    assert set(minillm.__all__) <= set(dir(minillm))


def test_module_map_in_the_docstring_names_every_module():
    """The table of `minillm/__init__.py` is how a reader finds a chapter's code: it must stay true."""
    listed = set(re.findall(r"^``(\w+)``", minillm.__doc__, re.M))  # the table's first column
    modules = {info.name for info in pkgutil.iter_modules(minillm.__path__)} - {"__main__"}
    assert listed == modules, f"missing from the table: {sorted(modules - listed)}; gone: {sorted(listed - modules)}"


def test_import_is_lazy():
    code = ("import sys, minillm; print(sorted(m for m in sys.modules if m.startswith('minillm') or m == 'torch'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['minillm']"


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
    for info in pkgutil.iter_modules(minillm.__path__):
        assert info.name not in minillm._EXPORTS or minillm._EXPORTS[info.name] == "", info.name
        importlib.import_module(f"minillm.{info.name}")
        assert isinstance(getattr(minillm, info.name), types.ModuleType), f"minillm.{info.name} is shadowed"
    for name in minillm.__all__:  # using every name afterwards still leaves the modules in place
        if importlib.util.find_spec(f"minillm.{minillm._EXPORTS[name] or name}") is not None:
            getattr(minillm, name)
    for info in pkgutil.iter_modules(minillm.__path__):
        assert isinstance(getattr(minillm, info.name), types.ModuleType), f"minillm.{info.name} is shadowed"


def test_the_command_line_lives_in_one_package():
    """The library's modules keep no argparse code: every command is in minillm.cli.

    Two maintainers' tools have entry points of their own: the benchmarks
    (`python -m minillm.bench`) and the diagram drawer (`python -m minillm.diagrams`).
    """
    offenders = []
    for info in pkgutil.walk_packages(minillm.__path__, "minillm."):
        if info.name.startswith(("minillm.cli", "minillm.bench")) or info.name in ("minillm.__main__", "minillm.diagrams.__main__"):
            continue
        source = inspect.getsource(importlib.import_module(info.name))
        if re.search(r"^\s*(import argparse|from argparse)|add_parser\(|add_subparsers\(", source, re.M):
            offenders.append(info.name)
    assert not offenders, f"argparse code outside minillm.cli: {offenders}"


def test_pytest_pins_the_cpu_kernels_that_made_the_committed_outputs():
    """conftest.py sets ATEN_CPU_CAPABILITY=avx2 before torch loads, so an AVX-512 CI machine
    computes the book model (and every notebook output that quotes it) as an AVX2 one does."""
    import platform

    import torch

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the pin applies to x86-64 CPUs")
    if os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        pytest.fail("conftest.py did not pin ATEN_CPU_CAPABILITY=avx2 (was the variable set to something else?)")
    capability = torch.backends.cpu.get_cpu_capability()
    assert capability in ("AVX2", "DEFAULT"), f"torch chose {capability} kernels despite the pin"


def test_xdist_workers_let_idle_openmp_threads_sleep():
    """conftest.py sets OMP_WAIT_POLICY=PASSIVE in xdist workers (two of them share two cores)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("runs in an xdist worker (the README's `pytest` uses -n 2)")
    assert os.environ.get("OMP_WAIT_POLICY") == "PASSIVE"
