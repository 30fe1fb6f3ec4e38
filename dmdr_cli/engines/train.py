"""`dmdr coldstart` and `dmdr distill`: the DMDR training loop, top to bottom.

Stage 1 (cold start, generator steps [0, coldstart.steps)): DMD with DynaDG and DynaRS.
Stage 2 (distill, up to train.steps): DMD + the RL branch from rl.start_step.
The generator-step counter k drives every schedule and continues across stages, --init and --resume.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from rich.console import Console

from ..data.conditioning import PromptConditions, encode_all
from ..data.images import open_images
from ..data.prompts import prompt_index, recipe_prompts
from ..errors import DmdrError
from ..recipe import Recipe, to_yaml
from ..runtime import checkpoint as ckpt
from ..runtime.distributed import Dist, clip_grad_norm
from ..runtime.faults import fault_point, inject_nan
from ..runtime.monitor import MetricsLog, StepProgress
from ..runtime.reporting import check_report_to, open_reporters
from ..runtime.precision import (autocast_dtype, frozen_dtype, is_sharded, make_optimizer, optimizer_state_bytes,
                                 setup_backends)
from ..runtime.sharding import check_benches, parallel_for, weight_bytes
from ..runtime import compat
from ..runtime.rundir import RunFolder, is_done, mark_done
from ..dmd.gan import GanTerm
from ..dmd.ema import GeneratorEMA, averaged
from ..dmd.networks import build_networks
from ..dmd.ode_regression import cache_path, make_pairs, pair_identity, pair_seed, regression_loss, term_loss
from ..dmd.randomness import StepRandomness, key_seed, keyed_generator
from ..dmd.step import StepContext, dmd_generator_loss, fake_score_step_loss, generator_sample
from ..dmd.validation import grid_image, sample_grid, validate, write_sample_grid
from ..dmd.init_weights import apply_init
from ..rl.branch import build_rl_branch


class NonFiniteGuard:
    """Skips updates whose loss or gradient is not finite; stops the run after too many in a row."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.skipped = limit, 0, 0

    def check(self, term: str, values: list[torch.Tensor], parts: dict[str, torch.Tensor] | None = None) -> bool:
        """`parts`: the named loss terms summed into the update, so the message can say which one broke."""
        if all(bool(torch.isfinite(v).all()) for v in values):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.limit:
            term = next((name for name, v in (parts or {}).items() if not bool(torch.isfinite(v).all())), term)
            raise DmdrError(f"{self.in_a_row} non-finite updates in a row in the {term} term; the last good "
                            f"checkpoint is kept: lower the learning rates or check the reward, then --resume latest")
        return False


def apply_update(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, clip: float, reducer,
                 guard: NonFiniteGuard, term: str, loss: torch.Tensor,
                 parts: dict[str, torch.Tensor] | None = None) -> tuple[bool, float]:
    """Finish the gradient reduction, clip, and step, unless anything is non-finite (then the update is skipped)."""
    reducer.finish()
    norm = clip_grad_norm(params, clip, reducer, loss)
    ok = guard.check(term, [loss.detach(), norm], parts)
    if ok:
        opt.step()
        reducer.stepped(params)
    opt.zero_grad(set_to_none=True)
    return ok, float(norm)


