"""Tests of minillm.curation and minillm.quality: normalization, each quality rule, the n-gram LM filter, the pipeline
and its report, and the `curate` command."""

from __future__ import annotations

import json
import math
import unicodedata

import pytest

from minillm.cli import build_parser
from minillm.curation import CurationConfig, curate, read_documents
from minillm.quality import (
    RULES,
    CharNGramLM,
    NormalizeConfig,
    QualityConfig,
    normalize,
    quality_failures,
    strip_html,
)
from minillm.dedup import Decontaminator
from minillm.errors import DataError

GOOD = (
    "The harbour was quiet in the early morning, and the fishing boats rocked gently against the old "
    "stone wall. A few gulls circled above the market, where traders were setting out baskets of fresh "
    "bread, cheese and bright oranges. Children ran between the stalls with their dogs, while an old man "
    "repaired a torn net with slow and careful hands. Later that day the wind turned cold."
)


def _verdict_docs(n_words: int = 90) -> list[str]:
    """Distinct prose documents: The Verdict cut into chunks of ``n_words`` words."""
    from minillm import data

    w = data.read_text("the-verdict").split()
    return [" ".join(w[i : i + n_words]) for i in range(0, len(w) - n_words, n_words)]


# ---------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------


def test_normalize_nfc_controls_whitespace():
    decomposed = "Cafe\u0301 cre\u0300me"
    assert normalize(decomposed) == unicodedata.normalize("NFC", decomposed) == "Café crème"
    assert normalize("a\u200bb\x00c\ufeffd\u00ade") == "abcde"
    assert normalize("one\r\ntwo  \t three   \n\n\n\n\nfour\u00a0five") == "one\ntwo three\n\nfour five"
    code = "def f(x):\n    if x:\n        return  x\n"
    assert normalize(code) == "def f(x):\n    if x:\n        return x"  # indentation kept, inner run collapsed
    assert normalize(decomposed, NormalizeConfig(nfc=False)) != "Café crème"
    with pytest.raises(TypeError, match="expects a str"):
        normalize(None)


def test_strip_html():
    page = ("<!DOCTYPE html><html><head><title>T</title><style>p {color: red}</style></head><body>"
            "<h1>Title</h1><p>Fish &amp; chips <b>for</b> two.</p><script>alert(1)</script>"
            "<!-- hidden --><ul><li>one</li><li>two</li></ul></body></html>")
    assert normalize(page) == "Title\n\nFish & chips for two.\n\none\n\ntwo"
    assert strip_html("if a < b and c > d: List<int> x; fish &amp; chips") == \
        "if a < b and c > d: List<int> x; fish &amp; chips"  # no known tag: untouched


# ---------------------------------------------------------------------------
# Quality rules: each with a passing and a failing example
# ---------------------------------------------------------------------------

FAILING = {
    "too_few_words": ("The cat sat on the mat with the dog.", "9 words < 50"),
    "too_many_words": (" ".join([GOOD] * 3), None),  # checked with max_words=100 below
    "mean_word_length": ("a b c d e f g h i j the of and " * 5, "mean word length 1.4 outside [3.0, 10.0]"),  # 18 chars / 13 words
    "symbol_ratio": (GOOD + " #news #sea #boats #travel #summer #photo #love #sun #sky #blue",
                     f"{10 / (len(GOOD.split()) + 10):.2f} symbols per word > 0.1"),
    "ellipsis_lines": ("\n".join([GOOD, "and then...", "we waited…", "nothing more..."]),
                       "0.75 of lines end in an ellipsis > 0.3"),
    "bullet_lines": ("\n".join("- " + s for s in GOOD.split(". ")), "1.00 of lines are bullets > 0.9"),
    "duplicate_lines": ("\n".join([GOOD, "Share this.", "Share this.", "Share this."]),
                        "0.50 of lines are repeats > 0.3"),
    "top_ngram": ("buy now " * 40 + GOOD, None),
    "duplicate_ngrams": (GOOD + " " + GOOD, "duplicated 5-grams cover 1.00 of characters > 0.15"),
    "stop_words": ("Harbour quiet early morning. Boats rocked gently against stone walls. " * 5,
                   "0 distinct stop words < 2"),
    "alpha_words": (GOOD + " 1 2 3" * 10, f"{len(GOOD.split()) / (len(GOOD.split()) + 30):.2f} of words "
                    "have a letter < 0.8"),
    "boilerplate": ("\n".join([GOOD, "We use cookies. Accept all?", "Privacy Policy | Terms of Use"]),
                    "0.67 of lines contain boilerplate phrases > 0.2"),
}


def test_every_rule_has_a_failing_example():
    assert set(FAILING) == set(RULES)


