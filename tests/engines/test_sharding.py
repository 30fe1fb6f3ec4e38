"""train.sharding over CPU processes (torchrun, gloo): ZeroRedundancyOptimizer-sharded and replicated runs at
the same global batch end at the same weights as one process, and checkpoints move between world sizes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from dmdr_cli.runtime.checkpoint import load_checkpoint

from train_helpers import checkpoint, log_rows, ok, recipe, weights

# fp32. Sharded vs replicated (2 processes each): the same sums in the same order, the norm summed in another
# order (clipping inactive here); measured max |difference| after 2 generator steps at lr 1e-3: 0.0.
# 2 processes vs 1: all-reduce of per-rank means vs one mean; measured 6.9e-6 (generator), 9.2e-7 (fake);
# resumed across world sizes vs the straight run: 7.2e-6.
SHARD_ATOL = 1e-6
WEIGHT_ATOL = 1e-4


def torchrun(*args: str, port: int, env: dict | None = None, expect: int = 0, timeout: float = 300) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "dmdr_cli", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert (proc.returncode == 0) == (expect == 0), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_sharded_matches_replicated_and_one_process_and_resumes_across_world_sizes(tiny_sd, tmp_path):
    from test_ddp import free_port

    steps = {"sample_every": 0, "checkpoint_every": 1}
    one = tmp_path / "one"  # the straight run: one process at the global batch, 3 generator steps
    ok("distill", recipe(tmp_path, "sd", tiny_sd, one, train={"steps": 3, "batch_size": 2, **steps}))
    runs = {"none": tmp_path / "two-none", "optimizer": tmp_path / "two-optimizer"}
    torchrun("distill", str(recipe(tmp_path, "sd", tiny_sd, runs["none"],
                                   train={"steps": 2, "batch_size": 1, "sharding": "none", **steps})), port=free_port())
    # sharded, 3 steps, but SIGTERM reaches rank 1 only, inside generator step 2: both ranks finish the step,
    # the state of both shards is gathered into the checkpoint and the run stops with 143
    out = torchrun("distill", str(recipe(tmp_path, "sd", tiny_sd, runs["optimizer"],
                                         train={"steps": 3, "batch_size": 1, "sharding": "optimizer", **steps})),
                   port=free_port(), expect=143,
                   env={"DMDR_FAULT": "after-optimizer-step", "DMDR_FAULT_AT": "3", "DMDR_FAULT_SIGNAL": "TERM",
                        "DMDR_FAULT_RANK": "1"})
    assert "stopped by SIGTERM at generator step 2" in out
    assert sorted(p.name for p in (runs["optimizer"] / "checkpoints").glob("step-*")) == ["step-000001", "step-000002"]
    # per-process AdamW state, measured from the tensors and averaged over the processes in the log: half
    replicated, sharded = (log_rows(runs[m])[-1]["optimizer_state_mib"] for m in ("none", "optimizer"))
    assert abs(sharded / replicated - 0.5) < 0.1
    for name in ("generator", "fake"):
        w1, wn, wo = weights(one, 2, name), weights(runs["none"], 2, name), weights(runs["optimizer"], 2, name)
        assert max_diff(wo, wn) < SHARD_ATOL, name
        assert max_diff(wn, w1) < WEIGHT_ATOL and max_diff(wo, w1) < WEIGHT_ATOL, name
        assert max_diff(w1, weights(one, 1, name)) > 10 * WEIGHT_ATOL, "weights moved at all"
        # each rank wrote its own shard of the AdamW state (no gathering): disjoint halves that together are
        # the whole state, as the straight run's one file holds it
        full = load_file(str(checkpoint(one, 2) / f"optim_{name}.safetensors"))
        parts = [load_file(str(checkpoint(runs["optimizer"], 2) / f"optim_{name}.rank{r}.safetensors")) for r in (0, 1)]
        assert not (checkpoint(runs["optimizer"], 2) / f"optim_{name}.safetensors").exists()
        assert parts[0] and parts[1] and not parts[0].keys() & parts[1].keys()
        gathered = load_checkpoint(checkpoint(runs["optimizer"], 2))["optim"][name][0]
        assert gathered.keys() == full.keys() == parts[0].keys() | parts[1].keys() and len(full) > 0
        assert max_diff(full, gathered) < WEIGHT_ATOL

    # 2 processes (sharded) -> 1 process: the resumed run ends where the straight run ends
    ok("distill", recipe(tmp_path, "sd", tiny_sd, runs["optimizer"], train={"steps": 3, "batch_size": 2, **steps}),
       "--resume", "latest")
    # 1 process -> 2 processes (sharded): resume the straight run's step 2 in a copy of its folder
    back = tmp_path / "back"
    shutil.copytree(one, back)
    shutil.rmtree(checkpoint(back, 3))
    (back / "checkpoints" / "latest").write_text("step-000002\n")
    path = recipe(tmp_path, "sd", tiny_sd, back, train={"steps": 3, "batch_size": 1, "sharding": "optimizer", **steps})
    torchrun("distill", str(path), "--resume", "latest", port=free_port())
    for name in ("generator", "fake"):
        straight = weights(one, 3, name)
        assert max_diff(weights(runs["optimizer"], 3, name), straight) < WEIGHT_ATOL, name
        assert max_diff(weights(back, 3, name), straight) < WEIGHT_ATOL, name
        assert max_diff(weights(back, 3, name), weights(one, 2, name)) > 10 * WEIGHT_ATOL


@pytest.mark.slow
def test_full_sharding_matches_one_process_and_resumes_at_another_world_size(tiny_sd, tmp_path):
    """train.sharding full (FSDP2, ZeRO-3) on the shared-LoRA layout: the UNet's frozen weights and both adapters
    (the generator's and the guidance's, each with its own optimizer, switched on per pass) sharded over 2
    processes, with gradient checkpointing, a generator EMA and sample grids (every process samples), end where
    one process at the same global batch ends; the checkpoint is gathered into the same files one process
    writes; one process's checkpoint resumes sharded on 2 processes and ends where the straight run ends."""
    from test_ddp import free_port

    sections = dict(student={"finetune": "lora"}, ema={"decay": 0.9})
    steps = {"sample_every": 2, "checkpoint_every": 1, "gradient_checkpointing": True}
    one, full, back = tmp_path / "one", tmp_path / "full", tmp_path / "back"
    ok("distill", recipe(tmp_path, "sd", tiny_sd, one, **sections, train={"steps": 3, "batch_size": 2, **steps}))
    sharded = {"batch_size": 1, "sharding": "full", **steps}
    full_recipe = recipe(tmp_path, "sd", tiny_sd, full, **sections, train={"steps": 2, **sharded})
    torchrun("distill", str(full_recipe), port=free_port())
    # every process held half of the networks' weights and of the AdamW state (averaged over processes in the log)
    for key in ("weights_mib", "optimizer_state_mib"):
        assert abs(log_rows(full)[-1][key] / log_rows(one)[-1][key] - 0.5) < 0.02, key
    # and the memory planner's sharded model-state terms at 2 processes are those tensors (CPU-rules trace)
    import yaml

    from dmdr_cli.engines.memory import estimate
    from dmdr_cli.engines.memory_trace import trace_isolated
    from dmdr_cli.recipe import validate

    cfg = validate(yaml.safe_load(full_recipe.read_text()))
    trace = trace_isolated(cfg, policy="cpu")
    plan, held = estimate(cfg, trace, 2, "full"), log_rows(full)[-1]
    planned_weights = (trace.sharded_frozen + trace.trainable_bytes) / 2 / 2**20
    assert abs(planned_weights / held["weights_mib"] - 1) < 0.01, (planned_weights, held["weights_mib"])
    assert abs(plan.terms["optimizer state"] / 2**20 / held["optimizer_state_mib"] - 1) < 0.01
    for name in ("generator", "generator_ema", "fake"):
        w1, wf = weights(one, 2, name), weights(full, 2, name)
        assert any("lora" in key for key in w1), sorted(w1)[:3]
        assert max_diff(wf, w1) < WEIGHT_ATOL, name
        assert max_diff(w1, weights(one, 1, name)) > (WEIGHT_ATOL if name == "generator_ema" else 10 * WEIGHT_ATOL)
    for name in ("generator", "fake"):  # the AdamW state gathered whole: the file one process writes
        state = [load_file(str(checkpoint(run, 2) / f"optim_{name}.safetensors")) for run in (one, full)]
        assert max_diff(*state) < WEIGHT_ATOL and len(state[0]) > 0, name
    assert state_files(full, 2) == state_files(one, 2)
    grids = [np.asarray(Image.open(run / "samples" / "step-000002.png"), dtype=int) for run in (one, full)]
    assert np.abs(grids[0] - grids[1]).max() <= 1  # sampled on both processes, written by one

    # 1 process -> 2 processes sharded: the straight run's step 2 resumed in a copy of its folder
    shutil.copytree(one, back)
    shutil.rmtree(checkpoint(back, 3))
    (back / "checkpoints" / "latest").write_text("step-000002\n")
    path = recipe(tmp_path, "sd", tiny_sd, back, **sections, train={"steps": 3, **sharded})
    torchrun("distill", str(path), "--resume", "latest", port=free_port())
    for name in ("generator", "generator_ema", "fake"):
        straight = weights(one, 3, name)
        assert max_diff(weights(back, 3, name), straight) < WEIGHT_ATOL, name
        assert max_diff(weights(back, 3, name), weights(one, 2, name)) > WEIGHT_ATOL, name


