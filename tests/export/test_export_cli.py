"""`dmdr export` through the CLI (Typer's CliRunner, in-process): refusals are one line with exit code 2 and leave
nothing behind; a failed write leaves nothing."""

import pytest
from typer.testing import CliRunner

from dmdr_cli.cli import app
from dmdr_cli.errors import DmdrError


def dmdr(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result, result.output


def leftovers(folder):
    """Staging / replaced folders an export may create beside --out."""
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".replaced-" in p.name]


def assert_refused(result, output, *phrases):
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    for phrase in phrases:
        assert phrase in " ".join(output.split()), output


def test_exports_through_the_cli(trained, tmp_path):
    student = trained("sd3-lora-ode")
    result, output = dmdr("export", student.run / "checkpoints" / "latest", "--format", "lora", "--out",
                          tmp_path / "exports" / "sd3", "--dtype", "fp32")
    assert result.exit_code == 0, output
    assert sorted(p.name for p in (tmp_path / "exports" / "sd3").iterdir()) == \
           ["README.md", "pytorch_lora_weights.safetensors"]
    assert leftovers(tmp_path / "exports") == []


def test_unknown_format_is_refused_by_the_choice(trained, tmp_path):
    result, output = dmdr("export", trained("sd-full-sde").run, "--format", "onnx", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "onnx" in output
    assert not (tmp_path / "out").exists()


def test_a_run_without_checkpoint_is_refused(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    result, output = dmdr("export", tmp_path / "run", "--format", "safetensors", "--out", tmp_path / "out")
    assert_refused(result, output, "has no complete checkpoint")
    assert not (tmp_path / "out").exists()


PIXEL_SPACE = "is a pixel-space model (no VAE): single-file checkpoints and ComfyUI hold latent-diffusion models; " \
              "use --format diffusers (a folder with its own pixel-space pipeline) or safetensors (LoRAs: lora too)"


@pytest.mark.parametrize("name, options, phrase", [
    ("sd-full-sde", ["--format", "lora"], "holds a full fine-tune of the denoiser, not a LoRA"),
    ("sd-lora-ode", ["--format", "diffusers", "--no-merge-lora"], "needs the full denoiser weights"),
    ("sd-lora-ode", ["--format", "single-file", "--no-merge-lora"], "a single-file checkpoint needs the full denoiser"),
    ("sd-full-sde", ["--format", "comfyui", "--no-merge-lora"], "nothing to keep unmerged"),
    ("sd-lora-ode", ["--format", "lora", "--merge-lora"], "--merge-lora does not apply to --format lora"),
    ("sd-full-sde", ["--format", "safetensors", "--reference-components"], "apply to --format diffusers only"),
    ("sd-full-sde", ["--format", "safetensors", "--denoiser-only"], "--denoiser-only applies to single-file"),
    ("sdxl-lora-sde", ["--format", "comfyui", "--denoiser-only"], "--denoiser-only applies to single-file"),
    ("world-full-sde", ["--format", "single-file"], PIXEL_SPACE),
    ("world-full-sde", ["--format", "comfyui"], PIXEL_SPACE),
    ("world-lora-ode", ["--format", "comfyui"], PIXEL_SPACE),
])
def test_a_format_the_generator_or_family_cannot_give_is_refused(trained, tmp_path, name, options, phrase):
    result, output = dmdr("export", trained(name).run, *options, "--out", tmp_path / "out")
    assert_refused(result, output, phrase)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_an_occupied_out_is_refused_unless_overwrite(trained, tmp_path):
    run = trained("sd-full-sde").run
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result, output = dmdr("export", run, "--format", "safetensors", "--out", out)
    assert_refused(result, output, "exists and is not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]

    result, output = dmdr("export", run, "--format", "safetensors", "--out", out, "--overwrite")
    assert result.exit_code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "unet.safetensors"]
    assert leftovers(tmp_path) == []


def test_out_overlapping_the_checkpoint_is_refused_even_with_overwrite(trained):
    run = trained("sd-full-sde").run
    result, output = dmdr("export", run, "--format", "safetensors", "--out", run, "--overwrite")
    assert_refused(result, output, "overlaps")
    assert (run / "checkpoints" / "latest").is_file()


def test_a_failure_while_writing_leaves_nothing(trained, tmp_path, monkeypatch):
    import dmdr_cli.engines.export as engine

    def broken_writer(folder, student, dtype):
        (folder / "half.safetensors").write_bytes(b"\0" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine, "write_safetensors", broken_writer)
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(DmdrError, match="No space left on device"):
        engine.run_export(trained("sd-full-sde").run, fmt="safetensors", out=out)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["..", "../unet", "a/b", ""])
def test_names_read_from_model_files_cannot_lead_outside_out(tmp_path, name):
    """Component names come from the teacher's model_index.json: one like "../x" must not escape the export."""
    from dmdr_cli.export.output import inside

    with pytest.raises(DmdrError, match="outside the export folder"):
        inside(tmp_path, name)
    assert inside(tmp_path, "text_encoder_2") == tmp_path / "text_encoder_2"
