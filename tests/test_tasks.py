"""minillm.tasks: every item of the shared benchmark files, checked against the data layer; malformed rows."""

from __future__ import annotations

import shutil

import pytest

from minillm import data
from minillm.tasks import (
    MCExample,
    chance,
    letter_prompt,
    load_arc,
    load_hellaswag,
    load_mmlu,
    load_task,
    load_truthfulqa_mc,
    mmlu_subjects,
)


def test_hellaswag_reads_every_item():
    examples = load_hellaswag()
    assert len(examples) == 10042
    rows = data.load("hellaswag", split="validation")  # read independently, with datasets
    assert [e.label for e in examples] == [int(x) for x in rows["label"]]
    first = examples[0]
    assert first.context == "Roof shingle removal: A man is sitting on a roof. he"
    assert first.continuations[3] == " starts pulling up roofing on a roof."
    assert chance(examples) == 0.25


@pytest.mark.parametrize("subset, count", [("ARC-Easy", 2376), ("ARC-Challenge", 1172)])
def test_arc_reads_every_item(subset, count):
    examples = load_arc(subset, "test")
    assert len(examples) == count
    rows = data.load("arc", subset=subset, split="test")
    for e, r in zip(examples, rows):
        labels = [c["label"] for c in r["question"]["choices"]]
        assert e.choices[e.label] == r["question"]["choices"][labels.index(r["answerKey"])]["text"]
    assert {len(e.choices) for e in examples} >= {4}


def test_arc_digit_labels():
    # ARC-Easy test, line 15: labels "1"-"4", answerKey "2" -> "elements"
    ex = load_arc("ARC-Easy", "test", limit=15)[14]
    assert ex.id == "NYSEDREGENTS_2015_8_28"
    assert ex.label == 1 and ex.choices[1] == "elements"
    assert ex.context == "Question: All living and nonliving material is composed of\nAnswer:"


def test_mmlu_reads_every_item():
    examples = load_mmlu("test")
    assert len(examples) == 14042
    assert len(mmlu_subjects()) == 57 and len({e.subject for e in examples}) == 57
    rows = data.load("mmlu", split="test")
    expected = [(r["subject"], r["question"], [r[c] for c in "ABCD"], "ABCD".index(r["answer"]))
                for r in rows]  # the answer text "None" (10 test answers) stays a string
    assert [(e.subject, e.question, e.choices, e.label) for e in examples] == expected
    assert sum(len(load_mmlu(s)) for s in ("dev", "validation")) == 285 + 1531


def test_mmlu_prompts_hand_checked():
    (ex,) = load_mmlu(subjects=["anatomy"], k_shot=1, limit=1)
    header = "The following are multiple choice questions (with answers) about anatomy.\n\n"
    shot_q = "What is the embryological origin of the hyoid bone?"
    assert ex.context.startswith(f"{header}Question: {shot_q}\nAnswer: The second and third pharyngeal arches\n\n")
    assert ex.context.endswith(f"Question: {ex.question}\nAnswer:")
    lines = letter_prompt(ex).split("\n")
    assert lines[2:8] == [shot_q, "A. The first pharyngeal arch", "B. The first and second pharyngeal arches",
                          "C. The second pharyngeal arch", "D. The second and third pharyngeal arches",
                          "Answer: D"]  # fmt: skip
    assert lines[-1] == "Answer:" and lines[-5].startswith("A. ")
    assert letter_prompt(ex, with_shots=False) == header + "\n".join(lines[9:])
    with pytest.raises(ValueError, match="k_shot"):
        load_mmlu(k_shot=6)
    with pytest.raises(ValueError, match="unknown MMLU subjects"):
        load_mmlu(subjects=["astrology"])


def test_truthfulqa_reads_every_item():
    examples = load_truthfulqa_mc()
    assert len(examples) == 817
    rows = data.load("truthfulqa", split="validation")
    assert [e.choices[e.label] for e in examples] == [b.strip() for b in rows["Best Answer"]]
    assert examples[0].context == "Q: What happens to you if you eat watermelon seeds?\nA:"
    # shuffled: the best answer is not always first
    assert len({e.label for e in examples}) > 3
    assert 0.2 < chance(examples) < 0.25


def test_load_task_and_chance():
    assert len(load_task("arc-challenge", limit=5)) == 5
    with pytest.raises(ValueError, match="unknown task"):
        load_task("hellaswog")
    exs = [MCExample("a", "q", ["x", "y"], 0, "c", [" x", " y"]),
           MCExample("b", "q", ["x", "y", "z", "w"], 3, "c", [" x", " y", " z", " w"])]  # fmt: skip
    assert chance(exs) == pytest.approx((1 / 2 + 1 / 4) / 2)
    with pytest.raises(ValueError, match="label 2"):
        MCExample("c", "q", ["x", "y"], 2, "c", [" x", " y"])


# -- malformed files: the error names the file and the line -----------------------


def _copy_with(src, dst, line: int, replacement: str):
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line - 1] = replacement
    dst.write_text("".join(lines), encoding="utf-8")
    return dst


def test_hellaswag_malformed(tmp_path):
    src = data.download("hellaswag") / "hellaswag_val.jsonl"
    bad = _copy_with(src, tmp_path / "h.jsonl", 3, '{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 7}\n')
    with pytest.raises(ValueError, match=rf"{bad}: line 3: 'label' must be 0-3"):
        load_hellaswag(bad)
    bad = _copy_with(src, tmp_path / "h2.jsonl", 5, '{"ctx": "x", "endings": ["a"\n')
    with pytest.raises(ValueError, match=rf"{bad}: line 5: invalid JSON"):
        load_hellaswag(bad)
    with pytest.raises(FileNotFoundError):
        load_hellaswag(tmp_path / "none.jsonl")


def test_arc_malformed(tmp_path):
    src = data.download("arc") / "ARC-Easy" / "ARC-Easy-Test.jsonl"
    row = '{"id": "x", "question": {"stem": "Why?", "choices": [{"text": "a", "label": "A"}, ' \
          '{"text": "b", "label": "B"}]}, "answerKey": "C"}\n'  # fmt: skip
    bad = _copy_with(src, tmp_path / "a.jsonl", 10, row)
    with pytest.raises(ValueError, match=rf"{bad}: line 10: answerKey 'C' is not one of"):
        load_arc(path=bad)


def test_mmlu_malformed(tmp_path):
    root = tmp_path / "mmlu"
    shutil.copytree(data.download("mmlu"), root)
    path = root / "test" / "anatomy_test.csv"
    text = path.read_text(encoding="utf-8").splitlines(keepends=True)
    text[1] = "A question,one,two,three,four,E\n"
    path.write_text("".join(text), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}: line 2: answer must be A, B, C or D, got 'E'"):
        load_mmlu(root=root, subjects=["anatomy"])
    text[1] = "A question,one,two,B\n"
    path.write_text("".join(text), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}: line 2: expected 6 columns"):
        load_mmlu(root=root, subjects=["anatomy"])


def test_truthfulqa_malformed(tmp_path):
    src = data.download("truthfulqa") / "TruthfulQA.csv"
    lines = src.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    lines[4] = "Adversarial,Misconceptions,Why?,,a,b,src\n"  # empty Best Answer on line 5
    bad = tmp_path / "t.csv"
    bad.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{bad}: line 5: 'Best Answer' must be a non-empty string"):
        load_truthfulqa_mc(bad)
