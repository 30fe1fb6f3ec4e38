"""Randomness keyed by what it is for, not by how much was drawn before.

Every random draw of a run is a pure function of (seed, generator step, inner step, purpose, global
sample index). Consequences: a resumed run draws exactly what the uninterrupted one would (no RNG state
to restore), and N processes at global batch B draw the same noise as one process at batch B, so their
losses agree (the DDP test relies on it).
"""

from __future__ import annotations

import hashlib

import torch

PURPOSES = ("latent", "rollout", "renoise", "fake_renoise", "student_step", "cfg", "renoise_t", "fake_t", "rl")


def key_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def keyed_generator(*parts, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(key_seed(*parts))
    return g


def per_sample_randn(shape_per_sample: tuple[int, ...], sample_ids: list[int], *key, device="cpu") -> torch.Tensor:
    """One standard-normal tensor per global sample id, stacked: [len(sample_ids), *shape_per_sample].

    Drawn on `device` with a generator of that device (no host-to-device copy of large noise on GPU);
    the values are reproducible per device type (CPU and CUDA generators differ)."""
    device = torch.device(device)
    return torch.stack([torch.randn(shape_per_sample, generator=keyed_generator(*key, i, device=device), device=device)
                        for i in sample_ids])


class StepRandomness:
    """The draws of one inner step for this process's slice of the global batch."""

    def __init__(self, seed: int, step: int, inner: int, sample_ids: list[int], device):
        self.seed, self.step, self.inner = seed, step, inner
        self.sample_ids = sample_ids
        self.device = device
        self._calls: dict[str, int] = {}

    def _key(self, purpose: str) -> tuple:
        n = self._calls.get(purpose, 0)
        self._calls[purpose] = n + 1
        return (self.seed, self.step, self.inner, purpose, n)

    def randn(self, per_sample_shape, purpose: str) -> torch.Tensor:
        """Fresh per-sample Gaussian noise (a second call with the same purpose gives new noise)."""
        return per_sample_randn(tuple(per_sample_shape), self.sample_ids, *self._key(purpose), device=self.device)

    def randn_like(self, like: torch.Tensor, purpose: str) -> torch.Tensor:
        return self.randn(like.shape[1:], purpose).to(like.dtype)

    def shared(self, purpose: str) -> torch.Generator:
        """A generator identical on every process (for draws that must agree, e.g. the student step k)."""
        return keyed_generator(*self._key(purpose))

    def per_sample_uniform(self, purpose: str) -> torch.Tensor:
        key = self._key(purpose)
        return torch.stack([torch.rand((), generator=keyed_generator(*key, i)) for i in self.sample_ids])

    def per_sample_generators(self, purpose: str) -> list[torch.Generator]:
        key = self._key(purpose)
        return [keyed_generator(*key, i) for i in self.sample_ids]