def state_files(run, step: int) -> list[str]:
    return sorted(p.name for p in checkpoint(run, step).iterdir() if p.name != "state.json")


def test_sharding_key_is_validated(tiny_sd, tmp_path):
    from train_helpers import invoke

    path = recipe(tmp_path, "sd", tiny_sd, tmp_path / "run")
    result = invoke("distill", path, "train.sharding=zero3", "--dry-run")
    assert result.exit_code == 2 and "sharding" in result.output
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_missing_one_rank_shard_is_damaged(tmp_path):
    import json

    import torch
    from safetensors.torch import save_file

    from dmdr_cli.errors import DmdrError

    (tmp_path / "state.json").write_text(json.dumps({"step": 2}))
    (tmp_path / "optim_generator.json").write_text(json.dumps({"param_groups": [], "scalars": {}, "shards": 2}))
    save_file({"0/exp_avg": torch.zeros(2)}, str(tmp_path / "optim_generator.rank0.safetensors"))
    (tmp_path / "optim_generator.rank0.json").write_text(json.dumps({"scalars": {}}))
    with pytest.raises(DmdrError, match="damaged"):
        load_checkpoint(tmp_path)
    save_file({"1/exp_avg": torch.ones(2)}, str(tmp_path / "optim_generator.rank1.safetensors"))
    (tmp_path / "optim_generator.rank1.json").write_text(json.dumps({"scalars": {"1/step": 3}}))
    tensors, meta = load_checkpoint(tmp_path)["optim"]["generator"]
    assert sorted(tensors) == ["0/exp_avg", "1/exp_avg"] and meta["scalars"] == {"1/step": 3}