def run_training(cfg: Recipe, *, stage: str, init: str | None, resume: str | None, console: Console,
                 allow_recipe_change: bool = False) -> Path:
    dist = Dist.create()
    device = dist.device
    setup_backends(device)
    total_steps = cfg.coldstart.steps if stage == "coldstart" else cfg.train.steps
    if total_steps == 0:
        raise DmdrError("coldstart.steps is 0: nothing to do for `dmdr coldstart` (set coldstart.steps > 0)")

    # ---- everything a user can get wrong is checked before any weight loads -----------------------
    prompts = recipe_prompts(cfg.data)
    check_report_to(cfg.train.report_to)
    if stage == "distill":
        from .export import check_push

        check_push(cfg)  # a token missing at the end of a long run would be found too late
    val_prompts = recipe_prompts(cfg.data, validation=True) if cfg.data.validation_prompts else prompts
    val_prompts = val_prompts[: cfg.data.num_validation]
    real_images = open_images(cfg.data.images, cfg.model.resolution, cfg.train.seed) if cfg.gan.weight > 0 else None
    run = RunFolder(Path(cfg.output.dir), resume=resume is not None)
    resume_from = ckpt.resolve_checkpoint(resume, run.path) if resume else None
    # the checkpoint to load, against the recipe, from its own recipe.yaml, state.json and tensor headers
    loaded = None
    recipe_changes: list[str] = []
    if resume_from is not None:
        loaded = compat.inspect(resume_from)
        recipe_changes = compat.check_against_recipe(loaded, cfg, mode="resume", allow_change=allow_recipe_change,
                                                       processes=dist.world_size)
    elif init and Path(init).is_dir():
        loaded = compat.inspect(ckpt.resolve_checkpoint(init, Path(init)))
        compat.check_against_recipe(loaded, cfg, mode="init")

    from ..families.loading import check_resolution

    check_resolution(cfg.model)  # a size the VAE (and an MMDiT's patches) cannot divide fails deep in a forward
    from ..evaluate import plugins

    benches = plugins.run_benches(cfg, stage)  # their validation metrics and end-of-run reports
    check_benches(cfg.train.sharding, dist, benches)

    # ---- models ----------------------------------------------------------------------------------
    from ..families import FAMILIES, guidance_values_of, load_family

    # train.sharding: the networks as they are (none, optimizer) or FSDP-sharded in place (full: built on the CPU,
    # then sharded onto the device), and how gradients are reduced and checkpoints gathered to match
    parallel = parallel_for(cfg.train.sharding, dist, autocast_dtype(cfg.train.mixed_precision, device))
    rl_branch = build_rl_branch(cfg, device, stage)  # rewards load (and fail) before the teacher
    family = load_family(cfg.model, device=device, dtype=frozen_dtype(cfg.model.dtype, device),
                         uncond_mode=cfg.guidance.uncond, guidance_values=guidance_values_of(cfg),
                         denoiser_device=parallel.build_device)
    if dist.is_main:
        console.print(prompts.summary())
    # validation and bench prompts are few and encoded once; the training set's as data.cache_embeddings says
    fixed_prompts = sorted(set(val_prompts) | set(plugins.bench_prompts(benches))
                           | set(real_images.captions() if real_images is not None else []))
    with console.status("encoding prompts") if dist.is_main else contextlib.nullcontext():
        fixed_conds = encode_all(family, fixed_prompts, device)
        conds = PromptConditions(family, prompts, cached=cfg.data.cache_embeddings)
        uncond = family.unconditional()
    if cfg.data.cache_embeddings:
        family.release_text_encoders()
    index_of = {p: i for i, p in enumerate(fixed_prompts)}
    teacher = family.denoiser
    if cfg.train.gradient_checkpointing:
        teacher.enable_gradient_checkpointing()
    with torch.random.fork_rng(devices=[]):  # LoRA A matrices are random: seed them from the recipe alone
        torch.manual_seed(key_seed(cfg.train.seed, "lora-init"))
        nets = build_networks(teacher, cfg, FAMILIES[cfg.model.family], device=device)
    if cfg.train.gradient_checkpointing and nets.generator is not teacher:
        nets.generator.enable_gradient_checkpointing()
    if cfg.train.compile:  # in place; adapter switches and new shapes recompile, so worth it for long runs only
        for net in {id(teacher): teacher, id(nets.generator): nets.generator}.values():
            net.compile()
    parallel.wrap(nets)
    lr_g, lr_f = cfg.learning_rates(0)  # set again at every step (the cold start may have its own)
    opt_g = make_optimizer(nets.generator_params, lr_g, cfg.train, device, dist.world_size)
    opt_f = make_optimizer(nets.fake_params, lr_f, cfg.train, device, dist.world_size)
    reducer_g, reducer_f = parallel.reducer(nets.generator_params, opt_g), parallel.reducer(nets.fake_params, opt_f)
    if rl_branch is not None:
        rl_branch.attach(family, nets)
    ema = GeneratorEMA(nets.generator_params, cfg.ema.decay, cfg.ema.start_step) if cfg.ema.decay > 0 else None

    if loaded is not None:  # names and shapes against the networks just built, before a tensor is read
        layout = nets.trainable_layout()
        if ema is not None and "generator_ema" in loaded.headers:
            layout["generator_ema"] = layout["generator"]
        compat.check_tensors(loaded, layout, "--resume" if resume_from is not None else "--init")
    start = 0
    if resume_from is not None:
        start = restore(resume_from, nets, {"generator": opt_g, "fake": opt_f}, rl_branch, ema)
        console.print(f"resuming from {resume_from} at generator step {start}")
    elif init:
        start = apply_init(init, nets)
        console.print(f"initialised from {init} (generator step counter at {start})")
    finishing = start == total_steps and resume_from is not None  # a retried job whose last step is done
    if finishing and dist.is_main:  # the pruning its last checkpoint write may not have reached
        ckpt.prune(run.path / "checkpoints", cfg.train.keep_checkpoints)
    if finishing and is_done(run.path, start):  # and everything after it written: done, not wrong
        console.print(f"the run is complete at generator step {start}: nothing to do")
        return run.path
    if finishing:  # killed after its last checkpoint: what it writes afterwards is written now
        console.print(f"the run's last step ({start}) is done but not what it writes afterwards: writing it now")
    elif start >= total_steps:
        raise DmdrError(f"the run is already at generator step {start} >= {total_steps}: raise train.steps "
                        f"(or coldstart.steps for `dmdr coldstart`) to continue")

    sampler = cfg.student.sampler if cfg.student.sampler != "auto" else family.default_sampler
    ctx = StepContext(family=family, nets=nets, cfg=cfg, device=device,
                      amp_dtype=autocast_dtype(cfg.train.mixed_precision, device),
                      student_times=family.times_for(cfg.student),
                      sampler=sampler, uncond=uncond.to(device))
    gan = None
    if real_images is not None:  # the GAN term (gan section): its head, after the networks it reads
        gan = GanTerm(ctx, real_images, lambda texts: fixed_conds[[index_of[t] for t in texts]], dist)
        if loaded is not None:
            gan.restore(loaded.path, "--resume" if resume_from is not None else "--init", resume_from is not None)

    # ---- the run folder is created only now: bad input above leaves nothing behind ----------------
    fault_point("before-run-open")
    run.open(recipe_yaml=to_yaml(cfg), is_main=dist.is_main)
    # a write that fails from here on (disk full) is one line; a new run that fails before its first checkpoint
    # leaves no folder behind
    with run.failure_guard(fresh=start == 0 and resume_from is None, is_main=dist.is_main):
        reporters = open_reporters(cfg.train.report_to, run.path, config=cfg.model_dump(mode="json"),
                                   project=cfg.train.wandb_project, resume=resume_from is not None) if dist.is_main else []
        log = MetricsLog(run.path / "log.jsonl", enabled=dist.is_main, reporters=reporters)
        log.truncate_after(start)
        if recipe_changes:  # --allow-recipe-change: the run is no longer the uninterrupted one, and says so
            log.write(start, {"event": "recipe_change", "changes": recipe_changes})
            console.print(f"[yellow]resuming with a changed recipe (--allow-recipe-change): {'; '.join(recipe_changes)}[/]")
        guard_g = NonFiniteGuard(cfg.train.max_nonfinite_steps)
        guard_f = NonFiniteGuard(cfg.train.max_nonfinite_steps)
        guard_gan = NonFiniteGuard(cfg.train.max_nonfinite_steps)
        K = cfg.dmd.fake_updates_per_generator_update
        A = cfg.train.gradient_accumulation
        B = cfg.train.batch_size
        global_batch = B * dist.world_size

        def batch(k: int, inner: int, micro: int):
            """Sample ids, prompts and conditioning of this process's slice of one micro-batch."""
            base = ((k * K + inner) * A + micro) * global_batch + dist.rank * B
            ids = list(range(base, base + B))
            rows = [prompt_index(i, len(prompts), cfg.train.seed) for i in ids]
            return ids, [prompts[r] for r in rows], conds[rows].to(device)

        def save(k: int):
            """Checkpoint k: every rank writes its optimizer shards (sharded), then the main rank the rest. A write
            that fails on one rank ends every rank with one line, none waits in a collective for it."""
            optimizers = {"generator": opt_g, "fake": opt_f, **({"gan_head": gan.opt} if gan is not None else {})}
            sharded = {name: opt for name, opt in optimizers.items() if is_sharded(opt)}
            elsewhere = (f"could not write checkpoint {run.path / 'checkpoints' / ckpt.step_dir_name(k)}: another "
                         f"process failed (its error is above); the previous checkpoint is intact: free space or fix "
                         f"permissions and --resume latest")
            partial = None
            if sharded:  # every rank writes its own optimizer shard, in parallel, into the folder being written
                dist.raise_together(attempt(lambda: ckpt.start_partial(run.path, k), dist.is_main), elsewhere)
                partial = ckpt.shared_partial(run.path, k)
                dist.raise_together(attempt(lambda: [ckpt.write_optimizer_shard(partial, name, opt, dist.rank)
                                                     for name, opt in sharded.items()]), elsewhere)

            def checkpoint_tensors() -> dict:
                tensors = nets.trainable_state()
                if ema is not None:  # the averaged generator beside the live one: sample / export read it
                    with ema.swapped():
                        tensors["generator_ema"] = nets.generator_state()
                if rl_branch is not None and rl_branch.state():
                    tensors["rl_reference"] = rl_branch.state()
                if gan is not None:
                    tensors["gan_head"] = gan.state()
                return tensors

            whole = parallel.whole_state(checkpoint_tensors, optimizers)  # sharded weights: gathered by every rank

            def write():
                tensors, state = whole if whole is not None else (checkpoint_tensors(), optimizers)
                ckpt.save_checkpoint(run.path, k, recipe_yaml=to_yaml(cfg),
                                     state=run_state(cfg, stage, nets, dist.world_size), tensors=tensors,
                                     optimizers=state, keep=cfg.train.keep_checkpoints, fault_hook=fault_point,
                                     partial=partial, shards=dist.world_size)

            dist.raise_together(attempt(write, dist.is_main), elsewhere)

        def logged(k: int) -> bool:
            """Whether generator step k (counted from 1) writes a log line."""
            return k % cfg.train.log_every == 0 or k == total_steps or k == start + 1

        def micro_step(k, inner, micro, gen_turn, rl_on, stats, fake_losses):
            """Forward and backward of one micro-batch: generator sample, generator loss on its turn, fake loss."""
            ids, texts, cond = batch(k, inner, micro)
            rng = StepRandomness(cfg.train.seed, k, inner * A + micro, ids, device)
            x0_g, info = generator_sample(ctx, cond, rng, with_grad=gen_turn)
            fault_point("after-generator-forward")
            if gen_turn:
                loss_dmd, dmd_stats = dmd_generator_loss(ctx, x0_g, cond, rng, k)
                loss_dmd = inject_nan("dmd", loss_dmd, k)
                loss = cfg.dmd.weight * loss_dmd
                if cfg.ode_regression.weight > 0:  # keyed by global sample id, like every other draw
                    loss_reg = term_loss(ctx, pairs, conds, ids, cfg.train.seed)
                    loss = loss + cfg.ode_regression.weight * loss_reg
                    stats["ode_regression_loss"] = loss_reg.detach()
                if rl_on:
                    loss_rl, rl_stats = rl_branch.loss(ctx, x0_g, cond, texts, rng, k)
                    loss_rl = inject_nan("rl", loss_rl, k)
                    loss = loss + cfg.rl.weight * loss_rl
                    stats.update(rl_stats)
                    stats["rl_loss"] = loss_rl.detach()
                if gan is not None:
                    loss_gan, gan_stats = gan.generator_loss(ctx, x0_g, cond, rng)
                    loss = loss + cfg.gan.weight * loss_gan
                    stats.update(gan_stats)
                nets.as_generator()
                if micro == A - 1:
                    reducer_g.arm()  # this backward completes the generator's gradients: reduce during it
                (loss / A).backward()
                stats.update(dmd_stats)
                stats["dmd_loss"] = loss_dmd.detach()
                stats["generator_loss"] = loss.detach()
            head_loss = 0.0
            if gan is not None:  # before the fake pass: a checkpointed backward recomputes with the live adapter
                head_loss, head_stats = gan.head_loss(ctx, x0_g, cond, ids, rng)
                stats.update(head_stats)
                if micro == A - 1:
                    gan.reducer.arm()
            diagnose = gen_turn and micro == A - 1 and logged(k + 1)  # the teacher's loss too, on logged steps only
            fake_loss = inject_nan("fake", fake_score_step_loss(ctx, x0_g, cond, rng, k, stats if diagnose else None), k)
            if micro == A - 1:
                reducer_f.arm()
            ((fake_loss + head_loss) / A).backward()
            fake_losses.append(fake_loss.detach())

        val_cond = fixed_conds[[index_of[p] for p in val_prompts]]
        val_rewards = rl_branch.rewards if rl_branch is not None else []

        def encode(texts: list[str]):
            """The conditioning of prompts encoded above (a bench's, the run's own)."""
            return fixed_conds[[index_of[p] for p in texts]]

        # the processes that run the networks outside training steps: the main one, or every one when the weights are
        # sharded (each sharded forward all-gathers); the main one alone writes
        sampling = dist.is_main or parallel.every_rank_forwards

        def samples(k: int) -> None:
            """The sample grid of generator step k into samples/ (and the dashboards)."""
            with averaged(ema):  # the weights a user would sample
                image = sample_grid(ctx, val_cond, cfg.train.seed)
            if dist.is_main:
                log.image(k, "samples", write_sample_grid(image, val_prompts, run.path / "samples", k))

        def run_validation(k: int, best: float | None) -> float | None:
            """Validation metrics into the log, a grid into samples/, and the best checkpoint by weighted reward."""
            with averaged(ema):  # the weights a user would sample
                metrics, images = validate(ctx, val_prompts, val_cond, val_rewards, cfg.train.seed)
                metrics.update(plugins.validation_metrics(benches, ctx, encode))
            if not dist.is_main:
                return best
            (run.path / "samples").mkdir(exist_ok=True)
            grid = run.path / "samples" / f"validation-{k:06d}.png"
            grid_image(images).save(grid)
            log.write(k, metrics)
            log.image(k, "validation", grid)
            score = metrics.get("val_reward_weighted")
            if score is not None and (best is None or score > best):
                ckpt.mark_best(run.path, k, metrics)
                return score
            return best

        pairs = None
        warm_start = start == 0 and cfg.ode_regression.steps and not init
        if warm_start or cfg.ode_regression.weight > 0:
            pairs = teacher_pairs(ctx, conds, run.path, dist, console)
        if warm_start:
            ode_warm_start(ctx, pairs, conds, dist, parallel, log, console)

        best = None
        title = "cold start" if stage == "coldstart" else "distill"
        k = start
        with StepProgress(total_steps, start, console, dist.is_main, title) as progress, run.preemption() as preempt:
            while k < total_steps:
                t0 = time.perf_counter()
                sent0 = reducer_g.bytes_reduced + reducer_f.bytes_reduced
                rl_on = rl_branch is not None and k >= cfg.rl_start
                stats: dict = {}
                stats["lr_generator"], stats["lr_guidance"] = cfg.learning_rates(k)  # a stage's own rates
                for opt, lr in zip((opt_g, opt_f), (stats["lr_generator"], stats["lr_guidance"])):
                    for group in opt.param_groups:
                        group["lr"] = lr
                if gan is not None:
                    gan.set_step(cfg, k)
                fake_losses = []
                for inner in range(K):
                    gen_turn = inner == K - 1  # the fake score is freshest right before the generator update
                    for micro in range(A):
                        with ctx.amp():  # one autocast region per micro-step: weight casts are cached across
                            #             the generator's rollout forwards (params only change after it)
                            micro_step(k, inner, micro, gen_turn, rl_on, stats, fake_losses)
                    fault_point("after-backward")
                    if gen_turn:
                        parts = {"DMD": stats["dmd_loss"], **({"RL reward": stats["rl_loss"]} if rl_on else {}),
                                 **({"ODE regression": stats["ode_regression_loss"]} if "ode_regression_loss" in stats else {})}
                        ok, norm = apply_update(nets.generator_params, opt_g, cfg.train.grad_clip, reducer_g, guard_g,
                                                "DMD/RL generator" if rl_on else "DMD generator", stats["generator_loss"],
                                                parts)
                        stats["generator_grad_norm"], stats["generator_skipped"] = norm, int(not ok)
                        if rl_on and ok:
                            rl_branch.extra_updates(ctx, lambda extra_loss: apply_update(
                                nets.generator_params, opt_g, cfg.train.grad_clip, reducer_g, guard_g, "RL reward",
                                extra_loss))
                    ok, norm = apply_update(nets.fake_params, opt_f, cfg.train.grad_clip, reducer_f, guard_f,
                                            "fake-score", fake_losses[-1])
                    stats["fake_grad_norm"] = norm
                    if gan is not None:
                        apply_update(gan.params, gan.opt, cfg.train.grad_clip, gan.reducer, guard_gan, "GAN head",
                                     stats["gan_head_loss"])
                    fault_point("after-optimizer-step")
                k += 1
                if ema is not None:
                    ema.update(k)
                stats["fake_loss"] = torch.stack(fake_losses).mean()
                stats["step_time"] = time.perf_counter() - t0
                if dist.world_size > 1 and not parallel.every_rank_forwards:  # bytes this process sent into
                    # reductions and parameter broadcasts (FSDP's own collectives are not counted)
                    stats["comm_mib"] = (reducer_g.bytes_reduced + reducer_f.bytes_reduced - sent0) / 2**20
                stats["nonfinite_skipped"] = guard_g.skipped + guard_f.skipped
                if logged(k):  # the only host syncs for stats
                    stats.update(memory_stats(device))
                    # this process's AdamW state (its 1/N shard under train.sharding optimizer or full), averaged
                    stats["optimizer_state_mib"] = (optimizer_state_bytes(opt_g) + optimizer_state_bytes(opt_f)) / 2**20
                    # and its share of the networks' weights (1/N of them under train.sharding full)
                    stats["weights_mib"] = weight_bytes(nets.guidance, nets.generator, nets.fake_full) / 2**20
                    scalars = {n: float(v) for n, v in dist.mean_scalars(stats).items() if _is_scalar(v)}
                    log.write(k, {"stage": "coldstart" if k <= cfg.coldstart.steps else "distill", "rl": rl_on, **scalars})
                    progress.update(k, {n: scalars[n] for n in ("generator_loss", "fake_loss", "rl_loss") if n in scalars})
                if cfg.train.sample_every and k % cfg.train.sample_every == 0 and sampling:
                    samples(k)
                validating = cfg.train.validate_every and k % cfg.train.validate_every == 0
                due = (cfg.train.checkpoint_every and k % cfg.train.checkpoint_every == 0) or k == total_steps or validating
                stop = dist.any(preempt.requested)  # the signal may reach one process only; all must save and stop
                if due or stop:  # once per step: a preempted run checkpoints the step it just finished
                    save(k)
                if validating and sampling:
                    best = run_validation(k, best)
                if stop and k < total_steps:  # a signal during the last step: the run is simply done
                    console.print(f"[yellow]stopped by {preempt.signal_name or 'a signal to another process'} at generator "
                                  f"step {k}; checkpoint written. "
                                  f"Continue with --resume latest[/]")
                    log.close()
                    raise SystemExit(preempt.exit_code or 143)  # a process stopped by another's signal: SIGTERM's code
        # ---- what the run promises after its last step; done.json is written only once all of it is --------
        fault_point("before-end-outputs")
        outputs = [f"checkpoints/{ckpt.step_dir_name(k)}"]
        if sampling and cfg.train.sample_every:
            samples(k)
            outputs.append("samples")
        if dist.is_main:
            with averaged(ema):
                reports = plugins.final_reports(benches, ctx, encode, run.path, console)
            outputs += [f"report:{name}" for name in reports]
            if stage == "distill" and cfg.output.push.repo_id:  # a failed upload leaves the run to finish on resume
                from .export import push_run

                push_run(cfg, run.path / "checkpoints" / ckpt.step_dir_name(k), run.path, console)
                outputs.append(f"hub:{cfg.output.push.repo_id}")
            fault_point("before-done-marker")
            mark_done(run.path, k, stage, outputs)
        log.close()
        run.close()
        if dist.is_main:
            console.print(f"[green]done[/]: {total_steps} generator steps; checkpoints in {run.path / 'checkpoints'}")
    return run.path


