"""The GAN term (opt-in, `gan` section): DMD2's classifier on diffusion features, written once for every family.

DMD2 (arXiv 2405.14867, "diffusion GAN"): real images and the generator's samples are renoised to random
times, a denoiser runs on them up to its bottleneck (`Family.bottleneck`: a UNet's mid block, an MMDiT's
middle block), and a small head turns those features into one logit, "real". Losses are the non-saturating
logistic ones: the head minimises softplus(-D(real)) + softplus(D(fake)), the generator softplus(-D(fake)).
The features come from the frozen teacher (`features: teacher`, NVlabs/FastGen's choice) or from the fake
score (`features: fake`, DMD2's; the head's loss then also trains the fake score's adapter, as in DMD2).

Cost: a feature pass stops at the bottleneck (a forward hook raises once it has the features), so about half
a denoiser forward; one on the generator's samples (with grad) at the generator's turn, and one on real and
generated images together at every fake-score update, where the head trains.

The generator's GAN gradient is taken at once with `torch.autograd.grad` w.r.t. the samples and enters the
generator loss as a surrogate with that gradient: the feature network's parameters and the head never collect
a gradient from it (the head is trained by its own loss only), and the backward through the feature network
runs while its adapter is still the live one, so gradient checkpointing recomputes the right network.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import DmdrError
from ..families.base import Cond, Family
from ..runtime import checkpoint as ckpt, files
from ..runtime.distributed import Dist, GradReducer
from ..runtime.precision import make_optimizer, parameter_owners
from .randomness import StepRandomness, key_seed

HEAD, OPTIMIZER = "gan_head", "gan_head"  # the checkpoint's gan_head.safetensors and optim_gan_head.*


def head_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The head's non-saturating logistic loss: -log sigmoid(D(real)) - log(1 - sigmoid(D(fake))), batch means."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def generator_gan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating loss: -log sigmoid(D(fake)), batch mean."""
    return F.softplus(-fake_logits.float()).mean()


class _Captured(Exception):
    """Raised by the bottleneck hook: the rest of the denoiser is not needed."""


def bottleneck_features(family: Family, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor,
                        cond: Cond) -> torch.Tensor:
    """`net`'s bottleneck features [B, C, h, w] at (x_t, t, cond); the layers after the bottleneck never run."""
    captured = []

    def hook(module, args, output):
        captured.append(family.bottleneck_map(output))
        raise _Captured

    handle = family.bottleneck(net).register_forward_hook(hook)
    try:
        family.forward(net, x_t, t, cond)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"{family.name}: the denoiser never ran its bottleneck module")
    return captured[0]


