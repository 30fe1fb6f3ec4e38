"""The RL branch of stage 2: L = L_dmd + rl.weight * L_rl, with L_rl from ReFL, Diffusion-DPO or GRPO.

Every branch sees the same things the DMD loss sees (the family adapter, the score networks, the
generator's x0 and the prompts) and never asks which family it has.
- ReFL: rewards on the decoded x0 that also feeds L_dmd (the DMDR authors' main variant).
- DPO: K samples per prompt, best vs worst by reward, Diffusion-DPO on the generator used as a
  denoiser at its own student times after the first (errors measured in x0 space).
- GRPO: K sde trajectories per prompt, group-normalised advantages, PPO-clipped likelihood ratio of the
  Gaussian renoise transitions (Flow-GRPO / DanceGRPO construction).
"""

from __future__ import annotations

import copy

import torch

from ..errors import DmdrError
from ..families.base import Cond
from ..families.schedules import _bcast
from ..rewards.loss import combined_reward_loss, effective_prefix, with_prefix
from ..sampling import sample
from .dpo import dpo_loss, per_sample_error, pick_pairs
from .grpo import gaussian_kl, gaussian_logprob, group_advantages, grpo_loss, sde_transition

REFERENCE = "reference"


def build_rl_branch(cfg, device: torch.device, stage: str):
    """The recipe's RL branch with its rewards loaded (None for the cold start or rl.algorithm none)."""
    if stage == "coldstart" or cfg.rl.algorithm == "none" or cfg.rl_start >= cfg.train.steps:
        return None
    if cfg.rl.algorithm == "grpo":
        _check_grpo_sampler(cfg)  # before the rewards and the teacher load
    from ..rewards.registry import build_reward

    rewards = [(build_reward(spec, device, key=f"rl.rewards[{i}]",
                             gradient_checkpointing=cfg.train.gradient_checkpointing), spec)
               for i, spec in enumerate(cfg.rl.rewards)]
    return BRANCHES[cfg.rl.algorithm](cfg, rewards, device)


def _check_grpo_sampler(cfg) -> None:
    """GRPO optimises the likelihood of sde transitions: the student must also sample with them."""
    from ..families import FAMILIES

    sampler = cfg.student.sampler
    if sampler == "auto":
        sampler = FAMILIES[cfg.model.family].default_sampler
    if sampler != "sde":
        how = f"auto resolves to ode for {cfg.model.family}" if cfg.student.sampler == "auto" else "it is ode"
        raise DmdrError(f"rl.algorithm grpo optimises the student's sde transitions but student.sampler is not sde "
                        f"({how}): set student.sampler=sde so the policy trained is the one sampled, or use refl "
                        f"or dpo")


class RLBranch:
    def __init__(self, cfg, rewards, device):
        self.cfg, self.rewards, self.device = cfg, rewards, device
        self.decoder = _load_decoder(cfg.rl.decoder, device) if cfg.rl.decoder else None
        self.family = self.nets = None

    def attach(self, family, nets) -> None:
        self.family, self.nets = family, nets
        decoder = self.decoder or family.components.vae
        if self.cfg.train.gradient_checkpointing and hasattr(decoder, "enable_gradient_checkpointing"):
            decoder.enable_gradient_checkpointing()  # ReFL backpropagates through the decoder: recompute it

    def images(self, x0: torch.Tensor) -> torch.Tensor:
        """Decoded [0, 1] images of x0 (differentiable), optionally downscaled to save reward memory."""
        images = self.family.decode(x0, vae=self.decoder)
        size = self.cfg.rl.decode_resolution
        if size and images.shape[-1] > size:
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        return images

    def scores(self, x0: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict]:
        """Weighted sum of the rewards' scores per sample (no gradient): what DPO and GRPO rank by.

        Each reward sees its prompt prefix, as in ReFL's loss (rewards/loss.py)."""
        with torch.no_grad():
            images = self.images(x0)
            total = torch.zeros(len(prompts), device=images.device)
            logged = {}
            for reward, spec in self.rewards:
                r = reward(images, with_prefix(prompts, effective_prefix(reward, spec))).float()
                total = total + spec.weight * r
                logged[f"reward_{reward.name}"] = r.mean()
        return total, logged

    # checkpointed extra state (the frozen reference of DPO/GRPO); ReFL has none
    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def extra_updates(self, ctx, apply_update) -> None:
        """Further optimisation passes on the same batch after the generator update (GRPO epochs)."""


class ReFL(RLBranch):
    def loss(self, ctx, x0_g, cond, prompts, rng, k):
        loss, scores = combined_reward_loss(self.rewards, self.images(x0_g), prompts)
        return loss, {f"reward_{n}": v for n, v in scores.items()}


