"""The run configuration and the named presets (chapter 05).

One `TrainConfig` says everything a pretraining run needs: which corpus and
tokenizer, which model (a nested `minillm.model.GPTConfig`), how to optimize,
how often to evaluate and save, and on what hardware. Chapter 05
(`05_pretraining`) trains the presets of this module:

* `shakespeare-char`: the classic laptop-CPU "baby GPT", a character-level model
  of Tiny Shakespeare (4 layers, 4 heads, width 128, context 64, batch 12,
  2,000 steps, lr 1e-3, no dropout, fp32);
* `quickstart`: a small code model of this Python's own standard library with a
  byte-level BPE tokenizer learned from it (no download);
* `gpt2-124m`: GPT-2 small (`MODEL_SHAPES["gpt2"]`) on a FineWeb-Edu sample or
  local text files, bf16 and `torch.compile` on a GPU.

Model shapes (`minillm.model.MODEL_SHAPES`: "gpt2", "llama-110m", ...) say what a
network looks like; presets here (`PRESETS`) say how a run trains one.

Settings are named flat, as on the command line: `preset_config("quickstart",
n_layer=6, lr="3e-4")` sets `config.model.n_layer` and `config.lr`; string
values are converted to the field's type (`apply_overrides`). Every field of
the model is reachable that way (`n_kv_head`, `d_ff`, `rope_theta`, ...), so a
Llama-style GQA model trains from the command line like any other. The one
name both levels have, `vocab_size`, means the tokenizer's size to learn (the
model's comes from the tokenizer at run time). Every setting is checked when a
config is made: NaN, infinite, negative or out-of-range values raise `ConfigError`
naming the setting and what would work (`check_model_fields` for the model's,
checked before a `GPTConfig` is built from them).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from minillm.errors import ConfigError
from minillm.model import MODEL_SHAPES, GPTConfig

Tokenizers = Literal["char", "bpe", "gpt2"]
Schedules = Literal["cosine", "wsd", "constant"]
Precisions = Literal["auto", "fp32", "tf32", "bf16", "fp16"]
Strategies = Literal["auto", "single", "ddp", "fsdp"]
Optimizers = Literal["torch", "minillm"]

#: The model of the `TrainConfig` defaults: the baby GPT of `shakespeare-char`.
BABY_GPT = dict(vocab_size=65, context_length=64, d_model=128, n_layer=4, n_head=4, dropout=0.0)


def _baby_gpt() -> GPTConfig:
    return GPTConfig(**BABY_GPT)


@dataclass
class TrainConfig:
    """Everything a pretraining run needs; the defaults are the `shakespeare-char` baby GPT."""

    # data: minillm.corpus turns these into a tokenizer and train/val token shards
    data: str = "tinyshakespeare"  # a minillm.data name, "files", "fineweb-edu", or a prepared corpus folder
    data_files: str = ""  # data="files": glob(s) of UTF-8 text files, separated by commas
    max_chars: int = 0  # use only this many characters of the corpus (0: all)
    exclude_files: str = ""  # python-stdlib: comma-separated globs of files to leave out, e.g. "encodings/*"
    tokenizer: Tokenizers = "char"  # "char" | "bpe" (trained on the corpus) | "gpt2"
    vocab_size: int = 4096  # bpe: vocabulary size to learn
    tokenizer_chars: int = 1_000_000  # bpe: characters, spread over the corpus, to learn it from (0: all)
    val_fraction: float = 0.1  # the corpus' last fraction is held out for validation
    # the model (its vocab_size is set from the tokenizer)
    model: GPTConfig = field(default_factory=_baby_gpt)
    # optimization
    batch_size: int = 12  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (all ranks together)
    max_steps: int = 2000  # optimizer steps; the schedule ends here
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100  # capped at max_steps
    schedule: Schedules = "cosine"
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    optimizer: Optimizers = "torch"  # "torch" (fused/foreach AdamW) | "minillm" (written out)
    # evaluation, logging, checkpoints
    eval_interval: int = 250  # evaluate (and checkpoint, sample) every this many steps and at the end
    eval_batches: int = 20  # validation batches of batch_size windows each
    log_interval: int = 1  # write a metrics record every this many steps
    keep_checkpoints: int = 1  # newest checkpoints kept on disk
    sample_prompt: str = "\n"
    sample_tokens: int = 200  # generated at every evaluation (0: none)
    # system
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" | "mps"
    precision: Precisions = "auto"  # "auto": bf16 on CUDA, else fp32
    compile: bool = False  # torch.compile the model
    strategy: Strategies = "auto"  # "auto": ddp under torchrun, else single | "single" | "ddp" | "fsdp" (chapter 06)
    seed: int = 1337
    peak_tflops: float = 0.0  # your device's peak, for MFU where minillm.scaling has none
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    reshard_after_forward: bool = True  # fsdp: free gathered weights after forward (ZeRO-3); False: ZeRO-2-like

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):  # read back from JSON
            check_model_fields(self.model)
            self.model = GPTConfig(**self.model)
        if not isinstance(self.model, GPTConfig):
            raise ConfigError(f"model must be a GPTConfig, got {type(self.model).__name__}")
        check_model_fields(dataclasses.asdict(self.model))  # what GPTConfig itself does not check (NaN, ...)
        _check_run_fields(self)

    def model_config(self, vocab_size: int) -> GPTConfig:
        """This run's `GPTConfig` for a tokenizer of `vocab_size` tokens."""
        return dataclasses.replace(self.model, vocab_size=vocab_size)

    @property
    def context_length(self) -> int:
        """T, the model's context length (`model.context_length`)."""
        return self.model.context_length

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step: batch_size * grad_accum * context_length (all ranks together)."""
        return self.batch_size * self.grad_accum * self.model.context_length

    def to_dict(self) -> dict:
        """A JSON-ready dict (the model nested under "model", as `GPTConfig.to_dict` writes it)."""
        return {**dataclasses.asdict(self), "model": self.model.to_dict()}

    def to_json(self) -> str:
        """`to_dict` as indented JSON text (what `train_config.json` holds)."""
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, fields: dict) -> TrainConfig:
        """The config of a `to_dict` (or of a flat train_config.json written before the model was nested)."""
        fields = dict(fields)
        if "model" not in fields:  # legacy flat layout: model fields beside the others
            model_names = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size"}
            fields["model"] = {**BABY_GPT, **{k: fields.pop(k) for k in list(fields) if k in model_names}}
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields {sorted(unknown)}")
        return cls(**fields)

    def differences(self, other: TrainConfig, ignore: frozenset[str] = frozenset()) -> dict:
        """{setting: (self's value, other's value)} for settings that differ (model fields flat).

        The model's `vocab_size` is left out: it comes from the tokenizer.
        """
        mine, theirs = self.to_dict(), other.to_dict()
        diff = {k: (v, theirs[k]) for k, v in mine.items() if k != "model" and theirs[k] != v and k not in ignore}
        model_diff = self.model.differences(other.model, ignore=("vocab_size",))
        return diff | {k: v for k, v in model_diff.items() if k not in ignore}


def _choices() -> dict[str, tuple]:
    """{field: allowed values} for the `Literal` fields of `TrainConfig`."""
    hints = typing.get_type_hints(TrainConfig)
    return {name: typing.get_args(t) for name, t in hints.items() if typing.get_origin(t) is Literal}


# ---------------------------------------------------------------------------
# Checks: every setting, before anything is built
# ---------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """A finite int or float (not a bool): NaN and infinity are no setting's value."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(name: str, value: Any, ok: bool, wanted: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {wanted}, got {value!r}")