@pytest.mark.parametrize("rule", list(RULES))
def test_rule_passes_good_text_and_fails_bad_text(rule):
    cfg = QualityConfig(rules=(rule,), max_words=100 if rule == "too_many_words" else 100_000)
    assert quality_failures(GOOD, cfg) == {}
    bad, reason = FAILING[rule]
    failures = quality_failures(bad, cfg)
    assert list(failures) == [rule]
    if reason is not None:
        assert failures[rule] == reason


def test_top_ngram_fraction_by_hand():
    text = "buy now " * 40 + GOOD  # 80 of the words are "buy now": 40 * 6 chars of 2-grams
    chars = sum(len(w) for w in text.lower().split())
    failures = quality_failures(text, QualityConfig(rules=("top_ngram",)))
    assert failures["top_ngram"] == f"most frequent 2-gram covers {40 * 6 / chars:.2f} of characters > 0.2"


def test_good_text_passes_all_rules_and_first_only_stops_early():
    assert quality_failures(GOOD) == {}
    many = quality_failures("# # # ...")
    assert {"too_few_words", "symbol_ratio", "stop_words", "alpha_words"} <= set(many)
    assert list(quality_failures("# # # ...", first_only=True)) == ["too_few_words"]


def test_quality_config_errors():
    with pytest.raises(ValueError, match="unknown quality rules"):
        QualityConfig(rules=("no_such_rule",))
    with pytest.raises(ValueError, match="larger than max_words"):
        QualityConfig(min_words=10, max_words=5)


# ---------------------------------------------------------------------------
# Perplexity filter
# ---------------------------------------------------------------------------


def test_char_ngram_lm_is_a_distribution():
    lm = CharNGramLM(order=3).fit("the theme of the thesis")
    for context in (b"th", b"zz", b""):
        total = sum(math.exp(lm.log_prob(context, b)) for b in range(256))
        assert total == pytest.approx(1.0, abs=1e-9)
    assert CharNGramLM(order=3).perplexity("anything at all") == pytest.approx(256.0)  # untrained: uniform
    assert CharNGramLM().perplexity("") == math.inf
    with pytest.raises(ValueError, match="order"):
        CharNGramLM(order=0)


def test_perplexity_separates_prose_from_gibberish():
    from minillm import data

    lm = CharNGramLM(order=4).fit(data.read_text("the-verdict"))
    gibberish = "qzxv jjkwp xxqz vbnm plokq zzyx wqqv kkjh xzcv bnmq " * 3
    assert lm.perplexity(GOOD) * 3 < lm.perplexity(gibberish)


# ---------------------------------------------------------------------------
# The pipeline and its report
# ---------------------------------------------------------------------------


def _messy_corpus() -> tuple[list[str], dict[str, int]]:
    chunks = _verdict_docs()
    docs = chunks[:34]
    where = {}
    where["exact"] = len(docs)
    docs.append("  " + docs[3].upper() + "\n")  # same text after case folding and whitespace
    where["near"] = len(docs)
    w = docs[5].split()
    docs.append(" ".join(w[:-3] + ["changed", "words", "here"]))
    where["short"] = len(docs)
    docs.append("Win a free prize now!!!")
    where["gibberish"] = len(docs)
    docs.append("qzxv jjkwp " * 40)
    where["contaminated"] = len(docs)
    docs.append(docs[0][:200] + " which of these planets in our solar system has the largest number of "
                "known moons today saturn " + docs[1][:200])
    where["pii"] = len(docs)
    docs.append(chunks[36] + " Write to jane.doe@example.com or call +44 20 7946 0958.")
    where["html"] = len(docs)
    docs.append("<p>" + chunks[38].replace(". ", ".</p><p>", 3) + "</p>")
    return docs, where


def _decon() -> Decontaminator:
    q = "which of these planets in our solar system has the largest number of known moons today saturn"
    return Decontaminator({"quiz": [q]}, n=13)