def _groups(width: int) -> int:
    """GroupNorm groups of at least 8 channels (at most 32 groups, DMD2's): one channel per group would be an
    instance norm, which removes each channel's mean, a large part of what tells two images apart."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if width % g == 0 and (width // g >= 8 or g == 1))


class GanHead(torch.nn.Module):
    """DMD2's classifier branch sized for any bottleneck: 4x4 stride-2 convolutions, each with GroupNorm and
    SiLU, until the map is at most 4 wide (one 3x3 convolution if it already is), then a linear layer on the
    whole map to one logit per image (DMD2 ends in a 4x4 convolution over its 4x4 map: the same)."""

    def __init__(self, channels: int, side: int, width: int | None = None):
        super().__init__()
        width = width or channels
        layers, c = [], channels
        while True:
            halve = side > 4
            layers += [torch.nn.Conv2d(c, width, 4, 2, 1) if halve else torch.nn.Conv2d(c, width, 3, 1, 1),
                       torch.nn.GroupNorm(_groups(width), width), torch.nn.SiLU()]
            c, side = width, (side - 2) // 2 + 1 if halve else side
            if side <= 4:
                break
        self.body = torch.nn.Sequential(*layers)
        self.logit = torch.nn.Linear(width * side * side, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit(self.body(features).flatten(1)).squeeze(1)


class GanTerm:
    """The head, its optimizer and gradient reducer, the real images and the two losses of one run."""

    def __init__(self, ctx, images, encode, dist: Dist):
        """`ctx`: the run's StepContext; `images`: data.images opened (data/images.py); `encode(texts)`: the
        conditioning of captions encoded with the prompts."""
        self.cfg, self.images, self.encode = ctx.cfg.gan, images, encode
        self.uncond = ctx.uncond
        features = self._features(ctx, torch.zeros(1, *ctx.family.latent_shape(ctx.cfg.model.resolution),
                                                   device=ctx.device), torch.full((1,), 0.5, device=ctx.device),
                                  self.uncond, grad=False)
        if features.shape[-1] != features.shape[-2]:
            raise RuntimeError(f"bottleneck features of shape {tuple(features.shape)} are not square")
        with torch.random.fork_rng(devices=[]):  # the head's initial weights: from the recipe's seed alone
            torch.manual_seed(key_seed(ctx.cfg.train.seed, "gan-head"))
            self.head = GanHead(features.shape[1], features.shape[-1], self.cfg.head_width).to(ctx.device)
        self.params = list(self.head.parameters())
        self.opt = make_optimizer(self.params, self.learning_rate(ctx.cfg, 0), ctx.cfg.train, ctx.device,
                                  dist.world_size)
        self.reducer = GradReducer(self.params, dist, owner=parameter_owners(self.opt))

    def learning_rate(self, cfg, k: int) -> float:
        """gan.lr, or the fake score's rate at generator step k (a cold start may have its own)."""
        return self.cfg.lr if self.cfg.lr is not None else cfg.learning_rates(k)[1]

    def set_step(self, cfg, k: int) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.learning_rate(cfg, k)

    # ---- features and times ----------------------------------------------------------------------
    def _features(self, ctx, x_t: torch.Tensor, t: torch.Tensor, cond: Cond, grad: bool) -> torch.Tensor:
        net = ctx.nets.as_real(0.0) if self.cfg.features == "teacher" else ctx.nets.as_fake()
        with torch.set_grad_enabled(grad), ctx.amp():
            return bottleneck_features(ctx.family, net, x_t, t, cond).float()

    def _times(self, rng: StepRandomness, purpose: str, device) -> torch.Tensor:
        u = rng.per_sample_uniform(purpose).to(device).float()
        return self.cfg.t_min + (self.cfg.t_max - self.cfg.t_min) * u

    def _renoised(self, ctx, x0: torch.Tensor, rng: StepRandomness, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        t = self._times(rng, f"gan_{what}_t", x0.device)
        return ctx.family.schedule.renoise(x0, t, rng.randn_like(x0, f"gan_{what}_noise")), t

    # ---- the two losses --------------------------------------------------------------------------
    def generator_loss(self, ctx, x0_g: torch.Tensor, cond: Cond, rng: StepRandomness) -> tuple[torch.Tensor, dict]:
        """softplus(-D(x_g)) as a surrogate whose gradient w.r.t. the generator is the GAN loss's, and its stats."""
        x0 = x0_g.detach().requires_grad_(True)
        x_t, t = self._renoised(ctx, x0, rng, "fake")
        loss = generator_gan_loss(self.head(self._features(ctx, x_t, t, cond, grad=True)))
        (grad,) = torch.autograd.grad(loss, x0)
        surrogate = loss.detach() + ((x0_g - x0_g.detach()) * grad).sum()  # value: the loss; gradient: grad
        # each sample's own |d softplus(-D(x)) / dx| (the batch mean divides it by the batch size)
        per_sample = grad.flatten(1).norm(dim=1).mean() * len(x0)
        return surrogate, {"gan_generator_loss": loss.detach(), "gan_grad_norm": per_sample}

    def head_loss(self, ctx, x0_g: torch.Tensor, cond: Cond, sample_ids: list[int],
                  rng: StepRandomness) -> tuple[torch.Tensor, dict]:
        """gan.head_weight x the head's loss on real images (the batch's sample ids) and the generator's samples
        (detached), and the head's accuracy on them before this update."""
        pixels, captions = self.images.batch(sample_ids)
        with torch.no_grad(), ctx.amp():
            real = ctx.family.encode_images(pixels.to(ctx.device)).float()
        if real.shape != x0_g.shape:
            raise DmdrError(f"data.images: real images encode to {tuple(real.shape[1:])}, the generator makes "
                            f"{tuple(x0_g.shape[1:])}: the family cannot encode images at model.resolution")
        real_cond = Cond.cat([self.encode([c]).to(ctx.device) if c is not None else self.uncond for c in captions])
        real_t, t_real = self._renoised(ctx, real, rng, "real")
        fake_t, t_fake = self._renoised(ctx, x0_g.detach(), rng, "fake")
        features = self._features(ctx, torch.cat([real_t, fake_t]), torch.cat([t_real, t_fake]),
                                  Cond.cat([real_cond, cond.to(ctx.device)]), grad=self.cfg.features == "fake")
        logits = self.head(features)
        real_logits, fake_logits = logits[:len(real)], logits[len(real):]
        loss = head_loss(real_logits, fake_logits)
        stats = {"gan_head_loss": loss.detach(),
                 "gan_real_accuracy": (real_logits.detach() > 0).float().mean(),
                 "gan_fake_accuracy": (fake_logits.detach() < 0).float().mean()}
        return self.cfg.head_weight * loss, stats

    # ---- checkpoints -----------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.head.state_dict().items()}

    def restore(self, path: Path, flag: str, with_optimizer: bool) -> bool:
        """The head (and its optimizer, for --resume) from checkpoint `path`; False if it has none (it was written
        without the GAN term: the head starts fresh)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / f"{HEAD}.safetensors").is_file():
            return False
        try:
            state = load_file(str(path / f"{HEAD}.safetensors"))
            missing, unexpected = self.head.load_state_dict(state, strict=False)
            if not missing and not unexpected and with_optimizer and (path / f"optim_{OPTIMIZER}.json").is_file():
                ckpt.optimizer_from_files(self.opt, *ckpt.optimizer_files(path, f"optim_{OPTIMIZER}"))
        except RuntimeError as err:  # a tensor of another shape
            missing, unexpected = [str(err).strip().splitlines()[-1].strip()], []
        except (OSError, ValueError, KeyError) as err:
            raise DmdrError(f"checkpoint {path} is damaged ({files.reason(err)}): {flag} from another "
                            f"checkpoint of the run") from None
        if missing or unexpected:
            raise DmdrError(f"{flag} {path}: {HEAD}.safetensors does not match the GAN head the recipe builds (e.g. "
                            f"{(missing or unexpected)[0]}): keep the checkpoint's gan.head_width, gan.features and "
                            f"model.resolution")
        return True
