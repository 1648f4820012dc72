"""Run under torchrun with 2 ranks: FSDP2 full (1-D mesh) and hybrid (2 nodes x 1 proc) forward +
backward + AdamW step of the tiny VLA compared with an unsharded single-process reference.
Writes a JSON report (rank 0) to argv[1]."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from pipeline.model import ActionPromptBuilder, VLAConfig, build_demo_tokenizer, build_vla
from pipeline.train.optim import OptimConfig, build_optimizer, clip_grad_norm
from pipeline.train.parallel import FSDPConfig, ParallelDims, init_distributed, parallelize
from pipeline.train.synthetic import SyntheticStream, synthetic_instructions

B = 2


def _model(tok):
    torch.manual_seed(0)
    cfg = VLAConfig(preset="tiny", llm_num_layers=2, vision_depth=1)
    return build_vla(cfg, vocab_size=len(tok), pad_token_id=tok.pad_token_id)


def _case(tok, builder, mode, shard_size, param_dtype, rank, world, ac="none"):
    stream = SyntheticStream(prompt_builder=builder, pad_id=tok.pad_token_id, batch_size=B * world, rank=0,
                             world_size=1, seed=0, image_size=64, num_tasks=4)
    batch = next(stream)
    local = {k: v[rank * B:(rank + 1) * B] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    ref = _model(tok)
    ref_opt = build_optimizer(ref, OptimConfig(lr=1e-3))
    out = ref(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"])
    out.loss.backward()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5).item()
    ref_opt.step()

    model = _model(tok)
    dims = ParallelDims(world_size=world, mode=mode, shard_size=shard_size)
    parallelize(model, dims.mesh, FSDPConfig(activation_checkpointing=ac, reshard_root=True), param_dtype=param_dtype,
                reduce_dtype=torch.float32)  # what `vla train` runs (shard_model)
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    got = model(local["pixel_values"], local["input_ids"], local["attention_mask"], local["labels"])
    got.loss.backward()
    loss = got.loss.detach().clone()
    dist.all_reduce(loss)
    norm = clip_grad_norm(model, 0.5).item()  # the loop's clip: DTensor-aware, over all shards
    grad_err = max((p.grad.full_tensor() - q.grad).abs().max().item()
                   for p, q in zip(model.parameters(), ref.parameters()))
    opt.step()
    param_err = max((p.full_tensor() - q).abs().max().item() for p, q in zip(model.parameters(), ref.parameters()))
    sharded = [type(p).__name__ for p in model.parameters()]
    return {"mesh": list(dims.mesh.shape), "norm": norm, "ref_norm": ref_norm, "loss": loss.item() / world, "ref_loss": out.loss.item(),
            "grad_err": grad_err, "param_err": param_err, "all_dtensor": all(s == "DTensor" for s in sharded),
            "local_numel": sum(p.to_local().numel() for p in model.parameters()),
            "full_numel": sum(p.numel() for p in ref.parameters())}


def main(out_path: str) -> None:
    init_distributed(torch.device("cpu"))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.use_deterministic_algorithms(True, warn_only=True)
    tok = build_demo_tokenizer(synthetic_instructions(4))
    builder = ActionPromptBuilder(tok)
    report = {
        "full": _case(tok, builder, "full", 0, torch.float32, rank, world),
        "hybrid": _case(tok, builder, "hybrid", 1, torch.float32, rank, world),
        "full_bf16": _case(tok, builder, "full", 0, torch.bfloat16, rank, world),
        "full_ac": _case(tok, builder, "full", 0, torch.float32, rank, world, ac="full"),
        "hybrid_selective_ac": _case(tok, builder, "hybrid", 1, torch.float32, rank, world, ac="selective"),
    }
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
