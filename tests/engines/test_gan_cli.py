"""The GAN term end to end on the tiny pixel-space sd model (CPU fp32): the head learns to tell real images from
generated ones, the term moves the generator, and a resumed run is bit-identical to an uninterrupted one."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from train_helpers import invoke, log_rows, ok, recipe, weights


def image_folder(tmp_path):
    """Six flat-coloured images of odd sizes, half with a caption: nothing like a random teacher's samples."""
    folder = tmp_path / "real"
    if not folder.exists():
        folder.mkdir()
        for i in range(6):
            array = np.zeros((20, 24, 3), np.uint8)
            array[..., i % 3] = 200
            Image.fromarray(array).save(folder / f"{i}.png")
            if i % 2 == 0:
                (folder / f"{i}.txt").write_text("a red circle")
    return folder


def gan_recipe(tmp_path, model, run, steps: int, **gan):
    return recipe(tmp_path, "sd", model, run, data={"images": str(image_folder(tmp_path))},
                  gan={"weight": 0.1, "lr": 1e-2, "t_max": 0.5, **gan},
                  train={"steps": steps, "sample_every": 0, "checkpoint_every": 2})


def test_the_head_learns_to_tell_real_from_generated_and_the_generator_feels_it(tiny_sd_pixel, tmp_path):
    run = tmp_path / "gan"
    ok("distill", gan_recipe(tmp_path, tiny_sd_pixel, run, 8))
    rows = log_rows(run)
    head = [r["gan_head_loss"] for r in rows]
    accuracy = [(r["gan_real_accuracy"] + r["gan_fake_accuracy"]) / 2 for r in rows]
    assert head[0] > 1.0 and max(head[-3:]) < 0.5 * head[0], head  # log 4 = 1.39 at chance
    assert accuracy[0] <= 0.75 and min(accuracy[-3:]) == 1.0, accuracy  # measured before each update
    assert all(r["gan_generator_loss"] > 0 and r["gan_grad_norm"] > 0 for r in rows)
    assert weights(run, 8, "gan_head")
    # two steps without the term, everything else equal (draws are keyed by purpose, not by order)
    plain = tmp_path / "plain"
    ok("distill", recipe(tmp_path, "sd", tiny_sd_pixel, plain, train={"steps": 2, "sample_every": 0}))
    assert not (plain / "checkpoints" / "step-000002" / "gan_head.safetensors").exists()
    without, with_gan = weights(plain, 2), weights(run, 2)
    assert any(not torch.equal(with_gan[k], without[k]) for k in without), "the GAN term moves the generator"


def test_resume_with_the_gan_term_is_bit_identical(tiny_sd_pixel, tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    ok("distill", gan_recipe(tmp_path, tiny_sd_pixel, straight, 4, features="fake"))
    ok("distill", gan_recipe(tmp_path, tiny_sd_pixel, halves, 2, features="fake"))
    ok("distill", gan_recipe(tmp_path, tiny_sd_pixel, halves, 4, features="fake"), "--resume", "latest")
    for name in ("generator", "fake", "gan_head", "optim_gan_head"):
        a, b = weights(straight, 4, name), weights(halves, 4, name)
        assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    changed = invoke("distill", gan_recipe(tmp_path, tiny_sd_pixel, halves, 6, features="fake"), "gan.weight=0.2",
                     "--resume", "latest")
    assert changed.exit_code == 2 and "gan.weight 0.1 -> 0.2" in changed.output
