"""The suite's own scheduling (conftest.py): which notebooks wait for the book model, and the order files run in."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)


def test_notebooks_are_classified_by_what_they_load():
    assert conftest._needs(ROOT / "chapters" / "01_data.ipynb") == 0
    assert conftest._needs(ROOT / "chapters" / "05_pretraining.ipynb") == 1  # book_run / book_model
    assert conftest._needs(ROOT / "appendix" / "E_alignment.ipynb") == 2  # book_chat_model
    assert conftest._needs(ROOT / "tests" / "test_book.py") == 0  # test files use stand-ins, never the cache


def test_a_notebook_that_loads_the_model_in_any_form_is_caught(tmp_path):
    for source, need in [("model, tok = minillm.book_model()", 1), ("folder, _ = book_run(progress=True)", 1),
                         ("chat = book_chat_model()", 2), ("book_runs = {}  # a variable, not a call", 0)]:
        nb = tmp_path / "x.ipynb"
        nb.write_text('{"cells": [{"cell_type": "code", "source": [%r]}]}' % source)
        assert conftest._needs(nb) == need, source


def _config(*args):
    return SimpleNamespace(args=list(args), invocation_params=SimpleNamespace(dir=ROOT))


def test_the_background_training_starts_only_for_runs_that_load_the_model():
    assert conftest._runs_book_notebooks(_config("."))
    assert conftest._runs_book_notebooks(_config("chapters"))
    assert conftest._runs_book_notebooks(_config("appendix/C_serving.ipynb"))
    assert conftest._runs_book_notebooks(_config("chapters/08_evaluation.ipynb::Cell 3"))
    assert not conftest._runs_book_notebooks(_config("tests"))
    assert not conftest._runs_book_notebooks(_config("chapters/01_data.ipynb", "tests/test_model.py"))


def test_files_run_independent_first_longest_first_and_keep_their_cells_in_order():
    paths = [ROOT / "tests" / "test_model.py", ROOT / "chapters" / "07_finetuning.ipynb",
             ROOT / "chapters" / "05_pretraining.ipynb", ROOT / "chapters" / "01_data.ipynb",
             ROOT / "tests" / "test_distributed.py", ROOT / "chapters" / "06_scaling.ipynb",
             ROOT / "chapters" / "08_evaluation.ipynb"]  # fmt: skip
    items = [SimpleNamespace(path=p, nodeid=f"{p.name}::{i}") for p in paths for i in range(3)]
    conftest.pytest_collection_modifyitems(None, items)
    files = list(dict.fromkeys(item.path.name for item in items))
    needs = [conftest._needs(ROOT / item.path) for item in items]
    assert needs == sorted(needs)  # no book notebook before an independent file, chat notebooks last
    assert files[0] == "test_distributed.py" and files[-1] == "07_finetuning.ipynb"
    seconds = {f: conftest._recorded_seconds(p) for f, p in ((p.name, p) for p in paths)}
    assert seconds["05_pretraining.ipynb"] > 0 and seconds["06_scaling.ipynb"] > seconds["01_data.ipynb"] > 0
    book = [f for f in files if conftest._needs(next(p for p in paths if p.name == f)) == 1]
    assert [seconds[f] for f in book] == sorted((seconds[f] for f in book), reverse=True)
    for name in files:  # a file's items stay in their order
        assert [i.nodeid for i in items if i.path.name == name] == [f"{name}::{i}" for i in range(3)]