def _check_ints(fields: Any, names: tuple[str, ...], low: int, wanted: str, hints: dict[str, str]) -> None:
    for name in names:
        value = fields[name]
        hint = f" ({hints[name]})" if name in hints else ""
        _require(name, value, _is_int(value) and value >= low, wanted + hint)


def check_model_fields(fields: dict[str, Any]) -> None:
    """Raise `ConfigError` naming the first `GPTConfig` field (given as a dict) that cannot work.

    Checked before a `GPTConfig` is made, so that the message names the field the
    user set (`d_model 0` is about d_model, not the MLP width derived from it), and
    for what `GPTConfig` leaves unchecked (a NaN epsilon, a negative rope_theta).
    """
    fields = {**{f.name: f.default for f in dataclasses.fields(GPTConfig)}, **fields}  # unset: the defaults
    _check_ints(fields, ("vocab_size", "context_length", "d_model", "n_layer", "n_head", "vocab_multiple"), 1,
                "a positive integer", {"vocab_multiple": "1: no padding; 64 helps GPUs"})  # fmt: skip
    for name, default in (("n_kv_head", "n_head"), ("d_ff", "the MLP's default width"),
                          ("d_head", "d_model / n_head")):
        value = fields[name]
        _require(name, value, value is None or (_is_int(value) and value >= 1),
                 f"a positive integer, or none for {default}")  # fmt: skip
    for name, wanted in (("norm_eps", "a finite number > 0, e.g. 1e-5"),
                         ("rope_theta", "a finite number > 0, e.g. 10000"),
                         ("init_std", "a finite number > 0, e.g. 0.02")):  # fmt: skip
        _require(name, fields[name], _is_real(fields[name]) and fields[name] > 0, wanted)
    dropout = fields["dropout"]
    _require("dropout", dropout, _is_real(dropout) and 0 <= dropout < 1, "a probability in [0, 1), e.g. 0 or 0.1")
    for name in ("bias", "tie_embeddings", "pre_norm"):
        _require(name, fields[name], isinstance(fields[name], bool), "true or false")