def attempt(work, here: bool = True) -> Exception | None:
    """Run `work` (when `here`) and return what it raised, for Dist.raise_together."""
    if not here:
        return None
    try:
        work()
    except Exception as err:  # every process raises once all know (a write failure, or any other)
        return err
    return None


def teacher_pairs(ctx, conds: PromptConditions, run_dir: Path, dist: Dist,
                  console: Console) -> dict[str, torch.Tensor]:
    """The (noise, teacher sample) pairs of the ode_regression section: made once, then read from the cache that
    records what made them (the run folder's, kept by a run that fails early, or the user's shared one)."""
    cfg = ctx.cfg
    n = cfg.ode_regression.pairs
    with StepProgress(n, 0, console, dist.is_main, "ODE pairs") as progress:
        done = [0]

        def advance(count):
            done[0] += count
            progress.update(done[0], {})

        return make_pairs(ctx, conds, n, pair_seed(cfg), cache_path(cfg, run_dir), advance, dist,
                          identity=pair_identity(cfg, conds.prompts), shared=bool(cfg.ode_regression.cache))


def ode_warm_start(ctx, pairs, conds, dist: Dist, parallel, log: MetricsLog, console: Console) -> None:
    """Regress the student onto teacher ODE outputs before generator step 0 (ode_regression section)."""
    cfg = ctx.cfg
    n = cfg.ode_regression.pairs
    opt = make_optimizer(ctx.nets.generator_params, cfg.ode_regression.lr or cfg.train.lr_generator, cfg.train, ctx.device,
                         dist.world_size, bucket_view=False)  # the generator's own optimizer holds the views
    reducer = parallel.reducer(ctx.nets.generator_params, opt)
    guard = NonFiniteGuard(cfg.train.max_nonfinite_steps)
    B = cfg.train.batch_size
    with StepProgress(cfg.ode_regression.steps, 0, console, dist.is_main, "ODE regression") as progress:
        for it in range(cfg.ode_regression.steps):
            g = keyed_generator(cfg.train.seed, "ode-regression", it)
            rows = torch.randperm(n, generator=g)[dist.rank * B:(dist.rank + 1) * B]
            loss = regression_loss(ctx, pairs, conds, rows)
            reducer.arm()
            loss.backward()
            apply_update(ctx.nets.generator_params, opt, cfg.train.grad_clip, reducer, guard, "ODE regression", loss)
            if (it + 1) % cfg.train.log_every == 0 or it + 1 == cfg.ode_regression.steps:
                value = dist.mean_scalars({"ode_regression_loss": loss.detach()})["ode_regression_loss"]
                log.write(0, {"phase": "ode_regression", "iteration": it + 1, "ode_regression_loss": float(value)})
                progress.update(it + 1, {"loss": float(value)})
    reducer.remove()


