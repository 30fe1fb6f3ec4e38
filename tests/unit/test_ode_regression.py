"""ODE-regression pairs with several processes: each makes its shard, only the main process writes the cache."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from dmdr_cli.dmd import ode_regression
from dmdr_cli.dmd.ode_regression import make_pairs, shard
from dmdr_cli.data.prompts import prompt_index
from dmdr_cli.dmd.randomness import keyed_generator
from dmdr_cli.errors import DmdrError
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

    def raise_together(self, error, message):
        if error is not None:
            raise error


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
        pairs = make_pairs(ctx, Prompts(), 5, 7, cache, dist=dist, identity={"pairs": 5})
        mine = [torch.randn(SHAPE, generator=keyed_generator(7, "ode-pair", i)) for i in expected[rank]]
        torch.testing.assert_close(torch.cat(sampled), torch.stack(mine))
        assert dist.counts == [[3, 2]] * 3 and dist.barriers == 1
        torch.testing.assert_close(pairs["noise"][expected[rank].start:expected[rank].stop], torch.stack(mine))
        # pair i takes the training order's prompt i (a seeded permutation per epoch of the 3 prompts)
        assert pairs["prompt_index"].tolist()[expected[rank].start:expected[rank].stop] == \
            [prompt_index(i, 3, 7) for i in expected[rank]]
        assert cache.is_file() == (rank == 0)
    assert not [p.name for p in tmp_path.rglob("*tmp*")], "no temporary file left behind"


def test_the_pair_cache_is_reused_for_what_made_it_only(tmp_path, monkeypatch):
    """The run folder's cache outlives a run that failed early (the next start reuses it), so it records what it
    was made for: another identity, a damaged file or one that records none is made again there. A cache the
    user named (shared) is refused instead, and left as it is."""
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
    a, b = {"teacher": "a", "pairs": 3}, {"teacher": "b", "pairs": 3}
    first = make_pairs(ctx, Prompts(), 3, 7, cache, identity=a)
    made = len(calls)
    again = make_pairs(ctx, Prompts(), 3, 7, cache, identity=a)
    assert len(calls) == made and torch.equal(again["target"], first["target"])
    with pytest.raises(DmdrError, match=r"is made for other pairs \(teacher 'a' vs 'b'\): point ode_regression.cache"):
        make_pairs(ctx, Prompts(), 3, 7, cache, identity=b, shared=True)
    assert len(calls) == made and ode_regression.cache_mismatch(cache, a) is None  # refused, not overwritten
    make_pairs(ctx, Prompts(), 3, 7, cache, identity=b)  # the run folder's: made again
    assert len(calls) == 2 * made and ode_regression.cache_mismatch(cache, b) is None
    cache.write_bytes(b"not safetensors")  # a damaged cache is made again, not an error
    make_pairs(ctx, Prompts(), 3, 7, cache, identity=b)
    assert len(calls) == 3 * made
    save_file({"noise": torch.zeros(1)}, str(cache))  # not made by dmdr: records no identity
    with pytest.raises(DmdrError, match="records no dmdr pair identity"):
        make_pairs(ctx, Prompts(), 3, 7, cache, identity=b, shared=True)
    make_pairs(ctx, Prompts(), 3, 7, cache, identity=b)
    assert len(calls) == 4 * made


def test_the_pair_identity_names_what_the_pairs_depend_on():
    """The teacher as loaded (every model key), the training prompts' texts in order (not the file's name), the pair
    count and seed, the teacher's sampler and guidance."""
    from dmdr_cli.dmd.ode_regression import pair_identity

    cfg = validate({"model": {"family": "sd", "pretrained": "t", "dtype": "bf16"}, "ode_regression": {"pairs": 4}})
    base = pair_identity(cfg, ["a", "b"])
    assert base["teacher"] == "t" and base["dtype"] == "bf16" and base["n_prompts"] == 2 and base["pairs"] == 4
    assert pair_identity(cfg, ["a", "b"]) == base != pair_identity(cfg, ["b", "a"])
    for change in ({"model": {"family": "sd", "pretrained": "t", "dtype": "fp16"}}, {"guidance": {"scale": 2.0}},
                   {"ode_regression": {"pairs": 4, "teacher_steps": 9}}, {"ode_regression": {"pairs": 4, "seed": 5}}):
        other = validate({"model": {"family": "sd", "pretrained": "t", "dtype": "bf16"}, "ode_regression": {"pairs": 4},
                          **change})
        assert pair_identity(other, ["a", "b"]) != base, change
    assert json.loads(json.dumps(base)) == base  # what the file records reads back equal