def _check_run_fields(config: TrainConfig) -> None:
    """Raise `ConfigError` naming the first `TrainConfig` field (not the model's) that cannot work."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    _check_ints(fields, ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches", "log_interval",
                         "keep_checkpoints", "vocab_size"), 1, "a positive integer", {})  # fmt: skip
    _check_ints(fields, ("max_chars", "tokenizer_chars", "warmup_steps", "sample_tokens"), 0, "an integer >= 0",
                {"max_chars": "0: the whole corpus", "tokenizer_chars": "0: the whole corpus",
                 "sample_tokens": "0: no samples"})  # fmt: skip
    _require("seed", config.seed, _is_int(config.seed) and 0 <= config.seed < 2**63, "an integer in [0, 2**63)")
    lr, min_lr = config.lr, config.min_lr
    _require("lr", lr, _is_real(lr) and lr > 0, "a finite number > 0, e.g. 1e-3")
    _require("min_lr", min_lr, _is_real(min_lr) and 0 <= min_lr <= lr, f"a finite number in [0, lr={lr}]")
    _require("val_fraction", config.val_fraction, _is_real(config.val_fraction) and 0 < config.val_fraction < 1,
             "a fraction strictly between 0 and 1, e.g. 0.1")  # fmt: skip
    _require("decay_fraction", config.decay_fraction, _is_real(config.decay_fraction)
             and 0 <= config.decay_fraction <= 1, "a fraction in [0, 1], e.g. 0.2")  # fmt: skip
    for name in ("beta1", "beta2"):
        value = fields[name]
        _require(name, value, _is_real(value) and 0 <= value < 1, "a number in [0, 1), e.g. 0.9 or 0.99")
    for name, wanted in (("weight_decay", "a finite number >= 0, e.g. 0.1"),
                         ("grad_clip", "a finite number >= 0 (0: no clipping), e.g. 1.0"),
                         ("peak_tflops", "a finite number >= 0 (0: unknown)")):  # fmt: skip
        _require(name, fields[name], _is_real(fields[name]) and fields[name] >= 0, wanted)
    for name in ("compile", "activation_checkpointing", "reshard_after_forward"):
        _require(name, fields[name], isinstance(fields[name], bool), "true or false")
    for name in ("data", "data_files", "exclude_files", "sample_prompt", "device"):
        _require(name, fields[name], isinstance(fields[name], str), "text")
    _require("data", config.data, bool(config.data.strip()), "a data set name, 'files' or a prepared folder")
    for name, choices in _choices().items():
        _require(name, fields[name], fields[name] in choices, f"one of {', '.join(choices)}")
    if config.tokenizer == "bpe" and config.vocab_size < 257:
        raise ConfigError(f"vocab_size must be >= 257 for a BPE tokenizer (256 bytes and <|endoftext|>), "
                          f"got {config.vocab_size}")  # fmt: skip
    if config.data == "files" and not config.data_files.strip():
        raise ConfigError("data 'files' needs data_files: glob(s) of UTF-8 text files, e.g. 'corpus/*.txt'")
    if config.precision == "fp16" and config.strategy == "fsdp":
        raise ConfigError("precision fp16 with strategy fsdp is not supported; use precision bf16 "
                          "(fp32's range, no loss scaling) or strategy ddp")  # fmt: skip


# ---------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "shakespeare-char": dict(
        data="tinyshakespeare", tokenizer="char", model=dict(BABY_GPT), batch_size=12, max_steps=2000, lr=1e-3,
        min_lr=1e-4, warmup_steps=100, beta2=0.99, weight_decay=0.1, eval_interval=250, eval_batches=20,
        precision="fp32", sample_prompt="\n", sample_tokens=200,
    ),
    "quickstart": dict(
        data="python-stdlib", exclude_files="encodings/*,pydoc_data/*", tokenizer="bpe", vocab_size=1024,
        tokenizer_chars=600_000, model=dict(n_layer=4, n_head=4, d_model=128, context_length=128, dropout=0.0),
        batch_size=12, max_steps=1200, lr=3e-3, min_lr=3e-4, warmup_steps=100, beta2=0.99, weight_decay=0.1,
        eval_interval=200, eval_batches=10, precision="auto", sample_prompt="def fibonacci(n):\n", sample_tokens=60,
    ),
    # the book model (chapter 05's main run; minillm.pretrained.book_run caches it for the later chapters):
    # the curated standard library, a 2,048-token BPE, 4 layers of width 128, 3,000 steps of 1,024 tokens
    "book": dict(
        data="python-stdlib-curated", tokenizer="bpe", vocab_size=2048, tokenizer_chars=2_000_000,
        model=dict(n_layer=4, n_head=4, d_model=128, context_length=128, dropout=0.0), batch_size=8,
        max_steps=3000, lr=3e-3, min_lr=3e-4, warmup_steps=100, beta2=0.99, weight_decay=0.1, eval_interval=500,
        eval_batches=20, precision="fp32", device="cpu", sample_prompt="def fibonacci(n):\n", sample_tokens=80,
    ),
    "gpt2-124m": dict(
        data="fineweb-edu", tokenizer="gpt2", max_chars=2_000_000_000,
        model=dict(MODEL_SHAPES["gpt2"], dropout=0.0, vocab_multiple=64), batch_size=16, grad_accum=32,
        max_steps=2000, lr=6e-4, min_lr=6e-5, warmup_steps=200, beta2=0.95, weight_decay=0.1, eval_interval=250,
        eval_batches=20, log_interval=10, precision="auto", compile=True, sample_prompt="The meaning of",
        sample_tokens=48,
    ),
}  # fmt: skip

#: The runs of `minillm.pretrained.pretrained_tiny`: presets shortened to about a minute on a
#: laptop CPU. Written out in full (not derived from PRESETS), so that tuning a preset
#: never changes the cached base models that later chapters' notebooks print from.
TINY: dict[str, dict[str, Any]] = {
    "shakespeare-char": dict(PRESETS["shakespeare-char"], max_steps=800, eval_interval=800, sample_tokens=0,
                             eval_batches=20, device="cpu"),
    "quickstart": dict(
        data="python-stdlib", tokenizer="bpe", vocab_size=2048, tokenizer_chars=600_000,
        model=dict(n_layer=4, n_head=4, d_model=128, context_length=128, dropout=0.0), batch_size=16,
        max_steps=300, lr=2e-3, min_lr=2e-4, warmup_steps=50, beta2=0.99, weight_decay=0.1, eval_interval=300,
        eval_batches=10, precision="fp32", sample_prompt="def fibonacci(n):\n", sample_tokens=0, device="cpu",
    ),
}  # fmt: skip


def _from_preset(table: dict[str, dict[str, Any]], name: str, kind: str) -> TrainConfig:
    if name not in table:
        close = difflib.get_close_matches(name, table, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown {kind} {name!r}{hint}; choose one of {', '.join(sorted(table))}")
    fields = dict(table[name])
    fields["model"] = GPTConfig(**{**BABY_GPT, **fields.get("model", {})})
    return TrainConfig(**fields)


#: The environment variable that picks the book's settings: "cpu" (default: a 2-core laptop) or "gpu".
BOOK_SCALE_VARIABLE = "MINILLM_BOOK_SCALE"
BOOK_SCALES = ("cpu", "gpu")


def book_scale() -> str:
    """The scale the chapters run at: `MINILLM_BOOK_SCALE` ("cpu", the default, or "gpu").

    Every chapter reads it once and picks its settings from it, e.g.
    `steps = {"cpu": 600, "gpu": 5000}[book_scale()]`; the README's table lists them.
    """
    scale = os.environ.get(BOOK_SCALE_VARIABLE, "cpu").strip().lower() or "cpu"
    if scale not in BOOK_SCALES:
        raise ConfigError(f"{BOOK_SCALE_VARIABLE}={scale!r} is not a scale; set it to one of {', '.join(BOOK_SCALES)}")
    return scale


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """The `TrainConfig` of preset `name` with `overrides` applied (see `apply_overrides`)."""
    return apply_overrides(_from_preset(PRESETS, name, "preset"), overrides)


def tiny_config(name: str) -> TrainConfig:
    """The config `pretrained_tiny(name)` trains: `TINY[name]` over the `TrainConfig` defaults."""
    return _from_preset(TINY, name, "tiny model")


# ---------------------------------------------------------------------------
# Settings by name: the command line's --key value
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One settable name: where it lives (`owner` "run" or "model"), its type and its choices."""

    name: str
    owner: str  # "run": a TrainConfig field; "model": a GPTConfig field
    type: Any  # the resolved annotation (int, float, bool, str, Literal[...], int | None, ...)
    default: Any

    @property
    def choices(self) -> tuple | None:
        """The allowed values of a `Literal` setting, else None."""
        return typing.get_args(self.type) if typing.get_origin(self.type) is Literal else None

    @property
    def type_name(self) -> str:
        """'int', 'float', 'bool', 'str' or 'choice' (what the value is parsed as)."""
        if self.choices is not None:
            return "choice"
        args = [a for a in typing.get_args(self.type) if a is not type(None)] or [self.type]
        return getattr(args[0], "__name__", "str")