def run_state(cfg: Recipe, stage: str, nets, processes: int) -> dict:
    from .. import __version__

    return {"dmdr_version": __version__, "stage": stage, "family": cfg.model.family,
            "generator_format": "lora" if nets.generator_switch is not None else "full",
            "fake_format": "full" if nets.fake_full is not None else "lora",
            "generator_lora": {"rank": cfg.student.lora_rank, "alpha": cfg.student.lora_alpha,
                               "targets": list(cfg.student.lora_targets or [])},
            "student_steps": cfg.student.steps, "processes": processes}


def restore(path: Path, nets, optimizers: dict, rl_branch, ema: GeneratorEMA | None = None) -> int:
    data = ckpt.load_checkpoint(path)
    nets.load_generator_state(data["tensors"]["generator"])
    if ema is not None:  # a checkpoint without one (--allow-recipe-change turned the EMA on) starts it here
        with ema.swapped():
            nets.load_generator_state(data["tensors"].get("generator_ema", data["tensors"]["generator"]))
    nets.load_fake_state(data["tensors"]["fake"])
    if rl_branch is not None:
        rl_branch.load_state(data["tensors"].get("rl_reference", {}))
    for name, opt in optimizers.items():  # compat.check_whole has seen every optimizer's files
        ckpt.optimizer_from_files(opt, *data["optim"][name])
    return int(data["state"]["step"])


def memory_stats(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"gpu_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        import resource

        return {"cpu_rss_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    except ImportError:
        return {}


def _is_scalar(v) -> bool:
    """One number (a 1-element tensor, an int or a float; non-finite ones are logged as strings)."""
    return (torch.is_tensor(v) and v.numel() == 1) or (isinstance(v, (int, float)) and not isinstance(v, bool))