def test_pipeline_removes_what_was_injected_and_counts_add_up():
    docs, where = _messy_corpus()
    ds, report = curate(docs, CurationConfig(decontaminate=_decon()))
    names = [s.step for s in report.steps]
    assert names == ["normalize", "quality", "exact_dedup", "near_dedup", "decontaminate", "redact_pii"]
    kept = set(ds["id"])
    for key in ("exact", "near", "short", "gibberish", "contaminated"):
        assert where[key] not in kept, key
    assert set(range(len(docs))) - kept == {where[k] for k in ("exact", "near", "short", "gibberish", "contaminated")}
    by_step = {s.step: s for s in report.steps}
    assert by_step["quality"].removed.get("too_few_words") == 1
    assert by_step["exact_dedup"].removed == {"exact_duplicate": 1}
    assert by_step["exact_dedup"].examples == {"exact_duplicate": [where["exact"]]}
    assert by_step["near_dedup"].removed == {"near_duplicate": 1}
    assert by_step["decontaminate"].removed == {"quiz": 1}
    text = dict(zip(ds["id"], ds["text"]))
    assert text[where["pii"]].endswith("Write to <EMAIL> or call <PHONE>.")
    assert "<p>" not in text[where["html"]]

    # the report adds up: every step starts where the previous one ended
    for prev, step in zip(report.steps, report.steps[1:]):
        assert (step.docs_in, step.bytes_in) == (prev.docs_out, prev.bytes_out)
    for step in report.steps:
        assert step.docs_in - step.docs_out == sum(step.removed.values())
    assert report.steps[0].docs_in == len(docs)
    assert report.steps[0].bytes_in == sum(len(d.encode("utf-8")) for d in docs)
    assert report.steps[-1].docs_out == len(ds)
    assert report.steps[-1].bytes_out == sum(len(t.encode("utf-8")) for t in ds["text"]) == sum(ds["bytes"])
    summary = json.loads(json.dumps(report.to_dict()))
    assert summary["docs_in"] - summary["docs_out"] == sum(sum(s["removed"].values()) for s in summary["steps"])
    assert report.table().splitlines()[0].startswith("step")


def test_pipeline_with_workers_matches_single_process():
    docs, _ = _messy_corpus()
    cfg = CurationConfig(decontaminate=_decon())
    one, rep1 = curate(docs, cfg)
    two, rep2 = curate(docs, CurationConfig(decontaminate=_decon(), num_proc=2))
    assert one["text"] == two["text"] and one["id"] == two["id"]
    assert [s.removed for s in rep1.steps] == [s.removed for s in rep2.steps]


def test_pipeline_steps_can_be_switched_off_and_perplexity_filter():
    from minillm import data

    docs, where = _messy_corpus()
    lm = CharNGramLM(order=4).fit(data.read_text("the-verdict"))
    cfg = CurationConfig(normalize=None, quality=None, exact_dedup=False, near_dedup_threshold=None,
                         redact_pii=False, perplexity_model=lm, max_perplexity=30.0)
    ds, report = curate(docs, cfg)
    assert [s.step for s in report.steps] == ["perplexity"]
    assert report.steps[0].removed["perplexity"] >= 1
    assert where["gibberish"] not in ds["id"]
    assert set(range(10)) <= set(ds["id"])  # ordinary prose stays


def test_curate_rejects_bad_input():
    import datasets

    with pytest.raises(TypeError, match="list of str"):
        curate("one string")
    with pytest.raises(ValueError, match="at least one"):
        curate([])
    with pytest.raises(ValueError, match="'text' column"):
        curate(datasets.Dataset.from_dict({"body": ["x"]}))


# ---------------------------------------------------------------------------
# Reading inputs and the `curate` command
# ---------------------------------------------------------------------------


