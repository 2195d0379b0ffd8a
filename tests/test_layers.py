"""The package's layers: each module imports only from its own layer or below, at module top, without cycles.

`check_layers(package_dir, layers)` reads every module's source with `ast`
(nothing is imported) and returns the violations:

(a) an import of a package module inside a function or class (a lazy import
    that hides a dependency, often to dodge a cycle). Imports under
    `if TYPE_CHECKING:` are allowed and ignored; the applications (`LAZY`:
    the `cli` and `bench` packages and the package's `__init__`) may import lazily;
(b) an import of a module from a higher layer, or of a module that does not exist;
(c) an import cycle (any imports but TYPE_CHECKING ones), with its path;
and a module the layer map does not list (add it to `LAYERS`).

A module's unit is its first name under the package: `minillm.cli.train` is
in `cli`, `minillm/__init__.py` is `__init__`. `test_the_checker_finds_*`
plants a small package with each kind of mistake and checks they are reported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import minillm

LAYERS: dict[int, tuple[str, ...]] = {
    0: ("errors", "fileio", "device", "scaling", "sandbox"),  # utilities
    1: ("data", "tokenizer_base", "tokenizer", "bpe", "pretokenize", "bpe_merges", "tokens", "quality", "dedup", "pii", "curation", "tasks",
        "synthetic", "codedata"),  # data
    2: ("attention", "layers", "model", "generate", "lora", "memory", "hf", "family", "masked_lm", "seq2seq", "batching",
        "qtensor", "int8_matmul"),  # model
    3: ("config", "corpus"),  # configuration
    4: ("optim", "monitor", "distributed", "checkpoint", "strategy"),  # run state
    5: ("train", "pretrained", "finetune", "classify", "instruct", "evaluate", "metrics", "harness", "skills", "family_tasks", "align", "dpo", "grpo", "quantize", "quantize_kv", "prune", "distill", "speculative", "codeeval"),  # loops
    6: ("cli", "bench", "diagrams", "exercises", "serve", "website", "__main__", "__init__"),  # applications
}
LAYER_OF = {unit: layer for layer, units in LAYERS.items() for unit in units}
LAZY = frozenset({"cli", "bench", "__init__"})  # units that may import package modules inside functions


def module_files(package_dir: Path) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package in `package_dir`."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def unit_of(module: str) -> str:
    """The layer-map name of a module: its first name under the package (`__init__` for the package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")  # fmt: skip


class _Imports(ast.NodeVisitor):
    """Collect (imported module, line, nested in a function or class) of a module's import statements."""

    def __init__(self, module: str, is_package: bool, modules: set[str]) -> None:
        self.module, self.is_package, self.modules = module, is_package, modules
        self.found: list[tuple[str, int, bool]] = []
        self.depth = 0

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _nested

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # for type checkers only: never run
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: from . import x, from ..y import z
            package = self.module if self.is_package else self.module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        for alias in node.names:
            target = f"{base}.{alias.name}"  # `from pkg import submodule` imports the submodule
            self.found.append((target if target in self.modules else base, node.lineno, self.depth > 0))


def check_layers(package_dir: Path, layers: dict[str, int], lazy: frozenset[str] = LAZY) -> list[str]:
    """The layering violations of the package in `package_dir`, as readable lines (empty: none).

    `layers`: {unit: layer number} for every unit (first name under the
    package; `__init__` for the package itself); `lazy`: units allowed to
    import package modules inside functions.
    """
    package = package_dir.name
    files = module_files(package_dir)
    modules = set(files)
    problems: list[str] = []
    graph: dict[str, list[tuple[str, int]]] = {m: [] for m in files}
    for module, path in files.items():
        unit = unit_of(module)
        where = f"{path.relative_to(package_dir.parent)}"
        if unit not in layers:
            problems.append(f"{where}: module {unit!r} is in no layer; add it to the layer map (LAYERS)")
            continue
        visitor = _Imports(module, path.name == "__init__.py", modules)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for target, line, nested in visitor.found:
            if target != package and not target.startswith(package + "."):
                continue  # another library
            if target not in modules:
                problems.append(f"{where}:{line}: imports {target}, which does not exist")
                continue
            if target == module:
                continue
            graph[module].append((target, line))
            target_unit = unit_of(target)
            if nested and unit not in lazy:
                problems.append(f"{where}:{line}: imports {target} inside a function or class; "
                                "import it at module top (a cycle is fixed by moving code, not by hiding it)")
            if target_unit in layers and layers[target_unit] > layers[unit]:
                problems.append(f"{where}:{line}: {unit} (layer {layers[unit]}) imports {target} "
                                f"(layer {layers[target_unit]}); a module imports only its own layer or below")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in find_cycles(graph)]
    return list(dict.fromkeys(problems))  # one line per problem, even for `from m import a, b`


def find_cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The cycles a depth-first search meets, each as a path that ends where it starts (one per back edge)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target, _ in sorted(graph.get(node, [])):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------


def test_every_module_is_in_a_layer_and_imports_only_downward_at_top_without_cycles():
    problems = check_layers(Path(minillm.__file__).parent, LAYER_OF)
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_the_checker_finds_each_kind_of_mistake(tmp_path):
    pkg = tmp_path / "planted"
    pkg.mkdir()
    files = {
        "__init__.py": '"""A planted package."""\n',
        "a.py": "from planted import b\n",  # a <-> b: a cycle
        "b.py": "import planted.a\n",
        "low.py": "from planted.high import thing\n",  # layer 0 importing layer 1
        "high.py": "def thing():\n    from planted import a  # hidden in a function\n    return a\n",
        "typed.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from planted import high\n"
                     "import os\n"),  # fine: for type checkers only
        "stray.py": "import json\n",  # in no layer
        "app/__init__.py": "def main():\n    from planted import high  # applications may import lazily\n",
        "app/sub.py": "from . import helper\nfrom ..high import thing\nfrom planted.missing import x\n",
        "app/helper.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(exist_ok=True)
        (pkg / name).write_text(text)
    layers = {"__init__": 2, "a": 1, "b": 1, "low": 0, "high": 1, "typed": 0, "app": 2}
    problems = check_layers(pkg, layers, lazy=frozenset({"app", "__init__"}))
    text = "\n".join(problems)
    assert "import cycle: planted.a -> planted.b -> planted.a" in text
    assert "planted/low.py:1: low (layer 0) imports planted.high (layer 1)" in text
    assert "planted/high.py:2: imports planted.a inside a function or class" in text
    assert "planted/stray.py: module 'stray' is in no layer; add it to the layer map" in text
    assert "planted/app/sub.py:3: imports planted.missing, which does not exist" in text
    assert len(problems) == 5, text  # typed.py, app's lazy import and its relative imports are fine


def test_the_checker_reports_a_longer_cycle_with_its_path(tmp_path):
    pkg = tmp_path / "ring"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, target in (("x", "y"), ("y", "z"), ("z", "x")):
        (pkg / f"{name}.py").write_text(f"from ring.{target} import something\n")
    problems = check_layers(pkg, {"__init__": 0, "x": 0, "y": 0, "z": 0})
    assert problems == ["import cycle: ring.x -> ring.y -> ring.z -> ring.x"]
