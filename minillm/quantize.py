"""Weight quantization from scratch: int8 and int4 linear layers and models (appendix B).

Appendix B (`B_inference_compression`) makes the book model smaller by storing
each weight of its linear layers as integer codes plus float scales. The
arithmetic of one tensor (absmax and zero-point codes; scales per tensor,
output row or group; int4 packed two a byte) is `minillm.qtensor`, whose names
are importable from here too. This module builds on it:

* `QuantizedLinear`: an `nn.Linear` stored as codes + scales (int4 packed),
  whose forward pass (`kernel`) dequantizes, or multiplies integers;
* `quantize(model, bits, group_size, scheme, kernel=...)`: a quantized copy of a model;
* `model_bytes`: where a model's memory goes, by kind;
* `save_quantized` / `load_quantized`: a folder of safetensors + JSON (nothing unpickled).

By default (kernel="dequantize") this is *weight-only* quantization:
activations stay float and each layer dequantizes its weight before an
ordinary matrix multiply, so it saves memory (and memory bandwidth, what
token-by-token generation is limited by), not FLOPs, and costs time to
rebuild the weight. kernel="int8" (8-bit absmax codes, one scale per output
row) multiplies int8 activations by the int8 codes instead (W8A8): see
`minillm.int8_matmul`, whose `quantize_activations`, `int8_linear_reference`
and `int_mm_padded` are importable from here too.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minillm.checkpoint import commit, staging_folder
from minillm.errors import CheckpointError, CheckpointNotFoundError, ConfigError, MinillmError
from minillm.fileio import atomic_write
from minillm.int8_matmul import Int8Kernel
# re-exported, so that `from minillm.quantize import int8_linear_reference` (and the others) keeps working
from minillm.int8_matmul import int8_linear_reference as int8_linear_reference
from minillm.int8_matmul import int_mm_padded as int_mm_padded
from minillm.int8_matmul import quantize_activations as quantize_activations
from minillm.model import GPT, GPTConfig, read_safetensors, write_safetensors
# one tensor's arithmetic lives in minillm.qtensor; re-exported, so that `from minillm.quantize import
# quantize_tensor` (and the others) keeps working
from minillm.qtensor import BITS as BITS
from minillm.qtensor import GRANULARITIES as GRANULARITIES
from minillm.qtensor import SCHEMES as SCHEMES
from minillm.qtensor import QuantizedTensor, check_settings, pack_int4, quantize_tensor, unpack_int4
from minillm.tokenizer import TOKENIZER_FILE, load_tokenizer

KERNELS = ("dequantize", "int8")
WEIGHTS_FILE = "quantized.safetensors"
SETTINGS_FILE = "quantization.json"
FORMAT = "minillm-quantized"


def check_kernel(kernel: str, bits: int, group_size: int | None, scheme: str) -> None:
    """Raise ConfigError unless `kernel` is a known one that can multiply weights of these settings.

    "dequantize" takes any weight. "int8" (W8A8: int8 weights times int8
    activations, an int32 sum) needs 8-bit absmax codes with one scale per
    output row: the integer sum runs over a whole row and is rescaled once, by
    activation scale x weight scale.
    """
    if kernel not in KERNELS:
        raise ConfigError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel != "int8":
        return
    if bits != 8:
        raise ConfigError(f"kernel 'int8' multiplies 8-bit codes; bits={bits} weights need kernel='dequantize'")
    if scheme != "absmax":
        raise ConfigError(f"kernel 'int8' needs absmax (symmetric) codes, not scheme={scheme!r}: the integer "
                          "kernel takes the codes as they are, with no zero point to subtract")  # fmt: skip
    if group_size is not None:
        raise ConfigError(f"kernel 'int8' needs one scale per output row (group_size=None), not group_size="
                          f"{group_size}: the integer kernel sums a whole row in one int32 accumulator and takes "
                          "one scale per output row to rescale it")  # fmt: skip


# ---------------------------------------------------------------------------
# A quantized linear layer
# ---------------------------------------------------------------------------


class QuantizedLinear(nn.Module):
    """An `nn.Linear` whose weight is stored as `bits`-bit codes and per-row or per-group scales.

    x: (..., in) -> (..., out). Buffers: `codes` int8/uint8 (out, in) for 8 bits,
    uint8 (ceil(out * in / 2),) for 4 bits (two codes a byte); `scale` (out, G)
    in the layer's float dtype, G = 1 (per-channel, `group_size` None) or
    in / group_size; `zero` uint8 (out, G) for zero-point only. `bias` stays a
    float parameter. Build one with `from_linear`.

    `kernel` chooses the forward pass. "dequantize" (the default, any weight)
    rebuilds the float weight and calls `F.linear`: this saves memory, not
    FLOPs, and every call rebuilds the whole weight (int4 also unpacks it), so
    decoding at batch size 1 is slower than with the float layer (about 1.4x
    for int8 and 4x for int4 in appendix B's measurements on a CPU). "int8"
    (8-bit absmax codes, one scale per row; inference only) quantizes the
    activations per row on the fly and multiplies integers, as
    `int8_linear_reference` writes out (`minillm.int8_matmul.Int8Kernel`): on
    CUDA with `torch._int_mm` (`int_mm_padded`), on a CPU with fbgemm's dynamic
    int8 linear layer (the one behind `torch.ao.nn.quantized.dynamic.Linear`;
    without fbgemm, the reference itself). The kernel's form of the weight (fbgemm's packed
    matrix, or the padded transposed codes) is built on the first call and
    cached, rebuilt when the codes, the scales or the device change, and never
    saved: the state dict holds the codes and scales only. That form is a second
    int8 copy of the weight in memory, which `model_bytes` counts as
    "kernel_weights" once a call has made it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 8,
                 group_size: int | None = None, scheme: str = "absmax", device: Any = None,
                 dtype: torch.dtype | None = None, kernel: str = "dequantize") -> None:  # fmt: skip
        super().__init__()
        check_settings(bits, group_size, scheme)
        check_kernel(kernel, bits, group_size, scheme)
        self._kernel, self._int8 = kernel, Int8Kernel()  # the int8 kernel holds its form of the weight
        if group_size is not None and in_features % group_size:
            raise ConfigError(f"group_size {group_size} does not divide the input width {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.scheme = bits, group_size, scheme
        n, groups = in_features * out_features, in_features // (group_size or in_features)
        code_dtype = torch.int8 if scheme == "absmax" else torch.uint8
        codes = torch.zeros((n + 1) // 2, dtype=torch.uint8) if bits == 4 else torch.zeros(
            out_features, in_features, dtype=code_dtype)  # fmt: skip
        self.register_buffer("codes", codes.to(device))
        self.register_buffer("scale", torch.zeros(out_features, groups, device=device, dtype=dtype))
        if scheme == "zeropoint":
            self.register_buffer("zero", torch.zeros(out_features, groups, device=device, dtype=torch.uint8))
        else:
            self.zero = None
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int | None = None,
                    scheme: str = "absmax", name: str = "the layer",
                    kernel: str = "dequantize") -> QuantizedLinear:  # fmt: skip
        """Quantize `linear`'s weight (out, in); its bias is copied. `name` is used in error messages."""
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"QuantizedLinear.from_linear needs an nn.Linear, got {type(linear).__name__}")
        check_kernel(kernel, bits, group_size, scheme)
        w = linear.weight
        qt = quantize_tensor(w, bits, scheme, "channel" if group_size is None else "group", group_size, name=name)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, bits, group_size, scheme,
                    device=w.device, dtype=w.dtype, kernel=kernel)  # fmt: skip
        layer.codes, layer.scale = pack_int4(qt.codes) if bits == 4 else qt.codes, qt.scale.to(w.dtype)
        if qt.zero is not None:
            layer.zero = qt.zero
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return layer

    def quantized_weight(self) -> QuantizedTensor:
        """The weight as a `QuantizedTensor` (4-bit codes unpacked)."""
        shape = (self.out_features, self.in_features)
        codes = self.codes
        if self.bits == 4:
            codes = unpack_int4(self.codes, shape[0] * shape[1], signed=self.scheme == "absmax").view(shape)
        granularity = "channel" if self.group_size is None else "group"
        return QuantizedTensor(codes, self.scale, self.zero, shape, self.bits, self.scheme, granularity,
                               self.group_size)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (out, in) in the layer's float dtype (computed anew on each access)."""
        return self.quantized_weight().dequantize(self.scale.dtype)

    @property
    def kernel(self) -> str:
        """The forward pass: "dequantize" or "int8" (settable; checked against the layer's settings)."""
        return self._kernel

    @kernel.setter
    def kernel(self, kernel: str) -> None:
        check_kernel(kernel, self.bits, self.group_size, self.scheme)
        self._kernel, self._int8 = kernel, Int8Kernel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out): x W^T + b, with W dequantized to x's dtype, or with the int8 kernel."""
        if self._kernel == "int8":
            return self._int8.forward(x, self.codes, self.scale, self.bias)
        return F.linear(x, self.quantized_weight().dequantize(x.dtype), self.bias)

    def extra_repr(self) -> str:
        kernel = f", kernel={self._kernel}" if self._kernel != "dequantize" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={self.bits}, group_size={self.group_size}, scheme={self.scheme}{kernel}")  # fmt: skip


