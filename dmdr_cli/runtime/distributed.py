"""Process group facts and gradient reduction, for one process or `accelerate launch` / `torchrun` (DDP-style).

Trainable weights are LoRA adapters on a shared frozen model, or full copies; instead of wrapping them
in DDP (which cannot express "only the live adapter of this model"), a `GradReducer` per optimizer
averages the gradients of exactly the parameters that optimizer updates: the same arithmetic as DDP.
It registers a post-accumulate-grad hook on each of those parameters, packs them into ~25 MiB buckets
and starts an async all-reduce of a bucket as soon as all its gradients are in, so communication overlaps the
rest of the backward; at most two buckets are in flight, so the extra memory is two buckets, never a flat copy
of every gradient. Buckets are launched strictly in order (the same on every rank), so their order must be the
order gradients arrive in: the first backward uses reverse registration order (a guess: SDXL registers its
down, up and mid blocks in that order, and its first bucket would complete two thirds into the backward), and
after it the buckets are rebuilt in the order the gradients were observed to arrive, as DDP does. With
`train.sharding: optimizer` the buckets are grouped by the rank that owns their parameters in torch's
`ZeroRedundancyOptimizer` and reduced to that rank only; the other ranks drop those gradients once the
reduction is done (ZeRO-2 style: each rank keeps 1/N of the optimizer state and, after the reduction, of the
gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def create(cls) -> "Dist":
        from accelerate import PartialState

        # reads the env that accelerate launch / torchrun set; single process otherwise. Without CUDA, cpu=True
        # lets accelerate recognise a torchrun-launched multi-process CPU job (gloo).
        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(rank=state.process_index, world_size=state.num_processes, device=torch.device(state.device))

    def any(self, flag: bool) -> bool:
        """True on every process if it is True on any (a collective: all processes call it each step)."""
        if self.world_size == 1:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def gather_rows(self, tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Every process's rows, concatenated in rank order, on every process; rank r holds counts[r] rows
        (padded to the largest count for the collective). CPU in, CPU out."""
        if self.world_size == 1:
            return tensor
        rows = max(counts)
        padded = torch.zeros(rows, *tensor.shape[1:], dtype=tensor.dtype, device=self.device)
        padded[:len(tensor)] = tensor.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, counts)]).cpu()

    def raise_together(self, error: Exception | None, message: str) -> None:
        """After work that can fail on some processes only (a checkpoint write): every process learns whether any
        failed (a collective, in place of a barrier) and raises, its own error or DmdrError(`message`), so none
        is left waiting in the next collective until a watchdog ends it."""
        if self.any(error is not None):
            from ..errors import DmdrError

            raise error if error is not None else DmdrError(message)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def mean_scalars(self, stats: dict) -> dict:
        """Scalar stats averaged over processes (a collective: every process must call it at the same step)."""
        if self.world_size == 1:
            return stats
        keys = sorted(k for k, v in stats.items() if _scalar(v))
        values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(values)
        return {**stats, **{k: v / self.world_size for k, v in zip(keys, values.tolist())}}


def _scalar(v) -> bool:
    return (torch.is_tensor(v) and v.numel() == 1) or (isinstance(v, (int, float)) and not isinstance(v, bool))


BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size