class Reference:
    """Frozen reference policy: the generator as it was when RL started, or the teacher.

    For a LoRA generator the snapshot is one more adapter on the shared weights (a few MB); for a full
    generator it is a frozen copy (a third model: `reference: teacher` avoids it).
    """

    def __init__(self, kind: str, nets, cfg):
        self.kind, self.nets, self.cfg = kind, nets, cfg
        self.copy = None
        self.ready = kind == "teacher"

    def snapshot(self) -> None:
        """Freeze the current generator as the reference (once; a resumed run restores it instead)."""
        if self.ready:
            return
        from ..dmd.networks import add_lora, load_adapter_state

        if self.nets.generator_switch is not None:
            gen_cfg = self.nets.generator.peft_config["generator"]
            for p in add_lora(self.nets.generator, REFERENCE, gen_cfg.r, gen_cfg.lora_alpha, list(gen_cfg.target_modules)):
                p.requires_grad_(False)
            load_adapter_state(self.nets.generator, REFERENCE, self.nets.generator_state())
            self.nets.generator_switch.invalidate()
        else:
            self.copy = copy.deepcopy(self.nets.generator).requires_grad_(False).eval()
        self.ready = True

    def net(self):
        if self.kind == "teacher":
            return self.nets.as_real(0.0)
        if self.copy is not None:
            return self.copy
        self.nets.generator_switch.use(REFERENCE, 1.0)
        return self.nets.generator

    def state(self) -> dict[str, torch.Tensor]:
        if self.kind == "teacher" or not self.ready:
            return {}
        if self.copy is not None:
            return {k: v.detach().clone() for k, v in self.copy.state_dict().items()}
        from ..dmd.networks import adapter_state

        return adapter_state(self.nets.generator, REFERENCE)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if not state or self.kind == "teacher":
            return
        self.snapshot()
        if self.copy is not None:
            self.copy.load_state_dict(state)
        else:
            from ..dmd.networks import load_adapter_state

            load_adapter_state(self.nets.generator, REFERENCE, state)


class _WithReference(RLBranch):
    reference_kind = "rl_start"

    def attach(self, family, nets) -> None:
        super().attach(family, nets)
        self.reference = Reference(self.reference_kind, nets, self.cfg)

    def state(self):
        return self.reference.state()

    def load_state(self, state):
        self.reference.load_state(state)


class DPO(_WithReference):
    def __init__(self, cfg, rewards, device):
        super().__init__(cfg, rewards, device)
        self.reference_kind = cfg.rl.dpo.reference

    def loss(self, ctx, x0_g, cond, prompts, rng, k):
        self.reference.snapshot()
        K = self.cfg.rl.dpo.samples_per_prompt
        group_cond = cond.repeat_interleave(K)
        group_prompts = [p for p in prompts for _ in range(K)]
        # K samples per prompt from the current generator, ranked by reward (no gradient)
        noise = group_noise(rng, x0_g.shape[1:], K, "rl")
        with torch.no_grad(), ctx.amp():
            samples = sample(self.family, self.nets.as_generator(), noise, group_cond, ctx.student_times, ctx.sampler,
                             lambda like: group_noise(rng, like.shape[1:], K, "rl_rollout").to(like.dtype)).float()
        rewards, logged = self.scores(samples, group_prompts)
        win, lose = pick_pairs(rewards, K)
        x0_w, x0_l = samples[win], samples[lose]
        # both noised with the same noise at the same student time (Wallace et al. 2023), at a step after the
        # first: only there does the sampler feed the student a renoised x0 (step 0 gets pure noise)
        j = 1 + int(torch.randint(len(ctx.student_times) - 1, (), generator=rng.shared("rl_step")))
        t = torch.full((len(prompts),), ctx.student_times[j], device=x0_g.device)
        n = rng.randn(x0_g.shape[1:], "rl_noise")
        schedule = self.family.schedule
        x_w, x_l = schedule.renoise(x0_w, t, n), schedule.renoise(x0_l, t, n)
        both, tt, cc = torch.cat([x_w, x_l]), torch.cat([t, t]), Cond.cat([cond, cond])
        with torch.no_grad(), ctx.amp():
            ref = self.family.predict_x0(self.reference.net(), both, tt, cc).float()
        with ctx.amp():
            pol = self.family.predict_x0(self.nets.as_generator(), both, tt, cc).float()
        b = len(prompts)
        target = torch.cat([x0_w, x0_l])
        err_pol, err_ref = per_sample_error(pol, target), per_sample_error(ref, target)
        loss, stats = dpo_loss(err_pol[:b], err_ref[:b], err_pol[b:], err_ref[b:], self.cfg.rl.dpo.beta)
        return loss, {**stats, **logged, "reward_margin": (rewards[win] - rewards[lose]).mean()}


