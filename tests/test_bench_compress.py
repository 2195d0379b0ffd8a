"""`python -m minillm.bench compress` (minillm.bench.compress): the whole run on a tiny random model
(`--tiny`), the table's rows and columns, the JSON rows, and speculative decoding's greedy output equal to
the fp32 model's. No timing assertions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from minillm.bench import BENCHMARKS
from minillm.bench.compress import GROUP_SIZES, SPECULATIVE_K, main, quantize_per_tensor, tiny_inputs
from minillm.int8_matmul import _fbgemm_engine
from minillm.quantize import QuantizedLinear, model_bytes, quantize, quantize_tensor

COLUMNS = ["variant", "weights in memory", "on disk", "held-out perplexity", "decode tokens/s", "MFU",
           "greedy = fp32", "KV cache", "acceptance", "tokens / target call"]  # fmt: skip
QUANTIZED = ["int8 per tensor", "int8 per channel", "int8 per channel, int8 kernel (W8A8)", "int4 per channel",
             *(f"int4 group {g}" for g in GROUP_SIZES)]  # fmt: skip
KV_INT8 = 1 + len(QUANTIZED)  # the fp32 model with an int8 KV cache
PRUNED = KV_INT8 + 1  # the pruned row's index; speculative decoding's rows follow it
LAYER_VARIANTS = ["fp32", "int8 per channel, dequantize", "int8 per channel, int8 kernel (W8A8)"]


def _positive(row: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(row[key], (int, float)) and math.isfinite(row[key]) and row[key] > 0, (row["variant"], key)


def test_tiny_run_prints_and_writes_every_row(tmp_path, capsys, one_thread):
    out = tmp_path / "compress.json"
    assert BENCHMARKS["compress"] == "minillm.bench.compress"
    assert main(["--tiny", "--tokens", "300", "--new-tokens", "12", "--prompt-len", "6", "--repeats", "1",
                 "--json", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["tiny"] and doc["device"] == "cpu" and doc["peak_flops"] > 0 and "measured" in doc["peak_source"]
    rows = doc["rows"]
    names = [r["variant"] for r in rows]
    assert names[0] == "fp32" and names[1 : 1 + len(QUANTIZED)] == QUANTIZED
    assert names[KV_INT8] == "fp32, int8 KV cache"
    assert names[PRUNED] == "pruned to 128 of 256 MLP neurons, not retrained"
    assert names[PRUNED + 1 :] == [f"speculative k={k}, draft int4 group 32" for k in SPECULATIVE_K]

    by_name = dict(zip(names, rows))
    # the tiny model's layers are 64 wide: groups of 128 do not fit, and the row says why
    skipped = "skipped (group 128 does not divide the input width 64 of blocks.0.attn.qkv)"
    assert by_name["int4 group 128"]["status"] == skipped
    measured = [r for r in rows if r["status"] == "ok"]
    assert len(measured) == len(rows) - 1
    fp32 = rows[0]
    for r in measured:
        _positive(r, "memory_bytes", "disk_bytes", "perplexity", "tokens_per_s", "mfu", "kv_cache_bytes",
                  "memory_ratio", "disk_ratio", "perplexity_ratio", "speed_ratio")  # fmt: skip
        assert len(r["seconds"]) == 1 and r["new_tokens"] == 12
    assert fp32["memory_ratio"] == fp32["disk_ratio"] == fp32["perplexity_ratio"] == fp32["speed_ratio"] == 1.0
    assert fp32["memory_bytes"] == model_bytes(tiny_inputs(torch.device("cpu"))[0])["total"]
    assert fp32["greedy_same_prefix"] == 12 and fp32["same_as_fp32"]

    # smaller codes, smaller models: int8 < fp32, int4 < int8; pruning removes half of the MLP
    for name in QUANTIZED[1:] + [names[PRUNED]]:
        if by_name[name]["status"] == "ok":
            assert by_name[name]["memory_ratio"] < 1 and by_name[name]["disk_ratio"] < 1
    assert by_name["int4 per channel"]["memory_bytes"] < by_name["int8 per channel"]["memory_bytes"]
    assert by_name["int8 per tensor"]["memory_bytes"] < by_name["int8 per channel"]["memory_bytes"]  # one scale
    assert by_name[names[PRUNED]]["flops_per_token"] < fp32["flops_per_token"]
    # the int8 kernel: the same codes and scales as int8 per channel, so the same bytes on disk (the JSON names
    # the kernel: "int8" is 6 characters shorter than "dequantize"); in memory, fbgemm's packed copy besides
    # (the codes, plus a scale, a zero point and a column offset per output row); a close perplexity
    int8, kernel = by_name["int8 per channel"], by_name["int8 per channel, int8 kernel (W8A8)"]
    linears = [m for n, m in tiny_inputs(torch.device("cpu"))[0].named_modules()
               if isinstance(m, torch.nn.Linear) and n != "lm_head"]  # fmt: skip
    packed = sum(m.weight.numel() + 12 * m.out_features for m in linears) if _fbgemm_engine() else 0
    assert kernel["memory_bytes"] == int8["memory_bytes"] + packed and kernel["disk_bytes"] == int8["disk_bytes"] - 6
    assert abs(kernel["perplexity_ratio"] - 1) < 0.01

    # the int8 KV cache: the fp32 weights; the cache's bytes are kv_cache_bytes' int8 count (D + 4 bytes a vector
    # instead of 4 D), and reading through it moves perplexity a little, not nothing
    kv = by_name["fp32, int8 KV cache"]
    d = tiny_inputs(torch.device("cpu"))[0].config.head_dim
    assert kv["memory_bytes"] == fp32["memory_bytes"] and kv["disk_bytes"] == fp32["disk_bytes"]
    assert kv["kv_cache_bytes"] * 4 * d == fp32["kv_cache_bytes"] * (d + 4)
    assert kv["perplexity"] != fp32["perplexity"] and abs(kv["perplexity_ratio"] - 1) < 0.01

    for r, k in zip(rows[PRUNED + 1 :], SPECULATIVE_K):  # greedy: exactly the fp32 model's tokens
        assert r["kind"] == "speculative" and r["same_as_fp32"] and r["greedy_same_prefix"] == 12
        assert 0 <= r["acceptance_rate"] <= 1 and 1 <= r["tokens_per_target_call"] <= k + 1
        assert r["accepted"] + r["target_calls"] == 12
        assert r["perplexity"] == fp32["perplexity"] and r["kv_cache_bytes"] > fp32["kv_cache_bytes"]
        assert r["memory_bytes"] == fp32["memory_bytes"] + by_name["int4 group 32"]["memory_bytes"]

    printed = capsys.readouterr().out
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variant |"))
    table = lines[start : start + 2 + len(rows)]
    assert [c.strip() for c in table[0].strip("|").split("|")] == COLUMNS
    assert not lines[start + 2 + len(rows)].startswith("|")
    for line in table[2:]:
        assert line.count("|") == len(COLUMNS) + 1
    assert "int4 group 128 | skipped (group 128 does not divide" in printed
    assert "TINY RANDOM model" in printed and "# total" in printed

    # one linear layer timed alone: three variants at batch 1 and 16, and their table
    layer_rows = doc["layer_rows"]
    assert [(r["variant"], r["batch"]) for r in layer_rows] == [(v, b) for b in (1, 16) for v in LAYER_VARIANTS]
    for r in layer_rows:
        _positive(r, "ms_per_call", "speed_ratio")
        assert (r["in_features"], r["out_features"]) == (64, 256)
    assert "| one layer | batch 1, ms per call | batch 16, ms per call |" in printed
    assert all(f"| {v} | " in printed for v in LAYER_VARIANTS)


def test_per_tensor_int8_has_one_scale_per_matrix(one_thread):
    model = tiny_inputs(torch.device("cpu"))[0]
    q = quantize_per_tensor(model)
    for name, layer in q.named_modules():
        if isinstance(layer, QuantizedLinear):
            assert layer.scale.shape == (1, 1)
            w = model.get_submodule(name).weight
            want = quantize_tensor(w, 8, "absmax", "tensor").dequantize()
            torch.testing.assert_close(layer.weight, want, rtol=0, atol=0)
    per_channel = quantize(model, 8)
    assert model_bytes(q)["scales"] < model_bytes(per_channel)["scales"]
    idx = torch.randint(0, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.allclose(q(idx)[0], model(idx)[0], atol=0.05)


def test_settings_that_do_not_fit_are_clear_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--tiny", "--prompt-len", "40", "--new-tokens", "40"])
    assert exc.value.code == 2
    assert "must fit in the model's context length 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--tiny", "--prune-keep", "1.5"])
    assert "--prune-keep must be in (0, 1)" in capsys.readouterr().err
