"""How far a world student's samples sit from the teacher's own, as the teacher's denoiser sees them.

    python scripts/world_denoising_gap.py RUN/checkpoints/step-000120 [more checkpoints ...]   # ~1 min each, 1 thread

For 64 validation prompts (builtin:world-val) it samples the teacher (25 DDIM steps, CFG 2) and each
student checkpoint (its own steps), renoises every image at fixed times with the same keyed noise, and
prints the teacher's eps-MSE per time. The training log's `teacher_loss_on_generator` is this quantity
at the renoise times of one batch, so its rise when DynaRS ends can be told apart from samples moving
off the teacher's manifold: a student whose row matches the teacher's at every t is as "on manifold"
as the teacher itself, and a gap at small t is the fine-grain texture the teacher would remove.
"""

from __future__ import annotations

import argparse

import torch

from dmdr_cli.data.prompts import read_prompts
from dmdr_cli.dmd.randomness import keyed_generator
from dmdr_cli.evaluate.generators import load_sampler, open_model

TIMES = (0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.95)
TEACHER = "teacher:sd:dmdr_cli/world/weights/teacher"


@torch.no_grad()
def denoising_errors(family, images: torch.Tensor, cond) -> list[float]:
    x0 = images * 2 - 1 if family.components.vae is None else None  # pixel-space world: [-1, 1]
    errors = []
    for t_value in TIMES:
        noise = torch.randn(x0.shape, generator=keyed_generator(0, "denoising-gap", int(t_value * 1000)))
        t = torch.full((x0.shape[0],), t_value)
        x_t = family.schedule.renoise(x0, t, noise)
        pred = family.forward(family.denoiser, x_t, t, cond)
        errors.append(float(torch.nn.functional.mse_loss(pred, family.schedule.target(x0, noise, t))))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = read_prompts("builtin:world-val")[: args.prompts]
    keys = [(i, 0) for i in range(len(prompts))]
    teacher = load_sampler(open_model(TEACHER), device=torch.device("cpu"), steps=25, cfg=2.0)
    family = teacher.family
    cond = family.encode_prompts(prompts)
    rows = {"teacher (50 NFE)": teacher}
    rows.update({path: load_sampler(open_model(path), device=torch.device("cpu")) for path in args.checkpoints})
    print("teacher eps-MSE at t = " + "  ".join(f"{t:5.2f}" for t in TIMES))
    for name, sampler in rows.items():
        images = sampler(prompts, keys, 0, family.resolution, family.resolution)
        print(f"{'':18s}" + "  ".join(f"{e:5.3f}" for e in denoising_errors(family, images, cond)) + f"   {name}")


if __name__ == "__main__":
    main()