class GRPO(_WithReference):
    def __init__(self, cfg, rewards, device):
        super().__init__(cfg, rewards, device)
        self.reference_kind = "teacher" if cfg.rl.grpo.kl_weight == 0 else "rl_start"
        self.batches = []  # (k, rollouts, advantages) of every micro-batch of generator step k

    def rollouts(self, ctx, cond, rng):
        """K sde trajectories per prompt: inputs x_j, chosen next states x_{j+1}, old log-probs, final x0."""
        K = self.cfg.rl.grpo.group_size
        group_cond = cond.repeat_interleave(K)
        times = ctx.student_times
        shape = ctx.family.latent_shape(self.cfg.model.resolution)
        x = group_noise(rng, shape, K, "rl")
        xs, nexts, logps = [], [], []
        net = self.nets.as_generator()
        with torch.no_grad(), ctx.amp():
            for j in range(len(times)):
                t = torch.full((x.shape[0],), times[j], device=x.device)
                x0 = self.family.predict_x0(net, x, t, group_cond).float()
                if j == len(times) - 1:
                    break
                t_next = torch.full_like(t, times[j + 1])
                mean, std = sde_transition(self.family.schedule, x0, t_next, self.cfg.rl.grpo.noise_level)
                x_next = mean + _bcast(std, mean) * group_noise(rng, shape, K, "rl_transition").to(mean)
                xs.append(x)
                nexts.append(x_next)
                logps.append(gaussian_logprob(x_next, mean, std, reduction="mean"))
                x = x_next
        return {"cond": group_cond, "xs": xs, "nexts": nexts, "logp_old": torch.stack(logps, 1), "x0": x0}

    def policy_loss(self, ctx, batch, advantages):
        times = ctx.student_times
        losses, stats = [], {}
        for j, (x, x_next) in enumerate(zip(batch["xs"], batch["nexts"])):
            t = torch.full((x.shape[0],), times[j], device=x.device)
            t_next = torch.full_like(t, times[j + 1])
            x0_ref = None
            if self.cfg.rl.grpo.kl_weight > 0:  # before the policy forward: backward's recomputation of a
                #                                 checkpointed forward must find the generator adapter live
                with torch.no_grad(), ctx.amp():
                    x0_ref = self.family.predict_x0(self.reference.net(), x, t, batch["cond"]).float()
            with ctx.amp():
                x0 = self.family.predict_x0(self.nets.as_generator(), x, t, batch["cond"]).float()
            mean, std = sde_transition(self.family.schedule, x0, t_next, self.cfg.rl.grpo.noise_level)
            logp = gaussian_logprob(x_next, mean, std, reduction="mean")
            kl = None
            if x0_ref is not None:
                mean_ref, _ = sde_transition(self.family.schedule, x0_ref, t_next, self.cfg.rl.grpo.noise_level)
                kl = gaussian_kl(mean, mean_ref, std, reduction="mean")
            loss, stats = grpo_loss(logp, batch["logp_old"][:, j], advantages, self.cfg.rl.grpo.clip, kl,
                                    self.cfg.rl.grpo.kl_weight)
            losses.append(loss)
        return torch.stack(losses).mean(), stats

    def loss(self, ctx, x0_g, cond, prompts, rng, k):
        if self.cfg.rl.grpo.kl_weight > 0:
            self.reference.snapshot()
        K = self.cfg.rl.grpo.group_size
        batch = self.rollouts(ctx, cond, rng)
        rewards, logged = self.scores(batch["x0"], [p for p in prompts for _ in range(K)])
        advantages = group_advantages(rewards, K)
        # the micro-batches of this generator step only (an update skipped as non-finite leaves its own behind)
        self.batches = [b for b in self.batches if b[0] == k] + [(k, batch, advantages)]
        loss, stats = self.policy_loss(ctx, batch, advantages)
        return loss, {**stats, **logged}

    def extra_updates(self, ctx, apply_update) -> None:
        """Epochs 2..E on the same rollouts: they optimise the policy only and do not advance k.

        Each epoch accumulates over all micro-batches of the step, as the first update did."""
        batches, self.batches = self.batches, []
        for _ in range(self.cfg.rl.grpo.epochs - 1):
            losses = []
            for _, batch, advantages in batches:
                loss, _ = self.policy_loss(ctx, batch, advantages)
                (self.cfg.rl.weight * loss / len(batches)).backward()
                losses.append(loss.detach())
            apply_update(torch.stack(losses).mean())


def group_noise(rng, shape, K: int, purpose: str) -> torch.Tensor:
    """Per-sample noise for K samples of each prompt, prompt-major (sample j of prompt i at i*K + j)."""
    return torch.stack([rng.randn(shape, purpose) for _ in range(K)], 1).reshape(-1, *shape)


def _load_decoder(path: str, device):
    """A diffusers AutoencoderTiny (TAESD) for cheaper ReFL decodes, frozen."""
    try:
        from diffusers import AutoencoderTiny

        return AutoencoderTiny.from_pretrained(path).to(device).requires_grad_(False).eval()
    except (OSError, ValueError) as e:
        raise DmdrError(f"rl.decoder {path!r} could not be loaded as a diffusers AutoencoderTiny ({str(e).splitlines()[0]}): "
                        f"give a local folder or hub id such as madebyollin/taesdxl, or remove rl.decoder") from None


BRANCHES = {"refl": ReFL, "dpo": DPO, "grpo": GRPO}
