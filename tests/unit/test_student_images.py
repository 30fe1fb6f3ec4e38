"""Validation and report images of a trainable student hold no autograd graph: the world report samples
1,392 images, and a graph per batch kept alive by the returned tensor grew the main job past 20 GB."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch

from dmdr_cli.dmd.validation import student_images


class Rows:
    """The slice of a Cond that sampling touches."""

    def __init__(self, n: int):
        self.batch_size = n

    def __getitem__(self, s):
        return Rows(len(range(*s.indices(self.batch_size))))

    def to(self, device):
        return self


def test_student_images_of_a_trainable_generator_carry_no_graph():
    net = torch.nn.Linear(4, 4)  # requires grad, as a full fine-tune generator does
    schedule = SimpleNamespace(renoise=lambda x0, t, noise: 0.5 * x0 + 0.5 * noise)
    family = SimpleNamespace(noise=lambda n, h, w, generator: torch.randn(n, 4, generator=generator),
                             predict_x0=lambda model, x, t, cond, guidance=None: model(x),
                             decode=lambda x0: x0, schedule=schedule)
    ctx = SimpleNamespace(family=family, nets=SimpleNamespace(as_generator=lambda: net), amp=contextlib.nullcontext,
                          cfg=SimpleNamespace(model=SimpleNamespace(resolution=2)), device=torch.device("cpu"),
                          student_times=[0.999, 0.75, 0.5, 0.25], sampler="sde")
    images = student_images(ctx, Rows(5), seed=0, batch=2)
    assert images.shape == (5, 4)
    assert images.grad_fn is None and not images.requires_grad
