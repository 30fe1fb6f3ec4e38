"""One rank of the train.sharding full precision check (torchrun, gloo, CPU): the engine's FullySharded layout with
and without autocast. On the CPU the engine itself runs without autocast, so its 2-process tests never gather in
bf16; this runs the layout as it runs on GPUs. Writes OUT/rank<r>.json.

The tiny sd UNet with the generator's LoRA (shared layout), each process on its share of one batch: a reference copy
unsharded, its gradients averaged over the processes by an all-reduce (plain data parallel), against a copy sharded
over the processes (gradients reduce-scattered in fp32), in three settings:
- fp32, no autocast: sharding alone, which must change nothing beyond fp32 rounding;
- bf16 autocast, blocks gathered in fp32 (autocast casts them as it casts unsharded weights);
- bf16 autocast, blocks gathered in bf16 (the engine's policy): weights that autocast keeps in fp32 (normalisation)
  enter their ops rounded to bf16.
Beside each, the whole batch on one process: the size of bf16's own batch-shape effects."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as tdist

from dmdr_cli.dmd.networks import build_networks
from dmdr_cli.families import FAMILIES, load_family
from dmdr_cli.recipe import validate
from dmdr_cli.runtime.distributed import Dist
from dmdr_cli.runtime.sharding import FullySharded, is_sharded_tensor, units

BATCH = 4
SETTINGS = {"fp32": (False, None), "autocast, fp32 blocks": (True, None), "autocast, bf16 blocks": (True, torch.bfloat16)}


def networks(cfg):
    family = load_family(cfg.model)  # fp32 on the CPU, as the masters are on a GPU
    torch.manual_seed(0)  # the LoRA A matrices: the same in every copy
    return family, build_networks(family.denoiser, cfg, FAMILIES[cfg.model.family])


def backward(family, nets, amp: bool, x, t, cond) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = family.forward(nets.as_generator(), x, t, cond)
    out.float().pow(2).mean().backward()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def check(cfg, dist: Dist, amp: bool, gather_dtype, x, t, cond) -> dict:
    rank, world = dist.rank, dist.world_size
    share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    family, reference = networks(cfg)
    backward(family, reference, amp, x, t, cond)  # the whole batch on one process
    whole = [p.grad.clone() for p in reference.generator_params]
    reference.guidance.zero_grad(set_to_none=True)
    backward(family, reference, amp, x[share], t[share], cond[share])
    averaged = []
    for p in reference.generator_params:
        tdist.all_reduce(p.grad)
        averaged.append(p.grad / world)

    family, nets = networks(cfg)
    blocks = units(nets.guidance)  # found before sharding, which renames their classes
    nested = {id(p) for block in blocks for child in block.modules() if child is not block and child in blocks
              for p in child.parameters()}
    own = {block: next((n for n, p in block.named_parameters() if id(p) not in nested), None) for block in blocks}
    own = {block: name for block, name in own.items() if name is not None}  # a block of blocks gathers nothing itself
    FullySharded(dist, gather_dtype).wrap(nets)
    gathered = set()  # the dtype of a weight each block gathers, inside its forward (after FSDP's gather hook)
    for block, name in own.items():
        block.register_forward_pre_hook(lambda m, args, name=name: gathered.add(str(m.get_parameter(name).dtype)))
    backward(family, nets, amp, x[share], t[share], cond[share])
    grads = [p.grad.full_tensor() if is_sharded_tensor(p.grad) else p.grad for p in nets.generator_params]
    return {"max_relative_error": max(relative(g, a) for g, a in zip(grads, averaged)),
            "batch_effect": max(relative(w, a) for w, a in zip(whole, averaged)),
            "sharded": sum(is_sharded_tensor(p) for p in nets.generator_params), "params": len(grads),
            "gathered_dtypes": sorted(gathered), "grad_dtypes": sorted({str(p.grad.dtype) for p in nets.generator_params})}


def main(model_dir: str, out: str) -> None:
    tdist.init_process_group("gloo")
    dist = Dist(rank=tdist.get_rank(), world_size=tdist.get_world_size(), device=torch.device("cpu"))
    cfg = validate({"model": {"family": "sd", "pretrained": model_dir, "resolution": 16},
                    "student": {"finetune": "lora"}, "train": {"sharding": "full"}})
    family = load_family(cfg.model)
    g = torch.Generator().manual_seed(1)
    x = family.noise(BATCH, 16, 16, generator=g)
    t = torch.randint(100, 900, (BATCH,), generator=g).float()
    cond = family.encode_prompts([f"a red square number {k}" for k in range(BATCH)])
    results = {name: check(cfg, dist, amp, dtype, x, t, cond) for name, (amp, dtype) in SETTINGS.items()}
    Path(out, f"rank{dist.rank}.json").write_text(json.dumps(results))
    tdist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(*sys.argv[1:3])
