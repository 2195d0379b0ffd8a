"""`python -m minillm.bench gpu` (minillm.bench.gpu): the logic on a CPU with --tiny, the JSON table's
structure, identical tokens with and without the KV cache, and clear device errors. No timing assertions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from minillm.bench import BENCHMARKS
from minillm.bench.gpu import LADDER, NEEDS_CUDA, main

NUMBERS = ("tokens_per_s", "step_ms", "ratio")


def _check_measured(row: dict) -> None:
    for key in NUMBERS:
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (row["label"], key)
    for key in ("mfu", "peak_mem_gib"):  # CPUs have no known peak FLOP/s and no CUDA memory counter
        assert row[key] is None or (math.isfinite(row[key]) and row[key] > 0)


def test_tiny_cpu_run_writes_the_whole_table(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert BENCHMARKS["gpu"] == "minillm.bench.gpu"
    assert main(["--device", "cpu", "--tiny", "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["tiny"] and table["device"] == "cpu" and table["elapsed_s"] > 0
    rows = table["rows"]
    assert [r["section"] for r in rows] == ["train"] * 14 + ["memory"] * 2 + ["generate"] * 2

    for model in ("gpt2", "book-gpu"):  # the whole ladder, in order, each row measured or skipped for a reason
        ladder = [r for r in rows if r["section"] == "train" and r["model"] == model]
        assert [r["row"] for r in ladder] == [key for key, _, _ in LADDER]
        for r in ladder:
            if r["row"] in NEEDS_CUDA:
                assert r["status"] == "skipped (needs CUDA)" and r["tokens_per_s"] is None
            elif model == "book-gpu" and r["row"] == "vocab64":  # tiny: 256 tokens, already a multiple of 64
                assert r["status"].startswith("skipped (vocab 256 ")
            else:
                assert r["status"] == "ok", r
                _check_measured(r)
        assert ladder[0]["ratio"] == 1.0
        assert "eager" in ladder[-1]["note"] or ladder[-1]["status"] != "ok"  # no compile without CUDA, said so
    assert "vocab 320" in rows[6]["note"]  # tiny gpt2: 256 + 50,257 mod 64 = 273 tokens, padded to 5 x 64

    off, on = (r for r in rows if r["section"] == "memory")
    for r in (off, on):
        assert r["status"] == "ok"
        _check_measured(r)
        assert r["activations_gib"] > 0
    assert on["activations_gib"] <= off["activations_gib"] and "checkpointing" in on["note"]

    plain, cached = (r for r in rows if r["section"] == "generate")
    for r in (plain, cached):
        assert r["status"] == "ok" and r["same_tokens"] is True
        _check_measured(r)
    assert plain["ratio"] == 1.0

    printed = capsys.readouterr().out
    assert "skipped (needs CUDA)" in printed and "# total" in printed and "fp32 (manual attention" in printed


def test_rows_pick_a_subset(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["--device", "cpu", "--tiny", "--rows", "bf16", "kv-cache", "--models", "book-gpu",
                 "--json", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["row"]) for r in rows] == [("book-gpu", "bf16"), ("gpt2", "kv-cache"), ("gpt2", "kv-cache")]
    assert rows[0]["ratio"] is None and "bf16" in rows[0]["note"]  # no fp32 row to compare with


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--device", "cuda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu --tiny" in err


def test_unknown_device_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--device", "tpu9", "--tiny"])
    assert exc.value.code == 2
    assert "--device tpu9: unknown device 'tpu9'" in capsys.readouterr().err