class GradReducer:
    """Averages the gradients of `params` over the processes, bucket by bucket, during the backward.

    Each step: `arm()` right before the backward that completes the gradients (the last micro-batch of an
    accumulation), then `finish()` before the optimizer step. A bucket whose gradients are all in starts its
    reduction from inside the backward once every bucket before it has started (as DDP: collectives are issued
    in the same order on every rank, whatever order the hooks fire in); `finish()` starts the rest (a backward that was not armed, a parameter
    without a gradient this step) and waits for all. `owner` (parameter -> rank, from ZeroRedundancyOptimizer)
    switches to sharded mode: buckets hold one owner's parameters and are reduced to it; every other rank frees
    those gradients. A parameter whose gradient accumulates again after its bucket was sent is a bug in the
    caller's arming: `finish()` raises rather than step on a stale average.
    """

    def __init__(self, params: list[torch.nn.Parameter], dist: Dist, owner: dict | None = None,
                 bucket_bytes: int = BUCKET_BYTES, max_in_flight: int = 2):
        self.dist, self.owner, self.max_in_flight = dist, owner, max_in_flight
        self.params = [p for p in params if p.requires_grad]
        self.bytes_reduced = 0  # payload bytes this rank sent into reductions, over the run
        self.hook_launches = 0  # buckets started from inside a backward (the overlap)
        self.buckets: list[list[torch.nn.Parameter]] = []
        self._hooks = []
        self._armed = False
        if dist.world_size == 1:
            return
        self.bucket_bytes = bucket_bytes
        self.rebuilt = False  # buckets in observed arrival order (after the first backward)
        self._arrival: dict[torch.nn.Parameter, None] = {}  # first arrivals, in order, until the rebuild
        self._build(list(reversed(self.params)))
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    def _build(self, order: list[torch.nn.Parameter]) -> None:
        """Buckets from parameters in expected arrival order: filled in that order per (owner, dtype, device), then
        sorted by when their last gradient arrives, so that the next bucket to complete is the next one to start."""
        position = {p: i for i, p in enumerate(order)}
        buckets: list[list[torch.nn.Parameter]] = []
        open_buckets: dict[tuple, tuple[int, int]] = {}  # (owner, dtype, device) -> (bucket index, bytes)
        for p in order:
            key = (self.owner[p] if self.owner is not None else -1, p.dtype, p.device)
            size = p.numel() * p.element_size()
            index, used = open_buckets.get(key, (-1, 0))
            if index < 0 or (used + size > self.bucket_bytes and used > 0):
                buckets.append([])
                index, used = len(buckets) - 1, 0
            buckets[index].append(p)
            open_buckets[key] = (index, used + size)
        self.buckets = sorted(buckets, key=lambda bucket: position[bucket[-1]])
        self._bucket_of = {p: i for i, bucket in enumerate(self.buckets) for p in bucket}
        self._reset()

    def _rebuild(self) -> None:
        """Buckets in the arrival order the first backward showed, rank 0's (a collective: every rank's buckets
        must be the same); parameters that got no gradient keep their place at the end."""
        import torch.distributed as tdist

        index = {p: i for i, p in enumerate(self.params)}
        seen = [index[p] for p in self._arrival]
        order = seen + [index[p] for p in reversed(self.params) if p not in self._arrival]
        device = self.dist.device
        shared = torch.tensor(order, dtype=torch.int64, device=device)
        tdist.broadcast(shared, src=0)
        self._build([self.params[i] for i in shared.tolist()])
        self._arrival = {}
        self.rebuilt = True

    @property
    def sharded(self) -> bool:
        return self.owner is not None and self.dist.world_size > 1

    def owns(self, p: torch.nn.Parameter) -> bool:
        return not self.sharded or self.owner[p] == self.dist.rank

    def _reset(self) -> None:
        self._armed = False
        self._fired = [set() for _ in self.buckets]
        self._next = 0  # buckets start strictly in index order, the same on every rank whatever order hooks fire in
        self._sent: list[tuple | None] = [None] * len(self.buckets)
        self._in_flight: list[int] = []
        self._late: list[torch.nn.Parameter] = []

    def arm(self) -> None:
        """The next backward completes these gradients: reduce each bucket as soon as it is full."""
        self._armed = self.dist.world_size > 1

    def _on_grad(self, p: torch.nn.Parameter) -> None:
        if not self.rebuilt:
            self._arrival.setdefault(p)
        if not self._armed:
            return
        index = self._bucket_of[p]
        if index < self._next:  # its bucket is already on its way
            self._late.append(p)
            return
        self._fired[index].add(p)
        while self._next < len(self.buckets) and len(self._fired[self._next]) == len(self.buckets[self._next]):
            self._launch(self._next)
            self.hook_launches += 1

    def _launch(self, index: int) -> None:
        import torch.distributed as tdist

        bucket = self.buckets[index]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
        had = [p.grad is not None for p in bucket]
        if self.sharded:
            work = tdist.reduce(flat, dst=self.owner[bucket[0]], async_op=True)
        else:
            work = tdist.all_reduce(flat, async_op=True)
        self.bytes_reduced += flat.numel() * flat.element_size()
        self._sent[index] = (flat, work, had)
        self._in_flight.append(index)
        self._next = index + 1
        while len(self._in_flight) > self.max_in_flight:  # bounds the extra memory to a few buckets
            self._complete(self._in_flight.pop(0))

    def _complete(self, index: int) -> None:
        flat, work, had = self._sent[index]
        work.wait()
        bucket = self.buckets[index]
        if not self.owns(bucket[0]):
            for p in bucket:
                p.grad = None  # another rank steps this parameter: its gradient is not needed here
            self._sent[index] = (None, None, None)
            return
        flat /= self.dist.world_size
        offset = 0
        for p, has in zip(bucket, had):
            n = p.numel()
            if has:
                p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n
        self._sent[index] = (None, None, None)

    def finish(self) -> None:
        """Start what the backward did not, wait for every bucket; gradients are then averaged (and, sharded,
        present only on their owner)."""
        if self.dist.world_size == 1:
            return
        late = self._late
        for index in range(self._next, len(self.buckets)):
            self._launch(index)
        while self._in_flight:
            self._complete(self._in_flight.pop(0))
        self._reset()
        if not self.rebuilt:  # every rank, whatever it saw: the rebuild is a collective
            self._rebuild()
        if late:
            raise RuntimeError(f"{len(late)} gradient(s) accumulated after their bucket was reduced: arm() must "
                               f"come right before the last backward of the update")

    def stepped(self, params: list[torch.nn.Parameter]) -> None:
        """After the optimizer stepped `params`: sharded, ZeroRedundancyOptimizer broadcast each rank's updated
        parameters, which counts as sent."""
        if self.sharded:
            self.bytes_reduced += sum(p.numel() * p.element_size() for p in params if self.owns(p))

    def grad_bytes(self) -> int:
        """Bytes of the gradients this rank holds now (measured from the tensors)."""
        return sum(p.grad.numel() * p.grad.element_size() for p in self.params if p.grad is not None)

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def clip_grad_norm(params: list[torch.nn.Parameter], clip: float, reducer, loss: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Global gradient norm, clipped to `clip` (0: not clipped). Sharded (`reducer.sharded`: a GradReducer of
    train.sharding optimizer, or FSDP's shards under full), each rank holds only its own part of the gradients:
    the squared norms (and a non-finite loss, as NaN) are summed over the ranks so every rank sees the same norm
    and makes the same skip decision."""
    max_norm = clip if clip > 0 else float("inf")
    if reducer is None or not reducer.sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    import torch.distributed as tdist

    from .sharding import local

    grads = [local(p.grad) for p in params if p.grad is not None]
    device = params[0].device
    square = torch.zeros((), dtype=torch.float32, device=device)
    for g in grads:
        square += g.detach().float().pow(2).sum()
    if loss is not None:
        square += loss.detach().float().to(device) * 0  # NaN/inf on any rank reaches all
    tdist.all_reduce(square)
    total = square.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return total