def settings() -> dict[str, Setting]:
    """Every setting by its flat name: the run's fields, then the model's (all but `vocab_size`)."""
    out: dict[str, Setting] = {}
    for owner, cls, default in (("run", TrainConfig, TrainConfig()), ("model", GPTConfig, _baby_gpt())):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "model" or f.name in out:
                continue
            out[f.name] = Setting(f.name, owner, hints[f.name], getattr(default, f.name))
    return out


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with settings replaced; string values are converted to the setting's type.

    Keys may use dashes or underscores (`max-steps` = `max_steps`) and may name
    model fields flat (`n_layer`) or dotted (`model.n_layer`). An unknown key or
    a value that does not parse raises `ConfigError` saying what would work.
    """
    known = settings()
    run_changes, model_changes = {}, {}
    for key, value in overrides.items():
        name = key.replace("-", "_").removeprefix("model.")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown setting {key!r}{hint}; valid settings: {', '.join(known)}")
        setting = known[name]
        parsed = parse_value(setting, value) if isinstance(value, str) else value
        (model_changes if setting.owner == "model" else run_changes)[name] = parsed
    check_model_fields({**dataclasses.asdict(config.model), **model_changes})  # names the field the user set
    try:
        model = dataclasses.replace(config.model, **model_changes)
        return dataclasses.replace(config, model=model, **run_changes)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err


def parse_value(setting: Setting, text: str) -> Any:
    """Convert command-line text to the type of `setting` (int, float, bool, a choice, None or str)."""
    kind = setting.type_name
    optional = type(None) in typing.get_args(setting.type)
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if kind == "choice":
            if text not in setting.choices:
                raise ValueError(text)
            return text
        if kind == "bool":
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if kind == "int":
            return int(float(text)) if "e" in text.lower() and float(text).is_integer() else int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        wanted = f"one of {', '.join(setting.choices)}" if kind == "choice" else f"a {kind}"
        raise ConfigError(f"setting {setting.name!r} needs {wanted}, got {text!r}") from None
    return unescape(text)


def unescape(text: str) -> str:
    """Command-line text with the escapes \\n and \\t turned into a newline and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")
