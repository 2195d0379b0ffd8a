"""Appendix B's GPU setting (`MINILLM_BOOK_SCALE=gpu`: GPT-2 124M on CUDA), run on a CPU at small size.

No GPU and no hub here, so the setting's own run is impossible; what can rot
without one is its code path: GPT-2's shapes, its 50,257-token tokenizer, the
larger settings' keys, labels written for the book model. This runs the
notebook's code cells in order, in this process, with three changes (each
checked to apply): the device is the CPU; `GPT.from_pretrained("gpt2")` loads
a small random GPT-2 that `transformers` saved in a temporary folder (six
blocks of width 128, 128 positions); and the sizes shrink (`TINY`). On a
machine with a GPU, `.ci/gpu-check` runs the same with MINILLM_TEST_DEVICE=cuda
and MINILLM_TEST_GPT2=124m (GPT-2 124M's own shape, random weights). Every
`assert` of the notebook becomes a recorded claim, evaluated where it stands.
The claims that hold for any model (the inline code equals the package's,
exact reloads, speculative greedy output, byte counts) must hold; the claims
about a trained model's quality (`QUALITY`), which a random model cannot
meet, are only evaluated (a claim that raises still fails the run).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

NOTEBOOK = Path(__file__).resolve().parents[1] / "appendix" / "B_inference_compression.ipynb"
TINY = dict(windows=8, new_tokens=8, repeats=1, functions=3, function_tokens=16, distill_steps=5, distill_batch=4,
            recover_steps=3, spec_tokens=16, importance_batches=2, train_chars=40_000, cache_windows=4,
            seeds=(0, 1))
GPT2_SHAPES = {"small": dict(vocab_size=50257, n_positions=128, n_embd=128, n_layer=6, n_head=4),
               "124m": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)}
GPT2_SHAPE = GPT2_SHAPES[os.environ.get("MINILLM_TEST_GPT2", "small")]
DEVICE = os.environ.get("MINILLM_TEST_DEVICE", "cpu")  # "cuda" on a GPU machine (.ci/gpu-check)
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("MINILLM_TEST_DEVICE=cuda needs a CUDA device", allow_module_level=True)
# The notebook's claims about quality: true of the trained book model, not of a random one. Each prefix must
# still start a claim of the notebook (so that this list cannot go stale); every other claim must hold.
QUALITY = (
    "abs(int8_change) < 0.01", 'ppl["int4 per tensor"] > ppl["int4 per channel"]', "abs(d) < 0.01",
    "abs(d) < 5e-4", 'KV_INT8["identical_rows"] > 4', "all(f is None or", 'at["global"][0.3] <',
    'all(at["layer"][s] < at["global"][s]', "all(recovered[s] < at", "recovered[0.0] >= ppl0",
    'all(by[f, "importance"] < by[f, "random"]', "d + 3 * se < 0", 'all(STUDENTS[f"student, distilled',
    "abs(kd_rate.value - ce_rate.value)", 'all(SPEEDUP["int4 groups of 32", k] < 1', 'max(SPEEDUP[f"distilled',
    'any(n.startswith("int8") for n in front)', 'all(rows[f"{STUDENT}, {label}"]',
)


class _Claims(ast.NodeTransformer):
    """`assert test` -> `_claim(test, "test's source")`: the test is still evaluated, its result recorded."""

    def __init__(self, source: str) -> None:
        self.source = source

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        text = " ".join(ast.get_source_segment(self.source, node.test).split())
        call = ast.parse(f"_claim(None, {text!r})").body[0]
        call.value.args[0] = node.test
        return ast.copy_location(call, node)


def _replace(source: str, old: str, new: str) -> str:
    assert source.count(old) == 1, f"the notebook no longer has {old!r}: update this test's changes"
    return source.replace(old, new)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Every code cell of the notebook run with the GPU setting on a CPU: its namespace, claims and output."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2-small-random")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**GPT2_SHAPE)).save_pretrained(folder)
    cells = ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    claims: list[tuple[bool, str]] = []
    ns = {"_claim": lambda ok, text: claims.append((bool(ok), text)), "_TINY": TINY}
    changed, out = set(), io.StringIO()
    old_scale, threads = os.environ.get("MINILLM_BOOK_SCALE"), torch.get_num_threads()
    os.environ["MINILLM_BOOK_SCALE"] = "gpu"
    # the notebook sets matplotlib's rcParams (dpi), warning filters and torch's threads for the whole process:
    # all put back after, so that the tests that run next in this worker (the figures' SVGs) see none of it
    restore = contextlib.ExitStack()
    restore.enter_context(matplotlib.rc_context())
    restore.enter_context(warnings.catch_warnings())
    try:
        for i, source in enumerate(cells):
            source = "\n".join(line for line in source.split("\n") if not line.startswith("%"))  # %matplotlib
            if 'DEVICE = "cuda" if SCALE' in source:
                source = _replace(source, 'if SCALE == "gpu" and not torch.cuda.is_available():', "if False:")
                source = _replace(source, 'DEVICE = "cuda" if SCALE == "gpu" else "cpu"', f"DEVICE = {DEVICE!r}")
                source += "\n_GPU_S = dict(S)\nS.update(_TINY)"
                changed.add("settings")
            if 'GPT.from_pretrained("gpt2")' in source:
                source = _replace(source, 'GPT.from_pretrained("gpt2")', f"GPT.from_pretrained({str(folder)!r})")
                changed.add("model")
            tree = ast.fix_missing_locations(_Claims(source).visit(ast.parse(source)))
            with contextlib.redirect_stdout(out):
                exec(compile(tree, f"<appendix B, code cell {i}>", "exec"), ns)  # noqa: S102
    finally:
        plt.close("all")
        restore.close()
        torch.set_num_threads(threads)
        if old_scale is None:
            os.environ.pop("MINILLM_BOOK_SCALE")
        else:
            os.environ["MINILLM_BOOK_SCALE"] = old_scale
    assert changed == {"settings", "model"}
    if DEVICE == "cuda":
        print(f"appendix B, GPU setting on {torch.cuda.get_device_name()}: peak memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; {ns['SECONDS']}")
    return ns, claims, out.getvalue()


@pytest.mark.slow
def test_every_cell_runs_on_gpt2s_kind_of_model_with_the_gpu_settings(run):
    ns, claims, output = run
    assert ns["SCALE"] == "gpu" and ns["model"].config.vocab_size == 50257 == ns["tok"].vocab_size
    assert ns["model"].config.positions == "learned" and ns["model"].config.n_layer == GPT2_SHAPE["n_layer"]
    assert ns["S"]["ks"] == ns["_GPU_S"]["ks"] == (1, 2, 3, 4, 6, 8)  # the GPU setting's values of k
    assert set(ns["_GPU_S"]) == set(TINY) | {"ks"}  # TINY shrinks every size the setting has
    assert "total" in ns["SECONDS"]  # the last cell ran
    assert len(claims) > 60


@pytest.mark.slow
def test_the_claims_that_hold_for_any_model_hold(run):
    _, claims, _ = run
    for prefix in QUALITY:
        assert any(text.startswith(prefix) for _, text in claims), f"no claim of the notebook starts {prefix!r}"
    exact = [(ok, text) for ok, text in claims if not text.startswith(QUALITY)]
    assert [text for ok, text in exact if not ok] == []
    assert sum(text == "torch.equal(result.tokens, reference)" for _, text in exact) == 2 * 6 * 3  # drafts x k x prompts


@pytest.mark.slow
def test_labels_follow_the_model(run):
    ns, _, output = run
    student = f"{len(range(0, GPT2_SHAPE['n_layer'], 2))}-block student"  # every other block: 3 of 6
    assert ns["STUDENT"] == student and ns["NAME"] == "GPT-2 124M"
    assert "teacher (GPT-2 124M)" in output and f"distilled {student}" in output
    assert "2-block" not in output and "book model" not in output
    assert "book model" not in "".join(ns["STUDENTS"]) and all(student in n for n in ns["rows"] if "student" in n)


@pytest.mark.slow
def test_the_pareto_zoom_frames_every_quantized_variant(run):
    ns, _, _ = run
    (lo, hi), (bottom, top) = ns["zoom"].get_xlim(), ns["zoom"].get_ylim()
    points = [ns["rows"][n] for n in ns["quantized"]]
    assert len(points) >= 8 and all(lo < b / 1e6 < hi and bottom < p < top for b, p in points)


@pytest.mark.slow
def test_section_2s_caches_hold_cache_windows(run):
    ns, _, _ = run
    n = TINY["cache_windows"]
    assert len(ns["CACHED"]) == n < len(ns["WINDOWS"])
    assert ns["fp_cache"].k.shape[1] == n and ns["kv8"].nbytes > 0


def test_the_gpu_settings_fit_an_80_gb_gpu():
    """The largest tensors the GPU setting makes for GPT-2 124M, from the notebook's own settings.

    Logits are (sequences, 1,024, 50,257) floats: 206 MB a sequence. Evaluation
    takes 32 windows at a time, section 2 prefills `cache_windows` at once, and a
    training step (distillation, recovery, importance) holds about 2 GB a sequence
    (measured on a CPU for a distillation step of GPT-2's shape: peak memory at 1
    and 2 sequences, about ten logit-sized tensors a sequence).
    """
    from minillm.memory import kv_cache_bytes
    from minillm.model import GPTConfig

    source = next("".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"]
                  if 'DEVICE = "cuda" if SCALE' in "".join(c["source"]))
    gpu = _settings(source, "gpu")
    config = GPTConfig.from_preset("gpt2")
    logits = 1024 * config.vocab_size * 4  # bytes of one sequence's logits
    assert 32 * logits < 10e9
    assert gpu["cache_windows"] * logits + kv_cache_bytes(config, gpu["cache_windows"], 1024, "fp32") < 20e9
    assert gpu["distill_batch"] * 10 * logits < 40e9


def _settings(source: str, scale: str) -> dict:
    """The `S[scale]` dict literal of the settings cell, evaluated without running the cell."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == scale for k in node.keys):
            call = node.values[[k.value for k in node.keys].index(scale)]
            return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    raise AssertionError(f"no {scale!r} settings in the notebook")
