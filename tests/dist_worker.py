"""A worker for tests/test_distributed.py, started by torchrun on 2 CPU processes (gloo).

    python -m torch.distributed.run --nproc_per_node=2 tests/dist_worker.py SPEC.json

SPEC holds `out` (a fresh folder) and `overrides` (TrainConfig settings over the
shakespeare-char preset). Every rank runs the same scenarios; rank 0 writes
what the test checks to `out/results.json` and `out/logits.pt`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from minillm import distributed as D
from minillm.memory import state_bytes
from minillm.model import GPT, GPTConfig
from minillm.optim import make_optimizer
from minillm.config import preset_config
from minillm.corpus import load_data
from minillm.train import forward_backward, train


def losses(result) -> list[float]:
    return [r["train_loss"] for r in result.history if "train_loss" in r]


def measured_states(strategy: str, ctx: D.DistContext) -> dict[str, int]:
    """Per-rank bytes of params, grads and AdamW state after one step (gradients kept)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, context_length=32, d_model=64, n_layer=4, n_head=4))
    net = D.wrap_model(model, strategy, ctx)
    optimizer = make_optimizer(model, 1e-3)
    x = torch.randint(0, 64, (2, 32))
    forward_backward(net, [(x, x)])
    optimizer.step()
    return state_bytes(model, optimizer)


def deferred_sync(ctx: D.DistContext) -> dict:
    """DDP with 2 micro-batches per rank: all-reduce calls, and the gradient vs one big batch in one process."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, context_length=16, d_model=32, n_layer=2, n_head=2)
    model = GPT(config)
    reference = GPT(config)
    reference.load_state_dict(model.state_dict())
    net = D.wrap_model(model, "ddp", ctx)
    calls = [0]

    def counting_hook(state, bucket):  # DDP's all-reduce, counted
        calls[0] += 1
        fut = dist.all_reduce(bucket.buffer().div_(ctx.world_size), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])

    net.register_comm_hook(None, counting_hook)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 64, (3, 16), generator=gen),) * 2 for _ in range(4)]  # global: 4 micro-batches
    forward_backward(net, [batches[0]])  # one micro-batch: how many all-reduce calls a sync takes
    per_sync = calls[0]
    model.zero_grad(set_to_none=True)
    calls[0] = 0
    forward_backward(net, D.shard_micro_batches(batches, ctx.rank, ctx.world_size))
    x = torch.cat([b[0] for b in batches])  # the one big batch of 12 sequences
    _, loss = reference(x, x)
    loss.backward()
    err = max(float((p.grad - q.grad).abs().max()) for p, q in zip(model.parameters(), reference.parameters()))
    return {"per_sync": per_sync, "accumulated_calls": calls[0], "max_grad_diff": err}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    dist.init_process_group("gloo")  # train() reuses it and leaves it open
    torch.set_num_threads(1)
    ctx = D.init_distributed("cpu", "fsdp")
    config = preset_config("shakespeare-char", **spec["overrides"])
    data = load_data(config)
    res: dict = {"world_size": ctx.world_size}

    ddp = train(dataclasses.replace(config, strategy="ddp"), out / "ddp", data=data, progress=False)
    res["ddp"] = losses(ddp)
    res["ddp_val"] = ddp.val_loss
    fsdp_config = dataclasses.replace(config, strategy="fsdp")
    fsdp = train(fsdp_config, out / "fsdp", data=data, progress=False)
    res["fsdp"] = losses(fsdp)
    x = torch.arange(config.context_length).remainder(data.tokenizer.vocab_size)[None]
    with torch.no_grad():
        logits, _ = fsdp.model(x)  # every rank takes part (all-gathers); the result is whole on each
    if ctx.is_main:
        torch.save({"x": x, "logits": logits}, out / "logits.pt")
    # resume a sharded checkpoint: stop after 2 steps, continue in a second call
    first = train(fsdp_config, out / "fsdp_resumed", data=data, progress=False, stop_after=2)
    second = train(fsdp_config, out / "fsdp_resumed", data=data, progress=False, resume=True)
    res["fsdp_resumed"] = losses(first) + losses(second)
    checkpointed = dataclasses.replace(fsdp_config, activation_checkpointing=True, reshard_after_forward=False)
    res["fsdp_checkpointed"] = losses(train(checkpointed, None, data=data, progress=False))
    bf16 = dataclasses.replace(fsdp_config, precision="bf16", max_steps=2)
    res["fsdp_bf16"] = losses(train(bf16, None, data=data, progress=False))
    # torch.compile (inductor on the CPU) under DDP and FSDP: the eager losses, step for step
    for strategy in ("ddp", "fsdp"):
        short = dataclasses.replace(config, strategy=strategy, max_steps=3, eval_interval=3)
        res[f"{strategy}_eager3"] = losses(train(short, None, data=data, progress=False))
        res[f"{strategy}_compiled"] = losses(train(dataclasses.replace(short, compile=True), None, data=data,
                                                   progress=False))
    kernels = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/nonexistent"))
    res["inductor_files"] = sum(1 for _ in kernels.rglob("*.py"))  # what inductor generated: it did compile
    res["bytes_ddp"] = measured_states("ddp", ctx)
    res["bytes_fsdp"] = measured_states("fsdp", ctx)
    res["deferred"] = deferred_sync(ctx)
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, {"bytes_fsdp": res["bytes_fsdp"], "deferred": res["deferred"]})
    res["per_rank"] = gathered
    if ctx.is_main:
        (out / "results.json").write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
