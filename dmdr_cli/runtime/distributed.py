"""Process group facts and gradient averaging, for one process or `accelerate launch` (DDP-style).

Trainable weights are LoRA adapters on a shared frozen model, or full copies; instead of wrapping them
in DDP (which cannot express "only the live adapter of this model"), the gradients of exactly the
parameters being updated are all-reduced before each optimizer step: the same arithmetic as DDP.
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

    def average_gradients(self, grads: list[torch.Tensor]) -> None:
        if self.world_size == 1 or not grads:
            return
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

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