def test_read_documents(tmp_path):
    (tmp_path / "a.txt").write_text("para one\nstill one\n\npara two\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "row 1"}) + "\n" + json.dumps({"text": "row 2"}) + "\n")
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    assert read_documents([str(tmp_path)]) == ["para one\nstill one\n\npara two\n", "row 1", "row 2"]
    assert read_documents([str(tmp_path / "a.txt")], doc_per="paragraph") == ["para one\nstill one", "para two\n"]
    assert read_documents([str(tmp_path / "a.txt")], doc_per="line") == ["para one", "still one", "para two"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_documents([str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="no 'body' field"):
        read_documents([str(tmp_path / "b.jsonl")], text_field="body")
    with pytest.raises(ValueError, match="doc_per"):
        read_documents([str(tmp_path)], doc_per="sentence")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        read_documents([str(tmp_path / "bad.txt")])


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_curate_command(tmp_path, capsys):
    docs, where = _messy_corpus()
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    out = tmp_path / "out"
    assert _run(["curate", str(src), "--out", str(out), "--decontaminate", "--num-proc", "1"]) == 0
    rows = [json.loads(x)["text"] for x in (out / "curated.jsonl").read_text(encoding="utf-8").splitlines()]
    report = json.loads((out / "report.json").read_text())
    assert len(rows) == report["docs_out"] == len(docs) - 4  # exact, near, short, gibberish
    assert [s["step"] for s in report["steps"]] == ["normalize", "quality", "exact_dedup", "near_dedup",
                                                    "redact_pii"]
    assert any("<EMAIL>" in r for r in rows)
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="not empty"):
        _run(["curate", str(src), "--out", str(out), "--decontaminate"])
    assert _run(["curate", str(src), "--out", str(out), "--decontaminate", "--overwrite", "--no-pii",
                 "--no-quality", "--near-threshold", "0"]) == 0
    assert json.loads((out / "report.json").read_text())["docs_out"] == len(docs) - 1  # exact dedup only


def test_read_documents_names_the_file_and_line_of_malformed_input(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "one"}\n\n{"text": "two"\n', encoding="utf-8")  # line 3 is cut short
    with pytest.raises(DataError, match=r"rows\.jsonl line 3 is not valid JSON"):
        read_documents([str(rows)])
    rows.write_text('{"text": "one"}\n{"text": null}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"rows\.jsonl line 2: 'text' is NoneType, not a string"):
        read_documents([str(rows)])
    rows.write_text('{"text": "one"}\n["two"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"rows\.jsonl line 2 has no 'text' field"):
        read_documents([str(rows)])
    whole = tmp_path / "all.json"
    whole.write_text('[\n {"text": "one"},\n {"text": }\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"all\.json line 3 is not valid JSON"):
        read_documents([str(whole)])
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("first line\nsecond: café\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt line 2 is not valid UTF-8 \(byte 0xe9"):
        read_documents([str(latin)])
    # a JSON string may hold U+2028 (a line separator to str.splitlines, not to JSON Lines)
    rows.write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_documents([str(rows)]) == ["a\u2028b"]


def test_curate_when_the_rules_remove_every_document():
    ds, report = curate(["too short", "also short"], CurationConfig(decontaminate=_decontaminator()))
    assert len(ds) == 0 and ds.column_names == ["text", "id", "bytes"]
    steps = {s.step: s for s in report.steps}
    assert list(steps) == ["normalize", "quality", "exact_dedup", "near_dedup", "decontaminate", "redact_pii"]
    assert steps["quality"].removed == {"too_few_words": 2} and steps["quality"].docs_out == 0
    for name in ("exact_dedup", "near_dedup", "decontaminate", "redact_pii"):
        assert (steps[name].docs_in, steps[name].docs_out, steps[name].removed) == (0, 0, {})
    assert report.to_dict()["docs_out"] == 0 and "too_few_words 2" in report.table()


def _decontaminator() -> Decontaminator:
    return Decontaminator({"evalset": ["the quick brown fox jumps over the lazy dog"]}, n=5)


def test_curate_command_writes_an_empty_result_and_its_report(tmp_path, capsys):
    src = tmp_path / "short.txt"
    src.write_text("one short line\n\nanother short one\n", encoding="utf-8")
    out = tmp_path / "out"
    assert _run(["curate", str(src), "--out", str(out), "--doc-per", "paragraph", "--decontaminate", "none"]) == 0
    assert (out / "curated.jsonl").read_text(encoding="utf-8") == ""
    report = json.loads((out / "report.json").read_text())
    assert (report["docs_in"], report["docs_out"]) == (2, 0)
    quality = next(s for s in report["steps"] if s["step"] == "quality")
    assert quality["removed"] == {"too_few_words": 2}
    assert "decontaminate" not in [s["step"] for s in report["steps"]]  # 'none' skipped it
    assert "every document was removed" in capsys.readouterr().out


def test_curate_command_decontaminate_none_and_bad_input(tmp_path, capsys):
    from minillm.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": GOOD}) + "\n", encoding="utf-8")
    assert main(["curate", str(src), "--out", str(tmp_path / "a"), "--decontaminate", "None"]) == 0
    assert json.loads((tmp_path / "a" / "report.json").read_text())["docs_out"] == 1
    assert main(["curate", str(src), "--out", str(tmp_path / "b"), "--decontaminate", "none", "arc"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    src.write_text(json.dumps({"text": GOOD}) + "\n{oops\n", encoding="utf-8")
    assert main(["curate", str(src), "--out", str(tmp_path / "c"), "--decontaminate", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{src} line 2 is not valid JSON" in err and "Traceback" not in err


def test_curate_command_keeps_datasets_quiet_while_reading_evaluation_sets(tmp_path, capfd, monkeypatch):
    import datasets

    from minillm.cli import main

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))  # nothing cached yet
    datasets.enable_progress_bars()
    datasets.logging.set_verbosity_info()
    try:
        src = tmp_path / "in.txt"
        src.write_text(GOOD, encoding="utf-8")
        assert main(["curate", str(src), "--out", str(tmp_path / "out"), "--decontaminate", "hellaswag"]) == 0
        err = capfd.readouterr().err
        assert "Downloading data" not in err and "Generating" not in err, err
        assert "normalize" in err  # the pipeline's own steps keep their progress bars
        # the settings are the caller's again afterwards
        assert datasets.is_progress_bar_enabled() and datasets.logging.get_verbosity() == datasets.logging.INFO
    finally:
        datasets.logging.set_verbosity_warning()
    steps = json.loads((tmp_path / "out" / "report.json").read_text())["steps"]
    assert "decontaminate" in [s["step"] for s in steps]
