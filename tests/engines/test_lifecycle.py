"""The whole lifecycle on a tiny family, through the CLI in-process: distill (cold start, then DMD + ReFL) ->
sample -> evaluate -> export in every format -> each export reloaded by diffusers. The exported pipeline, run as
its model card says from the same initial noise, draws the image `dmdr sample` drew from the run (ode student:
deterministic), within one 8-bit level; the LoRA files loaded with `load_lora_weights` and fused give the merged
weights of `--format safetensors`.

sd is the SD1.5 adapter (UNet, eps, one CLIP); flux the FLUX.1-dev one (guidance embedding, packed latents).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_evaluate import options_of, score_weights  # noqa: F401  (fixture)
from rewards.conftest import tiny_clip_tokenizer, tiny_hf_clip, tiny_open_clip, tiny_open_clip_arch  # noqa: F401
from train_helpers import ok, recipe

from dmdr_cli.dmd.randomness import keyed_generator
from dmdr_cli.export.formats import FORMATS

PROMPT, SEED = "a photo of a cat", 5
REWARD = {"name": "custom", "weight": 1.0, "loss": "linear", "options": {"function": "tiny_reward:redness"}}
WEIGHT_FILES = {"sd": "unet.safetensors", "flux": "transformer.safetensors"}


def card_pipeline(folder, latents):
    """The model card's Python block run as written (cuda -> cpu), its call given `latents`: (pipe, image)."""
    code = (folder / "README.md").read_text().split("```python\n")[1].split("\n```")[0]
    code = code.replace("path/to/this/folder", str(folder)).replace('"cuda"', '"cpu"')
    code = code.replace("image = pipe(prompt, ", "image = pipe(prompt, latents=LATENTS, ")
    namespace = {"LATENTS": latents}
    exec(code, namespace)
    return namespace["pipe"], namespace["image"]


def denoiser_weights(pipe) -> dict[str, torch.Tensor]:
    net = getattr(pipe, "transformer", None) or pipe.unet
    net.fuse_lora()
    net.unload_lora()
    return net.state_dict()


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_distill_sample_evaluate_export_reload(family, request, score_weights, tmp_path):  # noqa: F811
    folder, run = request.getfixturevalue(f"tiny_{family}"), tmp_path / "run"
    ok("distill", recipe(tmp_path, family, folder, run, student={"finetune": "lora", "sampler": "ode"},
                         coldstart={"steps": 1}, train={"steps": 2, "sample_every": 0},
                         rl={"algorithm": "refl", "rewards": [REWARD]}))

    samples = tmp_path / "samples"
    ok("sample", run, "--prompt", PROMPT, "--seed", SEED, "--out", samples)
    prompts = tmp_path / "eval-prompts.txt"
    prompts.write_text(PROMPT + "\n")
    ok("evaluate", "--model", run, "--bench", "scores", "--metrics", "hps", "--prompts", prompts, "--report",
       tmp_path / "report", *options_of(score_weights, "hps"))
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert (report["subject"]["kind"], report["subject"]["nfe"]) == ("student", 2)

    for fmt in FORMATS:
        ok("export", run, "--format", fmt, "--out", tmp_path / fmt, "--dtype", "fp32")

    # the diffusers folder draws dmdr sample's image from the same initial noise
    from dmdr_cli.evaluate.generators import load_sampler, open_model

    student_family = load_sampler(open_model(str(run)), device=torch.device("cpu")).family
    noise = student_family.noise(1, 16, 16, generator=keyed_generator(SEED, 0, 0))
    if family == "flux":
        from dmdr_cli.families.flux import pack

        noise = pack(noise)  # FluxPipeline takes its latents packed
    _, image = card_pipeline(tmp_path / "diffusers", noise)
    with Image.open(samples / "00000_00.png") as ours:
        diff = np.abs(np.asarray(ours.convert("RGB")).astype(int) - np.asarray(image).astype(int))
    assert diff.max() <= 1, diff.max()

    # the LoRA files, loaded by diffusers and fused, are the merged weights
    merged = load_file(tmp_path / "safetensors" / WEIGHT_FILES[family])
    lora_files = [("lora", None)] + ([("comfyui", "comfyui_lora.safetensors")] if family == "sd" else [])
    for fmt, weight_name in lora_files:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(folder)
        pipe.load_lora_weights(str(tmp_path / fmt), **({"weight_name": weight_name} if weight_name else {}))
        loaded = denoiser_weights(pipe)
        assert set(loaded) == set(merged)
        for key, value in merged.items():
            torch.testing.assert_close(loaded[key], value, atol=1e-6, rtol=0, msg=f"{fmt}: {key}")
