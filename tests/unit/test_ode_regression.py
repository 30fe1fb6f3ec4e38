"""ODE-regression pairs with several processes: each makes its shard, only the main process writes the cache."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from dmdr_cli.dmd import ode_regression
from dmdr_cli.dmd.ode_regression import make_pairs, shard
from dmdr_cli.dmd.randomness import keyed_generator
from dmdr_cli.recipe import validate

SHAPE = (2, 4, 4)


@pytest.mark.parametrize("n,world_size", [(8, 2), (5, 2), (7, 3), (2, 4), (1, 1)])
def test_shards_partition_the_pairs_in_rank_order_with_sizes_within_one(n, world_size):
    shards = [shard(n, r, world_size) for r in range(world_size)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


class Prompts:
    batch_size = 3

    def __getitem__(self, rows):
        return self

    def to(self, device):
        return self


class FakeDist:
    """Rank `rank` of `world_size`; the gather fills the other ranks' rows with -1 and records the counts."""

    def __init__(self, rank, world_size):
        self.rank, self.world_size, self.counts, self.barriers = rank, world_size, [], 0

    def any(self, flag):
        return bool(flag)

    def gather_rows(self, tensor, counts):
        self.counts.append(counts)
        parts = [tensor if r == self.rank else torch.full((n, *tensor.shape[1:]), -1, dtype=tensor.dtype)
                 for r, n in enumerate(counts)]
        return torch.cat(parts)

    def barrier(self):
        self.barriers += 1


def test_each_process_makes_only_its_shard_and_only_the_main_process_writes(tmp_path, monkeypatch):
    cfg = validate({"model": {"family": "sd", "pretrained": "unused"}, "train": {"steps": 2, "batch_size": 2}})
    sampled = []

    def teacher_sample(family, net, z, cond, steps, guidance):
        sampled.append(z.clone())
        return 0.5 * z

    monkeypatch.setattr(ode_regression, "teacher_sample", teacher_sample)
    ctx = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), amp=contextlib.nullcontext, uncond=None,
                          family=SimpleNamespace(latent_shape=lambda resolution: SHAPE),
                          nets=SimpleNamespace(as_real=lambda scale: None))
    expected = {0: range(0, 3), 1: range(3, 5)}  # 5 pairs over 2 processes
    for rank in (1, 0):
        cache = tmp_path / f"rank{rank}" / "ode_pairs.safetensors"
        sampled.clear()
        dist = FakeDist(rank, 2)
        pairs = make_pairs(ctx, Prompts(), 5, 7, cache, dist=dist)
        mine = [torch.randn(SHAPE, generator=keyed_generator(7, "ode-pair", i)) for i in expected[rank]]
        torch.testing.assert_close(torch.cat(sampled), torch.stack(mine))
        assert dist.counts == [[3, 2]] * 3 and dist.barriers == 1
        torch.testing.assert_close(pairs["noise"][expected[rank].start:expected[rank].stop], torch.stack(mine))
        assert pairs["prompt_index"].tolist()[expected[rank].start:expected[rank].stop] == [i % 3 for i in expected[rank]]
        assert cache.is_file() == (rank == 0)
    assert not [p.name for p in tmp_path.rglob("*tmp*")], "no temporary file left behind"


def test_the_pair_cache_is_reused_for_its_key_only(tmp_path, monkeypatch):
    """The cache outlives a run that failed early (the next start reuses it), so it says what it was made for:
    another teacher, prompt list or sampler setting (another key) makes the pairs again."""
    cfg = validate({"model": {"family": "sd", "pretrained": "unused"}, "train": {"steps": 2, "batch_size": 2}})
    calls = []

    def teacher_sample(family, net, z, cond, steps, guidance):
        calls.append(len(z))
        return 0.5 * z

    monkeypatch.setattr(ode_regression, "teacher_sample", teacher_sample)
    ctx = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), amp=contextlib.nullcontext, uncond=None,
                          family=SimpleNamespace(latent_shape=lambda resolution: SHAPE),
                          nets=SimpleNamespace(as_real=lambda scale: None))
    cache = tmp_path / "ode_pairs.safetensors"
    first = make_pairs(ctx, Prompts(), 3, 7, cache, key="a")
    made = len(calls)
    again = make_pairs(ctx, Prompts(), 3, 7, cache, key="a")
    assert len(calls) == made and torch.equal(again["target"], first["target"])
    make_pairs(ctx, Prompts(), 3, 7, cache, key="b")
    assert len(calls) == 2 * made
    cache.write_bytes(b"not safetensors")  # a damaged cache is made again, not an error
    make_pairs(ctx, Prompts(), 3, 7, cache, key="b")
    assert len(calls) == 3 * made