@pytest.mark.slow
def test_sharded_lora_generator_with_accumulation_matches_replicated_and_one_process(tiny_sd3, tmp_path):
    """SD3 trains a LoRA generator (shared-LoRA layout): sharding only the adapter weights' AdamW state, with
    two micro-batches per update, changes nothing against the replicated run and one process."""
    from test_ddp import free_port

    steps = {"sample_every": 0, "checkpoint_every": 2, "steps": 2, "gradient_accumulation": 2}
    one = tmp_path / "one"
    ok("distill", recipe(tmp_path, "sd3", tiny_sd3, one, train={"batch_size": 2, **steps}))
    runs = {mode: tmp_path / f"two-{mode}" for mode in ("none", "optimizer")}
    for mode, run in runs.items():
        torchrun("distill", str(recipe(tmp_path, "sd3", tiny_sd3, run,
                                       train={"batch_size": 1, "sharding": mode, **steps})), port=free_port())
    replicated, sharded = (log_rows(runs[m])[-1]["optimizer_state_mib"] for m in ("none", "optimizer"))
    assert abs(sharded / replicated - 0.5) < 0.1
    for name in ("generator", "fake"):
        w1, wn, wo = (weights(run, 2, name) for run in (one, runs["none"], runs["optimizer"]))
        assert any("lora" in key for key in w1) or name == "fake", sorted(w1)[:3]
        assert max_diff(wo, wn) < SHARD_ATOL, name
        assert max_diff(wn, w1) < WEIGHT_ATOL and max_diff(wo, w1) < WEIGHT_ATOL, name


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group in this process (ZeroRedundancyOptimizer needs one; no collective runs)."""
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    tdist.destroy_process_group()


@pytest.mark.parametrize("saved_fused", [True, False])
@pytest.mark.parametrize("processes", [2, 1])
def test_resume_places_adam_step_where_fused_adamw_needs_it(process_group, saved_fused, processes):
    """Defect: ZeroRedundancyOptimizer.load_state_dict forces Adam's 0-dim `step` onto the CPU, and fused AdamW
    (make_optimizer's choice on CUDA) then fails on its first step after every sharded --resume. A checkpoint
    written without fusing (a CPU run) must neither leave `step` on the CPU (torch places it by the checkpoint's
    flag) nor switch the resumed CUDA optimizer off fused.

    No GPU here: the parameters are fake CUDA tensors (FakeTensorMode), which is enough to see where the restore
    path puts each state tensor against what fused AdamW requires (torch's note "special device hosting for
    step": a float32 `step` on the parameter's device). What this cannot run is the fused CUDA kernel itself;
    bench/gpu_check.sh's sharded resume line does."""
    from types import SimpleNamespace

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dmdr_cli.runtime.checkpoint import optimizer_from_files, optimizer_to_files
    from dmdr_cli.runtime.precision import is_sharded, make_optimizer

    cfg = SimpleNamespace(betas=(0.9, 0.999), weight_decay=0.01, optimizer="adamw", sharding="optimizer")
    saved = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(3)]
    writer = torch.optim.AdamW(saved, lr=1e-3, fused=saved_fused)  # fused AdamW runs on the CPU too
    for p in saved:
        p.grad = torch.ones_like(p)
    writer.step()
    tensors, meta = optimizer_to_files(writer)  # a checkpoint's files, as resume reads them (CPU tensors)
    with FakeTensorMode(allow_non_fake_inputs=True):
        params = [torch.nn.Parameter(torch.empty(4, 3, device="cuda")) for _ in range(3)]
        opt = make_optimizer(params, 1e-3, cfg, torch.device("cuda"), world_size=processes)
        inner = opt.optim if is_sharded(opt) else opt
        assert is_sharded(opt) == (processes > 1) and inner.param_groups[0]["fused"]
        optimizer_from_files(opt, dict(tensors), json.loads(json.dumps(meta)))
        assert inner.param_groups[0]["fused"] and opt.param_groups[0]["fused"]
        for p in params:
            state = inner.state[p]
            assert state.keys() == {"step", "exp_avg", "exp_avg_sq"}
            assert (state["step"].device, state["step"].dtype) == (p.device, torch.float32)
            for name in ("exp_avg", "exp_avg_sq"):
                assert (state[name].device, state[name].dtype) == (p.device, p.dtype), name


def test_resume_refuses_another_split_of_the_same_global_batch(tmp_path):
    """Defect: draws are keyed by micro-batch, so 1 process x batch 1 x accumulation 2 resumed as 2 processes x
    batch 1 x accumulation 1 (the same global batch, 2) draws other noise for half the samples; it passed as an
    exact resume. 2 x 1 x 1 <-> 1 x 2 x 1 (the same micro-batches) still does (the equivalence tests above)."""
    from dmdr_cli.errors import DmdrError
    from dmdr_cli.recipe import validate
    from dmdr_cli.runtime.compat import CheckpointInfo, check_against_recipe

    def info(batch, accumulation, processes):
        saved = validate({"model": {"family": "sd", "pretrained": "x"}, "train": {"batch_size": batch,
                                                                                 "gradient_accumulation": accumulation}})
        return CheckpointInfo(tmp_path, {"step": 1, "processes": processes}, saved.model_dump(mode="json"), {})

    def run(batch, accumulation):
        return validate({"model": {"family": "sd", "pretrained": "x"},
                         "train": {"batch_size": batch, "gradient_accumulation": accumulation}})

    for name in ("generator.safetensors", "fake.safetensors", "optim_generator.json", "optim_fake.json"):
        (tmp_path / name).write_text("")  # a whole checkpoint, as far as the file list goes
    assert check_against_recipe(info(1, 1, 2), run(2, 1), mode="resume", processes=1) == []
    assert check_against_recipe(info(2, 1, 1), run(1, 1), mode="resume", processes=2) == []
    with pytest.raises(DmdrError, match=r"train.gradient_accumulation 2 -> 1 at the same global batch 2"):
        check_against_recipe(info(1, 2, 1), run(1, 1), mode="resume", processes=2)
    with pytest.raises(DmdrError, match=r"train.gradient_accumulation 1 -> 2 at the same global batch 2"):
        check_against_recipe(info(2, 1, 1), run(1, 2), mode="resume", processes=1)
    changes = check_against_recipe(info(1, 2, 1), run(1, 1), mode="resume", processes=2, allow_change=True)
    assert changes == ["train.gradient_accumulation 2 -> 1 at the same global batch 2 (noise is drawn per micro-batch)"]


@pytest.mark.slow
def test_a_write_failing_on_one_rank_ends_every_rank_and_the_ode_cache_stays(tiny_sd, tmp_path):
    """Defect: rank 1's optimizer shard cannot be written (disk full); rank 0 used to wait for it in a barrier
    until a watchdog ended it (gloo's: 30 minutes). Now every rank ends at once with one line. The run failed
    before its first checkpoint, so its folder is discarded, except the ODE pairs: a teacher-sampling cache
    that the next start reuses (tests/unit/test_ode_regression.py: for the same key only)."""
    from test_ddp import free_port

    run = tmp_path / "run"
    path = recipe(tmp_path, "sd", tiny_sd, run, coldstart={"steps": 0},
                  ode_regression={"steps": 1, "pairs": 2, "teacher_steps": 2},
                  train={"steps": 1, "batch_size": 1, "sharding": "optimizer", "sample_every": 0})
    out = torchrun("distill", str(path), port=free_port(), expect=2, timeout=150,
                   env={"DMDR_FAULT": "checkpoint-shard-fake", "DMDR_FAULT_RANK": "1", "DMDR_FAULT_ERROR": "ENOSPC"})
    final = run / "checkpoints" / "step-000001"
    assert f"error: could not write checkpoint shard in {run / 'checkpoints' / '.partial-step-000001-shared'} (No " \
           f"space left on device)" in out, out[-2000:]
    assert f"error: could not write checkpoint {final}: another process failed (its error is above)" in out
    assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == ["ode_pairs.safetensors"]
    assert not final.exists() and not (run / "recipe.yaml").exists()


def test_full_sharding_gathers_blocks_in_bf16_and_reduces_fp32_gradients(tiny_sd, tmp_path):
    """The FSDP2 layout as it runs on GPUs (the engine on a CPU has no autocast, so the 2-process runs above gather
    in fp32): 2 gloo processes, the tiny UNet's LoRA generator, each process on half of one batch, against the same
    halves unsharded with gradients averaged by an all-reduce (tests/engines/fsdp_worker.py). Measured on this
    check: fp32 3e-7; bf16 autocast with fp32 blocks 0.0065; with bf16 blocks 0.026 (weights autocast keeps in fp32,
    the normalisations', enter their ops rounded to bf16); bf16's own batch-shape effect 0.0026."""
    from test_ddp import free_port

    worker = Path(__file__).with_name("fsdp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(worker), str(tiny_sd), str(tmp_path)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in range(2):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for setting in res.values():
            assert setting["sharded"] == setting["params"] > 0 and setting["grad_dtypes"] == ["torch.float32"]
        assert res["fp32"]["max_relative_error"] < 1e-5  # sharding alone changes nothing
        assert res["fp32"]["gathered_dtypes"] == ["torch.float32"]
        bf16 = res["autocast, bf16 blocks"]
        assert bf16["gathered_dtypes"] == ["torch.bfloat16"]  # the mixed-precision policy is in effect
        assert bf16["max_relative_error"] < 0.05 and res["autocast, fp32 blocks"]["max_relative_error"] < 0.02
