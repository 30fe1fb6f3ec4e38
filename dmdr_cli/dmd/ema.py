"""An exponential moving average of the generator's trainable weights (opt-in: the DMDR authors use none).

Self-Forcing averages its DMD generator with decay 0.99 from step 200, FastGen's EDM configs keep a
generator EMA too: a DMD generator moves on a noisy gradient (a fake score chasing it, a small batch), and
the average of its last few hundred updates is a better sampler than any one of them. The shadow holds
copies (in the masters' dtype, fp32) of exactly the tensors the generator's optimizer updates (a LoRA's adapters, or the whole
denoiser), so it costs one more copy of what the optimizer already keeps two of.

Before `start_step` the shadow follows the weights exactly; from then on, after each generator update,
shadow <- decay * shadow + (1 - decay) * weights. `swapped()` puts the shadow in the weights' place (for
validation, sample grids, end-of-run reports and the checkpoint's `generator_ema` tensors) and back.
"""

from __future__ import annotations

import contextlib

import torch

from ..runtime.sharding import is_sharded_tensor, local


class GeneratorEMA:
    """Under train.sharding full each process averages its own shard of the weights (`local`)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float, start_step: int):
        self.params, self.decay, self.start_step = params, decay, start_step
        self.shadow = [local(p.detach()).clone() for p in params]

    def update(self, steps_done: int) -> None:
        """After the generator update that completed generator step `steps_done` (counted from 1)."""
        live = [local(p.detach()) for p in self.params]
        with torch.no_grad():
            if steps_done <= self.start_step:
                torch._foreach_copy_(self.shadow, live)
            else:
                torch._foreach_lerp_(self.shadow, live, 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped(self):
        """The averaged weights in the parameters' place; the live ones back on exit (also on an error)."""
        if any(is_sharded_tensor(p) for p in self.params):
            with self._copied():
                yield
            return
        live = [p.data for p in self.params]
        for p, s in zip(self.params, self.shadow):
            p.data = s  # shares the shadow's storage: weights loaded in place here land in the shadow
        try:
            yield
        finally:
            for p, data in zip(self.params, live):
                p.data = data

    @contextlib.contextmanager
    def _copied(self):
        """`swapped` for FSDP-sharded parameters: FSDP gathers a parameter from its own shard storage, not from
        whatever `.data` points at, so the values are copied in and out (a copy of this process's shard)."""
        views = [local(p.detach()) for p in self.params]
        live = [v.clone() for v in views]
        torch._foreach_copy_(views, self.shadow)
        try:
            yield
        finally:
            torch._foreach_copy_(self.shadow, views)  # weights loaded meanwhile land in the shadow
            torch._foreach_copy_(views, live)


@contextlib.contextmanager
def averaged(ema: GeneratorEMA | None):
    """`ema.swapped()`, or nothing when the recipe has no EMA."""
    if ema is None:
        yield
    else:
        with ema.swapped():
            yield
