"""Trained checkpoints for the export tests, each built once per session on demand, and an export helper."""

import pytest
from trained_students import STUDENTS, sd3_release_teacher, sdxl_ordered_teacher, train

# teachers derived from the session's tiny pipelines on first use: name -> (base fixture, builder)
DERIVED_TEACHERS = {
    "sdxl-ordered": ("sdxl", sdxl_ordered_teacher),
    "sd3-medium": ("sd3", lambda base, root: sd3_release_teacher(base, root, "sd3-medium")),
    "sd35-large": ("sd3", lambda base, root: sd3_release_teacher(base, root, "sd35-large", qk_norm="rms_norm")),
}


@pytest.fixture(scope="session")
def teachers(tiny_sd, tiny_sdxl, tiny_sd3, tiny_sd_pixel, tiny_flux, tmp_path_factory):
    folders = {"sd": tiny_sd, "sdxl": tiny_sdxl, "sd3": tiny_sd3, "world": tiny_sd_pixel, "flux": tiny_flux}

    def get(name):
        if name not in folders:
            base, build = DERIVED_TEACHERS[name]
            folders[name] = build(folders[base], tmp_path_factory.mktemp("teachers"))
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