# ---------------------------------------------------------------------------
# A whole model
# ---------------------------------------------------------------------------


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p) for p in skip)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize(model: nn.Module, bits: int = 8, group_size: int | None = None, scheme: str = "absmax",
             skip: tuple[str, ...] | str = ("lm_head",), kernel: str = "dequantize") -> nn.Module:  # fmt: skip
    """A quantized copy of `model`: every `nn.Linear` not matched by `skip` becomes a `QuantizedLinear`.

    `model` itself is left untouched (the copy is deep). `group_size` None: one
    scale per output row; an int: one per `group_size` inputs of a row, which
    must divide every chosen layer's input width. `skip`: module names (a full
    name, a "."-suffix or a glob) kept in float. The default keeps the output
    head, which in the book model is tied to the token embedding: the matrix is
    stored once and looked up as embeddings, so a quantized head would add a
    second copy instead of saving one, and the logits are the most
    error-sensitive product of the model. Embeddings and norms stay float too.
    The settings are recorded as `copy.quantization` (bits, group_size, scheme).
    `kernel`: every quantized layer's forward pass ("dequantize" or "int8",
    see `QuantizedLinear`), kept by `save_quantized` / `load_quantized`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module (e.g. minillm.GPT), got {type(model).__name__}")
    check_settings(bits, group_size, scheme)
    check_kernel(kernel, bits, group_size, scheme)
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    if getattr(model, "quantization", None) or any(isinstance(m, QuantizedLinear) for m in model.modules()):
        raise ConfigError("the model is already quantized; quantize the float model it came from instead "
                          "(quantizing twice would only add error)")  # fmt: skip
    chosen = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not _skipped(n, skip)]
    if not chosen:
        raise ConfigError(f"no nn.Linear layer of the model is left to quantize with skip={skip}")
    new = copy.deepcopy(model)  # a bad layer (group size, NaN) raises before `model` could change
    for name in chosen:
        layer = QuantizedLinear.from_linear(new.get_submodule(name), bits, group_size, scheme, f"layer {name}",
                                            kernel)  # fmt: skip
        _replace(new, name, layer)
    new.quantization = {"bits": bits, "group_size": group_size, "scheme": scheme}
    return new


def model_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes `model` holds in memory, by kind, each tensor counted once (a tied head is the embedding).

    Keys: float_params (all parameters: embeddings, norms, biases, float layers),
    int_weights (the codes of quantized layers), scales (their scales and zero
    points), buffers (everything else, e.g. RoPE tables), kernel_weights (the
    int8 kernels' own copies of their weights, made by the first forward pass:
    `Int8Kernel.nbytes`; 0 for kernel="dequantize") and total.
    """
    kinds: dict[int, str] = {}
    kernel_weights = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            kinds[id(m.codes)] = "int_weights"
            kinds.update({id(t): "scales" for t in (m.scale, m.zero) if t is not None})
            kernel_weights += m._int8.nbytes
    out = dict.fromkeys(("float_params", "int_weights", "scales", "buffers"), 0)
    seen: set[int] = set()
    tensors = [("float_params", p) for p in model.parameters()] + [("buffers", b) for b in model.buffers()]
    for kind, t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out[kinds.get(id(t), kind)] += t.numel() * t.element_size()
    out["kernel_weights"] = kernel_weights
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------------------
# On disk: safetensors + JSON, committed like a checkpoint
# ---------------------------------------------------------------------------


