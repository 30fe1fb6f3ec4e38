"""Trained checkpoints for the export tests, each built once per session on demand, and an export helper."""

import pytest
from trained_students import sdxl_ordered_teacher, train

# name -> (family, teacher fixture, recipe fields); the LoRAs have alpha 12 != rank 4
STUDENTS = {
    "sd-full-sde": ("sd", "sd", dict(finetune="full")),
    "sd-lora-ode": ("sd", "sd", dict(finetune="lora", steps=2, sampler="ode")),
    "sdxl-lora-sde": ("sdxl", "sdxl", dict(finetune="lora")),
    "sdxl-full-1step": ("sdxl", "sdxl", dict(finetune="full", steps=1, timesteps=[0.399])),
    "sdxl-ordered-lora": ("sdxl", "sdxl-ordered", dict(finetune="lora")),
    "sd3-lora-ode": ("sd3", "sd3", dict(finetune="lora")),
    "sd3-lora-sde": ("sd3", "sd3", dict(finetune="lora", sampler="sde")),
    "sd3-full-ode": ("sd3", "sd3", dict(finetune="full", steps=2)),
    "sd-lora-sde": ("sd", "sd", dict(finetune="lora")),
    # the student told 2.5 through the guidance embedding: exports must pass it as guidance_scale
    "flux-lora-ode": ("flux", "flux", dict(finetune="lora", embedded_guidance=2.5)),
    "flux-lora-sde": ("flux", "flux", dict(finetune="lora", sampler="sde", steps=2)),
    "flux-full-ode": ("flux", "flux", dict(finetune="full", steps=2)),
}


@pytest.fixture(scope="session")
def teachers(tiny_sd, tiny_sdxl, tiny_sd3, tiny_flux, tmp_path_factory):
    folders = {"sd": tiny_sd, "sdxl": tiny_sdxl, "sd3": tiny_sd3, "flux": tiny_flux}

    def get(name):
        if name == "sdxl-ordered" and name not in folders:
            folders[name] = sdxl_ordered_teacher(tiny_sdxl, tmp_path_factory.mktemp("teachers"))
        return folders[name]

    return get


@pytest.fixture(scope="session")
def trained(teachers, tmp_path_factory):
    """trained(name) -> Trained (run folder + in-memory student); tests must not modify what they get."""
    cache = {}

    def get(name):
        if name not in cache:
            family, teacher, fields = STUDENTS[name]
            cache[name] = train(tmp_path_factory.mktemp(name) / "run", family, teachers(teacher), **fields)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def export(tmp_path_factory):
    """export(trained, fmt, **options) -> the --out folder, written through the engine `dmdr export` calls.

    Each distinct export is written once per session; tests read it and must not modify it."""
    from rich.console import Console

    from dmdr_cli.engines.export import run_export

    cache = {}

    def run(student, fmt, **options):
        key = (student.run, fmt, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("export") / fmt
            cache[key] = run_export(student.run, fmt=fmt, out=out, dtype=options.pop("dtype", "fp32"),
                                    console=Console(quiet=True), **options)
        return cache[key]

    return run
