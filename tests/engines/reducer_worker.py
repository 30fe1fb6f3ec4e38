"""One rank of the GradReducer checks (torchrun, gloo, CPU); writes its measurements to OUT/rank<r>.json.

Model: a frozen base Linear stack with two LoRA-like adapters on it (the shared-LoRA layout in miniature):
"gen" params are the ones an optimizer steps, "fake" params also get gradients but are not reduced."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as tdist

from dmdr_cli.runtime.distributed import Dist, GradReducer, clip_grad_norm
from dmdr_cli.runtime.precision import make_optimizer, optimizer_state_bytes, parameter_owners

WIDTH, LAYERS = 32, 8


def build(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(WIDTH, WIDTH, generator=g) / WIDTH ** 0.5 for _ in range(LAYERS)]
    gen = [torch.nn.Parameter(torch.randn(WIDTH, WIDTH, generator=g) * 0.01) for _ in range(LAYERS)]
    fake = [torch.nn.Parameter(torch.randn(WIDTH, WIDTH, generator=g) * 0.01) for _ in range(LAYERS)]
    return base, gen, fake


class Probe(torch.autograd.Function):
    """Identity whose backward, the last thing the backward runs, records what the reducer had launched."""
    seen: list[int] = []
    reducer: GradReducer | None = None

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        Probe.seen.append(Probe.reducer.hook_launches)
        return grad


def forward(base, adapter, x):
    h = Probe.apply(x.requires_grad_())
    for w, a in zip(base, adapter):
        h = torch.tanh(h @ (w + a))
    return (h ** 2).mean()


def batch(rank: int, micro: int):
    return torch.randn(4, WIDTH, generator=torch.Generator().manual_seed(100 + 10 * rank + micro))


def local_grads(base, params, rank, micros):
    """This rank's plain (unreduced) gradients of the accumulated loss, by autograd.grad."""
    total = [torch.zeros_like(p) for p in params]
    for m in range(micros):
        for t, g in zip(total, torch.autograd.grad(forward(base, params, batch(rank, m)) / micros, params)):
            t += g
    return total


def main(out: Path) -> None:
    tdist.init_process_group("gloo")
    rank, world = tdist.get_rank(), tdist.get_world_size()
    dist = Dist(rank=rank, world_size=world, device=torch.device("cpu"))
    res: dict = {}
    base, gen, fake = build()

    # 1. replicated: exactly the stepped params reduced, buckets launched during the backward, accumulation
    layer_bytes = WIDTH * WIDTH * 4
    reducer = GradReducer(gen, dist, bucket_bytes=2 * layer_bytes)
    Probe.reducer, Probe.seen = reducer, []
    expected = [torch.zeros_like(p) for p in gen]
    for r in range(world):
        for e, g in zip(expected, local_grads(base, gen, r, 2)):
            e += g / world
    fake_expected = local_grads(base, fake, rank, 1)
    for micro in range(2):
        if micro == 1:
            reducer.arm()
        (forward(base, gen, batch(rank, micro)) / 2).backward()
    (forward(base, fake, batch(rank, 0))).backward()  # the other adapter's gradients: not this reducer's
    res["launched_by_hooks"] = reducer.hook_launches
    res["probe_saw_launched"] = Probe.seen[:2]  # [first micro (unarmed), second micro (armed)]
    res["buckets"] = len(reducer.buckets)
    reducer.finish()
    res["gen_err"] = max((p.grad - e).abs().max().item() for p, e in zip(gen, expected))
    res["fake_err"] = max((p.grad - e).abs().max().item() for p, e in zip(fake, fake_expected))
    res["bytes_reduced"] = reducer.bytes_reduced
    res["gen_bytes"] = sum(p.numel() * 4 for p in gen)
    # a gradient accumulated after its bucket was sent is refused, not silently averaged stale
    for p in gen + fake:
        p.grad = None
    reducer.arm()
    forward(base, gen, batch(rank, 0)).backward()
    forward(base, gen, batch(rank, 1)).backward()
    try:
        reducer.finish()
        res["late_refused"] = False
    except RuntimeError:
        res["late_refused"] = True
    reducer.remove()

    # 2. sharded (ZeroRedundancyOptimizer) vs replicated AdamW: same weights, 1/N state and gradient bytes
    cfg = SimpleNamespace(betas=(0.9, 0.999), weight_decay=0.01, optimizer="adamw", sharding="optimizer")
    final = {}
    for mode in ("none", "optimizer"):
        base, gen, _ = build()
        opt = make_optimizer(gen, 1e-2, SimpleNamespace(**{**vars(cfg), "sharding": mode}), dist.device, world)
        red = GradReducer(gen, dist, owner=parameter_owners(opt), bucket_bytes=2 * layer_bytes)
        for step in range(3):
            red.arm()
            loss = forward(base, gen, batch(rank, step))
            loss.backward()
            red.finish()
            res[f"{mode}_grad_bytes"] = red.grad_bytes()
            clip_grad_norm(gen, 0.05, red, loss)  # active clipping: the global norm must be the same
            opt.step()
            opt.zero_grad(set_to_none=True)
        res[f"{mode}_state_bytes"] = optimizer_state_bytes(opt)
        res[f"{mode}_optimizer"] = type(opt).__name__
        final[mode] = [p.detach().clone() for p in gen]
        red.remove()
    res["sharded_vs_replicated"] = max((a - b).abs().max().item() for a, b in zip(final["none"], final["optimizer"]))

    # 3. buckets follow the order gradients arrive in, not the registration order: layers registered the way SDXL
    # registers its blocks (a later part of the forward first: 4-7, then 0-3), one layer per bucket; the backward
    # produces 7, 6, ..., 0
    base, gen, _ = build()
    reducer = GradReducer(gen[4:] + gen[:4], dist, bucket_bytes=layer_bytes)
    launched: list[int] = []  # buckets the reducer had started when each gradient arrived (hooks run in order)
    watch = [p.register_post_accumulate_grad_hook(lambda p: launched.append(reducer.hook_launches)) for p in gen]
    res["arrival"] = []
    for step in range(2):
        before, launched[:] = reducer.hook_launches, []
        reducer.arm()
        forward(base, gen, batch(rank, step)).backward()
        started = [n - before for n in launched]
        first = next(i + 1 for i, n in enumerate(started) if n > 0)
        waiting = max(i + 1 - n for i, n in enumerate(started))  # one layer a bucket: i + 1 buckets are complete
        res["arrival"].append([first, waiting, len(reducer.buckets)])
        reducer.finish()
        for p in gen:
            p.grad = None
    for handle in watch:
        handle.remove()
    reducer.remove()
    (out / f"rank{rank}.json").write_text(json.dumps(res))
    tdist.barrier()  # every rank done with every collective and its results written
    # then leave without tearing gloo down: its teardown at exit aborts now and then on a loaded machine
    # ("terminate called without an active exception", after the results are written; pytorch#179291)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
