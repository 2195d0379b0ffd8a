"""`python -m minillm.bench train` (minillm.bench.train): a tiny run prints the measured matmul peak, the
model's fraction of it and the time breakdown; the breakdown's arithmetic; the matmul measurement. No timing
assertions: the numbers are checked for their form and their sums, never for their speed."""

from __future__ import annotations

import math
import re

import pytest

from minillm.bench import BENCHMARKS, matmul_flops
from minillm.bench.train import breakdown_table, main

PARTS = ["batch", "forward", "backward", "clip", "optimizer", "zero_grad", "eval", "sample", "checkpoint", "plot"]
TINY = ["--max-steps", "6", "--set", "eval_interval=3", "--set", "n_layer=1", "--set", "d_model=32", "--set",
        "n_head=2", "--set", "max_chars=20000", "--set", "eval_batches=2", "--set", "sample_tokens=8",
        "--breakdown-steps", "3", "--matmul-size", "64", "--no-progress"]  # fmt: skip


def test_tiny_run_prints_the_peak_fraction_and_every_part(capsys, one_thread):
    assert BENCHMARKS["train"] == "minillm.bench.train"
    assert main(TINY) == 0
    out = capsys.readouterr().out
    gflops = float(re.search(r"measured fp32 matmul\s+([\d.]+) GFLOP/s", out).group(1))
    model, share = re.search(r"model FLOP/s\s+([\d.]+) GFLOP/s = ([\d.]+) % of the measured", out).groups()
    assert gflops > 0 and float(model) > 0
    assert float(share) == pytest.approx(100 * float(model) / gflops, rel=0.05, abs=0.15)  # both printed rounded
    wall = float(re.search(r"training loop\s+([\d.]+) s for 6 steps", out).group(1))
    rows = {}
    for line in out.split("where the run's time goes")[1].splitlines()[2:]:
        if not line.strip() or line.startswith("sample at step"):
            break
        name = line[:22].strip()
        rows[name] = [float(v) for v in line[22:].replace("%", "").split()]
    assert list(rows) == [*PARTS, "loop, logging, noise", "measured wall time"]
    # 6 steps; 3 evaluations (steps 0, 3 and 6), each with a sample; checkpoints at 3 and 6; plots at 3, 6, the end
    for name in PARTS:
        ms, calls, seconds, share = rows[name]
        assert calls == (6 if name in PARTS[:6] else 2 if name == "checkpoint" else 3), name
        assert ms > 0 and seconds == pytest.approx(ms * calls / 1e3, abs=0.051), name
    assert rows["measured wall time"] == [pytest.approx(wall, abs=0.051), 100.0]
    accounted = sum(rows[name][2] for name in PARTS)
    assert rows["loop, logging, noise"][0] == pytest.approx(wall - accounted, abs=0.051 * (len(PARTS) + 2))


def test_breakdown_table_sums_to_the_wall_time():
    parts = {"batch": 0.5, "forward": 10.0, "backward": 20.0, "clip": 1.0, "optimizer": 2.0, "zero_grad": 0.1,
             "eval": 300.0, "sample": 0.0, "checkpoint": 40.0, "plot": 100.0}  # fmt: skip
    rows = breakdown_table(parts, steps=1000, evaluations=5, wall=40.0)
    names = [r[0] for r in rows]
    assert "sample" not in names  # a run without samples has no sample row
    by_name = {r[0]: r for r in rows}
    assert by_name["forward"][1:4] == (10.0, 1000, 10.0)
    assert by_name["plot"][1:4] == (100.0, 5, 0.5)
    assert by_name["checkpoint"][1:4] == (40.0, 4, 0.16)  # none at step 0
    parts_seconds = 0.5 + 10 + 20 + 1 + 2 + 0.1 + 1.5 + 0.16 + 0.5  # each part's ms x calls / 1000, by hand
    assert by_name["loop, logging, noise"][3] == pytest.approx(40.0 - parts_seconds)
    assert sum(r[4] for r in rows[:-1]) == pytest.approx(1.0)
    assert rows[-1] == ("measured wall time", None, None, 40.0, 1.0)


def test_matmul_flops_is_the_flop_count_over_the_time(monkeypatch):
    import time

    clock = iter(float(i) for i in range(100))  # every perf_counter call advances one second
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    assert matmul_flops(8, repeats=3) == pytest.approx(2 * 8**3 / 1.0)
    assert math.isfinite(matmul_flops(32, repeats=1))


@pytest.mark.parametrize("args, words", [(["--breakdown-steps", "-1"], "--breakdown-steps must be >= 0"),
                                         (["--matmul-size", "0"], "--matmul-size must be >= 16"),
                                         (["--set", "max_steps"], "--set takes KEY=VALUE"),
                                         (["--set", "n_layer=abc"], "setting 'n_layer' needs"),
                                         (["--preset", "shakespear"], "shakespeare-char")])  # fmt: skip
def test_bad_arguments_exit_2_with_the_reason(args, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_the_calls_per_run_are_those_of_the_training_loop(tmp_path, monkeypatch, one_thread):
    """The table's call counts are the loop's: count evaluations, samples, checkpoints and plots in a real run."""
    import minillm.checkpoint
    import minillm.train
    from minillm.config import preset_config

    counts = {"eval": 0, "sample": 0, "checkpoint": 0, "plot": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(minillm.train, "evaluate", counting("eval", minillm.train.evaluate))
    monkeypatch.setattr(minillm.train, "sample", counting("sample", minillm.train.sample))
    monkeypatch.setattr(minillm.checkpoint, "save", counting("checkpoint", minillm.checkpoint.save))
    monkeypatch.setattr(minillm.train, "plot_metrics", counting("plot", minillm.train.plot_metrics))
    config = preset_config("shakespeare-char", max_steps=6, eval_interval=3, n_layer=1, d_model=32, n_head=2,
                           max_chars=20000, eval_batches=2, sample_tokens=4)  # fmt: skip
    result = minillm.train.train(config, tmp_path / "run", progress=False, verbose=False)
    evaluations = sum(1 for r in result.history if "val_loss" in r)
    parts = dict.fromkeys(PARTS, 1.0)
    table = {row[0]: row[2] for row in breakdown_table(parts, result.step, evaluations, wall=1.0)}
    assert counts == {name: table[name] for name in counts} and counts["checkpoint"] == 2
