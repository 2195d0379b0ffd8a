"""Tests of minillm.instruct: prompt formats, prompt masking, collate, special tokens, responses, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from minillm.checkpoint import load_model
from minillm.classify import GPTClassifier
from minillm.cli import build_parser
from minillm.data import download
from minillm.errors import DataError
from minillm.instruct import (
    CHAT_TOKENS,
    IGNORE_INDEX,
    InstructionDataset,
    add_special_tokens,
    encode_example,
    extract_response,
    format_prompt,
    generate_response,
    instruction_collate,
    instruction_loader,
    instruction_splits,
    resize_vocab,
)
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import TOKENIZER_FILE, BPETokenizer

EXAMPLE = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    rows = instruction_splits(seed=0)["train"][:200]
    return BPETokenizer.train([format_prompt(r) + r["output"] for r in rows], 400)


def tiny_gpt(vocab_size: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=256, d_model=32, n_layer=2, n_head=4)).eval()


def test_alpaca_and_chat_prompts_by_hand():
    preamble = ("Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.")  # fmt: skip
    assert format_prompt(EXAMPLE) == (
        f"{preamble}\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n")
    no_input = {"instruction": "Say hi.", "input": "", "output": "hi"}
    assert format_prompt(no_input) == f"{preamble}\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    assert format_prompt(EXAMPLE, "chat") == "<|user|>\nAdd the numbers.\n\n2 and 3<|end|>\n<|assistant|>\n"
    with pytest.raises(ValueError, match="template"):
        format_prompt(EXAMPLE, "llama")
    with pytest.raises(ValueError, match="instruction"):
        format_prompt({"input": "x"})


def test_prompt_masking_puts_ignore_index_exactly_on_prompt_and_padding():
    # example 1: 5 tokens, 2 of them prompt; example 2: 3 tokens, 1 of them prompt
    batch = [([1, 2, 3, 4, 5], 2), ([6, 7, 8], 1)]
    out = instruction_collate(batch, pad_id=0)
    assert out["idx"].tolist() == [[1, 2, 3, 4], [6, 7, 0, 0]]
    # targets are the next tokens; the target 2 (a prompt token) and the padding are -100
    assert out["targets"].tolist() == [[-100, 3, 4, 5], [7, 8, -100, -100]]
    unmasked = instruction_collate(batch, pad_id=0, mask_prompt=False)
    assert unmasked["targets"].tolist() == [[2, 3, 4, 5], [7, 8, -100, -100]]
    assert IGNORE_INDEX == -100


def test_collate_truncates_to_the_context():
    batch = [([1, 2, 3, 4, 5, 6], 3), ([7, 8], 1)]
    out = instruction_collate(batch, pad_id=9, max_length=3)
    assert out["idx"].shape == out["targets"].shape == (2, 3)
    assert out["idx"].tolist() == [[1, 2, 3], [7, 9, 9]]
    assert out["targets"].tolist() == [[-100, -100, 4], [8, -100, -100]]
    with pytest.raises(ValueError, match="at least 2 tokens"):
        instruction_collate([([1], 0)], pad_id=0)
    with pytest.raises(ValueError, match="max_length"):
        instruction_collate(batch, pad_id=0, max_length=0)


def test_masked_loss_counts_only_response_tokens(tokenizer):
    model = tiny_gpt(tokenizer.vocab_size)
    ids, n_prompt = encode_example(EXAMPLE, tokenizer)
    batch = instruction_collate([(ids, n_prompt)], pad_id=0)
    logits, loss = model(**batch)
    # by hand: positions n_prompt-1 .. end predict the response tokens and the end token
    response = torch.tensor(ids[n_prompt:])
    expected = F.cross_entropy(logits[0, n_prompt - 1 :], response)
    torch.testing.assert_close(loss, expected)


def test_encode_example_prompt_and_end_token(tokenizer):
    ids, n_prompt = encode_example(EXAMPLE, tokenizer)
    assert tokenizer.decode(ids[:n_prompt]) == format_prompt(EXAMPLE)
    assert ids[-1] == tokenizer.special_tokens["<|endoftext|>"]
    assert tokenizer.decode(ids[n_prompt:-1]) == "5"
    with pytest.raises(ValueError, match="add_special_tokens"):
        encode_example(EXAMPLE, tokenizer, "chat")


def test_special_tokens_and_resized_model(tokenizer):
    chat_tok = add_special_tokens(tokenizer)
    n = tokenizer.vocab_size
    assert [chat_tok.special_tokens[t] for t in CHAT_TOKENS] == [n, n + 1, n + 2]
    assert chat_tok.encode("hello world") == tokenizer.encode("hello world")
    ids, n_prompt = encode_example(EXAMPLE, chat_tok, "chat")
    assert ids[0] == n and ids[-1] == n + 2 and chat_tok.decode(ids[:n_prompt]) == format_prompt(EXAMPLE, "chat")
    model = tiny_gpt(n)
    bigger = resize_vocab(model, chat_tok.vocab_size)
    assert bigger.config.vocab_size == n + 3
    idx = torch.randint(0, n, (2, 10))
    torch.testing.assert_close(bigger(idx)[0][..., :n], model(idx)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bigger.tok_emb.weight[n], model.tok_emb.weight.mean(0))
    with pytest.raises(ValueError, match="only grows"):
        resize_vocab(model, n - 1)
    with pytest.raises(TypeError, match="BPETokenizer"):
        add_special_tokens(object())


def test_extract_response():
    prompt = format_prompt(EXAMPLE)
    assert extract_response(prompt + " 5 <|endoftext|> junk") == "5"
    assert extract_response(prompt + "5\n\n### Instruction:\nmore") == "5"
    assert extract_response("<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>", "chat") == "hello"


def greedy_until(model: GPT, ids: list[int], end: int, n: int) -> list[int]:
    """Greedy decoding written out (a full forward pass each step) until `end`, at most `n` tokens."""
    seq, new = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([seq]))[0][0, -1].argmax())
            if nxt == end:
                break
            new.append(nxt)
            seq.append(nxt)
    return new


def test_generate_response_is_greedy_until_the_end_token(tokenizer):
    torch.manual_seed(8)  # a seed (and scale) with which the end token comes after a few tokens of text
    model = tiny_gpt(tokenizer.vocab_size)
    end = tokenizer.special_tokens["<|endoftext|>"]
    with torch.no_grad():  # make the end token likely after a few steps
        model.lm_head.weight[end] *= 5
    new = greedy_until(model, tokenizer.encode(format_prompt(EXAMPLE)), end, 20)
    assert 0 < len(new) < 20 and tokenizer.decode(new).strip()  # it wrote something, then the end token
    assert generate_response(model, tokenizer, EXAMPLE, max_new_tokens=20) == tokenizer.decode(new).strip()
    assert generate_response(model, tokenizer, EXAMPLE, max_new_tokens=4) == tokenizer.decode(new[:4]).strip()


def test_chat_response_reads_the_markers_as_special_tokens(tokenizer):
    chat_tok = add_special_tokens(tokenizer)
    end = chat_tok.special_tokens["<|end|>"]
    ids, n_prompt = encode_example(EXAMPLE, chat_tok, "chat")  # the prompt as in training ...
    assert ids[0] == chat_tok.special_tokens["<|user|>"]  # ... <|user|> is one id, not its characters
    torch.manual_seed(0)  # a seed (and scale) with which <|end|> comes after a few tokens of text
    model = tiny_gpt(chat_tok.vocab_size)
    with torch.no_grad():  # make the end token likely after a few steps
        model.lm_head.weight[end] *= 5
    new = greedy_until(model, ids[:n_prompt], end, 20)
    assert 0 < len(new) < 20 and chat_tok.decode(new).strip()  # it wrote something, then <|end|>
    assert generate_response(model, chat_tok, EXAMPLE, "chat", max_new_tokens=20) == chat_tok.decode(new).strip()


def test_instruction_splits_and_loader(tokenizer):
    splits = instruction_splits(seed=123)
    assert {k: len(v) for k, v in splits.items()} == {"train": 935, "val": 55, "test": 110}
    raw = json.loads((download("instruction") / "instruction-data.json").read_text())
    key = lambda r: json.dumps(r, sort_keys=True)
    assert sorted(key(r) for rows in splits.values() for r in rows) == sorted(key(r) for r in raw)
    assert instruction_splits(seed=123)["test"] == splits["test"] != instruction_splits(seed=1)["test"]
    loader = instruction_loader(splits["test"][:6], tokenizer, max_length=80, batch_size=3)
    batch = next(iter(loader))
    assert batch["idx"].shape == batch["targets"].shape and batch["idx"].shape[0] == 3
    assert batch["idx"].shape[1] <= 80 and (batch["targets"] == -100).any()


def _checkpoint(tmp_path, tokenizer):
    """A model folder as `minillm.checkpoint.load_model` reads it: GPT.save + the tokenizer file."""
    directory = tmp_path / "base"
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=128, d_model=32, n_layer=2, n_head=4))
    model.save(directory)
    tokenizer.save(directory / TOKENIZER_FILE)
    return directory


@pytest.mark.parametrize("task,extra", [("classify", ["--lora-rank", "2"]), ("instruct", ["--train-blocks", "1"])])
def test_finetune_command(tmp_path, tokenizer, task, extra, capsys):
    out = tmp_path / "out"
    args = build_parser().parse_args(["finetune", "--task", task, "--checkpoint", str(_checkpoint(tmp_path, tokenizer)),
                                      "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--device", "cpu",
                                      *extra])  # fmt: skip
    assert args.func(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 2 and "loss" in results["test"]
    assert (out / "metrics.jsonl").is_file() and (out / "model" / TOKENIZER_FILE).is_file()
    if task == "classify":
        assert 0 <= results["test"]["accuracy"] <= 1 and (out / "adapter.safetensors").is_file()
        assert GPTClassifier.load(out / "model").labels == ("ham", "spam")
    else:
        model, _ = load_model(out / "model")
        assert len(results["samples"]) == 3 and model.config.vocab_size == tokenizer.vocab_size
    with pytest.raises(FileExistsError):
        args.func(args)


def test_dataset_drops_examples_whose_prompt_fills_the_context(tokenizer):
    rows = [EXAMPLE, {"instruction": "word " * 200, "input": "", "output": "x"}]
    n_prompt = encode_example(EXAMPLE, tokenizer)[1]
    data = InstructionDataset(rows, tokenizer, max_length=n_prompt + 1)
    assert len(data) == 1 and data.dropped == 1 and data[0] == encode_example(EXAMPLE, tokenizer)
    with pytest.raises(ValueError, match="longer context"):
        InstructionDataset(rows, tokenizer, max_length=n_prompt)


@pytest.mark.parametrize("bad", [{"instruction": "Say hi."}, {"instruction": "Say hi.", "output": ""},
                                 {"instruction": "Say hi.", "output": "  \n"}, {"instruction": "Hi.", "output": None}])
def test_an_example_without_an_answer_is_refused_by_index(tokenizer, bad):
    with pytest.raises(DataError, match="non-empty 'output'"):
        encode_example(bad, tokenizer)
    with pytest.raises(DataError, match=r"^instruction example 2: .*non-empty 'output'"):
        InstructionDataset([EXAMPLE, EXAMPLE, bad], tokenizer)
    with pytest.raises(DataError, match="instruction example 1: "):
        instruction_loader([EXAMPLE, {"output": "x"}], tokenizer, max_length=64)  # no instruction either