def save_quantized(folder: str | os.PathLike, model: GPT, tokenizer: Any) -> Path:
    """Write a quantized `GPT` (from `quantize`) and its tokenizer to `folder`; `load_quantized` reads it.

    Files: `quantized.safetensors` (codes, scales, zero points and float
    tensors, dtypes kept), `quantization.json` (the GPTConfig, the settings,
    the quantized layers' names, their kernel: one name, or {layer: kernel}
    if they differ) and the tokenizer. The folder is written under
    a temporary name and renamed into place (minillm.checkpoint's commit path):
    it appears complete or not at all; an existing one is replaced.
    """
    if not isinstance(model, GPT) or not getattr(model, "quantization", None):
        raise ConfigError("save_quantized needs a GPT returned by quantize(model, ...); save a float model "
                          "with minillm.checkpoint.save_model_folder")  # fmt: skip
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if "lm_head.weight" in state and model.lm_head.weight is model.tok_emb.weight:
        state.pop("lm_head.weight")  # tied: stored once, as tok_emb.weight
    kernels = {n: m.kernel for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    layers = list(kernels)
    kernel = kernels[layers[0]] if len(set(kernels.values())) == 1 else kernels
    settings = {"format": FORMAT, "version": 1, "config": model.config.to_dict(),
                "quantization": dict(model.quantization), "layers": layers, "kernel": kernel,
                "dtype": str(model.tok_emb.weight.dtype).removeprefix("torch.")}  # fmt: skip
    folder = Path(folder)
    tmp = staging_folder(folder.parent, folder.name)
    try:
        write_safetensors(tmp / WEIGHTS_FILE, state)
        tokenizer.save(tmp / TOKENIZER_FILE)
        atomic_write(tmp / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
        return commit(tmp, latest=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_settings(folder: Path) -> dict:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        if (folder / "model.safetensors").is_file():
            raise CheckpointError(f"{folder} is a float model folder, not a quantized one; load it with "
                                  "minillm.checkpoint.load_model and call quantize(model)")  # fmt: skip
        raise CheckpointNotFoundError(f"{path} not found; pass a folder written by save_quantized")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the folder is damaged") from err
    if not isinstance(settings, dict) or settings.get("format") != FORMAT or settings.get("version") != 1:
        raise CheckpointError(f"{path} is not a quantized-model description written by save_quantized")
    return settings


def load_quantized(folder: str | os.PathLike, device: torch.device | str | None = None) -> tuple[GPT, Any]:
    """(quantized GPT in eval mode, tokenizer) from a `save_quantized` folder; only safetensors and JSON are read.

    The layers run the kernel they were saved with ("dequantize" for folders
    written before kernels existed). A float model folder, a missing or corrupt
    file, or tensors that do not fit the described model raise CheckpointError
    (CheckpointNotFoundError for a missing one).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"{folder} is not a directory; pass a folder written by save_quantized")
    settings = _read_settings(folder)
    try:
        q = settings["quantization"]
        check_settings(q["bits"], q["group_size"], q["scheme"])
        dtype = getattr(torch, settings["dtype"])
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ConfigError(f"dtype {settings['dtype']!r} is not a float type")
        model = GPT(GPTConfig(**settings["config"])).to(dtype)
        kernel = settings.get("kernel", "dequantize")
        kernels = kernel if isinstance(kernel, dict) else dict.fromkeys(settings["layers"], kernel)
        for name in settings["layers"]:
            linear = model.get_submodule(name)
            if not isinstance(linear, nn.Linear):
                raise ConfigError(f"{name} is not a linear layer of the model")
            _replace(model, name, QuantizedLinear(linear.in_features, linear.out_features, linear.bias is not None,
                                                  q["bits"], q["group_size"], q["scheme"], dtype=dtype,
                                                  kernel=kernels[name]))  # fmt: skip
    except (KeyError, TypeError, AttributeError, ValueError, MinillmError) as err:
        raise CheckpointError(f"{folder / SETTINGS_FILE} describes no model minillm can build "
                              f"({type(err).__name__}: {err}); the folder is damaged") from err  # fmt: skip
    saved = read_safetensors(folder / WEIGHTS_FILE)
    own = model.state_dict()
    if model.lm_head.weight is model.tok_emb.weight:
        own.pop("lm_head.weight")
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    wrong = [f"{k}: {v.dtype} {tuple(v.shape)} vs {own[k].dtype} {tuple(own[k].shape)}"
             for k, v in saved.items() if k in own and (v.shape, v.dtype) != (own[k].shape, own[k].dtype)]  # fmt: skip
    if missing or unexpected or wrong:
        raise CheckpointError(f"{folder / WEIGHTS_FILE} does not match {SETTINGS_FILE}: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}, wrong dtype/shape {wrong[:8]}")  # fmt: skip
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(saved[k])
    try:
        tokenizer = load_tokenizer(folder)
    except FileNotFoundError as err:
        raise CheckpointNotFoundError(f"{folder} has no {TOKENIZER_FILE} ({err}); save_quantized writes one") from err
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder / TOKENIZER_FILE} is not a readable tokenizer ({err})") from err
    model.quantization = {"bits": q["bits"], "group_size": q["group_size"], "scheme": q["scheme"]}
    model.eval()
    return (model.to(device) if device is not None else model), tokenizer
