"""`dmdr export --push-to-hub`: the model card's Hub metadata read back with huggingface_hub's own parser, the upload
plan checked field by field, and every failure (no token, offline, unreachable, a repo the token cannot write)
for real against the library: one line, exit 2, the export intact, the token never shown. The real Hub cannot
be reached here, so a successful upload is not exercised."""

from __future__ import annotations

import dataclasses
import http.server
import shutil
import threading

import pytest
from PIL import Image
from typer.testing import CliRunner

from dmdr_cli.cli import app
from dmdr_cli.engines.export import run_export
from dmdr_cli.export import hub
from dmdr_cli.export.student import Student

SECRET = "hf_dmdrTestTokenThatMustNeverBePrinted"


@pytest.fixture
def run_with_grid(trained, tmp_path):
    """A copy of a trained LoRA run whose base model folder carries a model card with a licence, and which has
    sample grids as training leaves them."""
    student = trained("sdxl-lora-sde")
    teacher = shutil.copytree(student.recipe.model.pretrained, tmp_path / "teacher")
    (teacher / "README.md").write_text("---\nlicense: openrail++\ntags:\n- x\n---\n# base\n")
    run = shutil.copytree(student.run, tmp_path / "run")
    for recipe in run.rglob("recipe.yaml"):
        recipe.write_text(recipe.read_text().replace(str(student.recipe.model.pretrained), str(teacher)))
    (run / "samples").mkdir()
    for step, colour in ((60, "red"), (120, "blue")):
        Image.new("RGB", (32, 16), colour).save(run / "samples" / f"step-{step:06d}.png")
    (run / "samples" / "prompts.txt").write_text("a blue cube on a red ball\na cat\n")
    return student, run


def test_card_metadata_and_upload_plan(run_with_grid, tmp_path):
    from huggingface_hub import CommitOperationAdd, ModelCard

    student, run = run_with_grid
    out = run_export(run, fmt="lora", out=tmp_path / "out")
    card = ModelCard.load(out / "README.md")  # the Hub's own parser
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "text-to-image"
    assert data["tags"] == ["text-to-image", "diffusers", "stable-diffusion-xl", "stable-diffusion-xl-diffusers",
                            "dmdr", "distillation", "diffusers-training", "lora"]
    assert data["license"] == "openrail++", "inherited from the base model's own card"
    assert "base_model" not in data, "a local base folder is no Hub id"
    assert data["widget"] == [{"text": "a blue cube on a red ball", "output": {"url": "images/samples.png"}}]
    assert Image.open(out / "images" / "samples.png").getpixel((0, 0)) == (0, 0, 255), "the last grid"
    assert "![the run's last sample grid](images/samples.png)" in card.text
    for section in ("## diffusers", "pipe.load_lora_weights", "## ComfyUI", "## Recipe", "lora_alpha: 12.0"):
        assert section in card.text, section

    plan = hub.upload_plan(out, "someone/sdxl-4step", private=True,
                           commit_message=hub.export_commit_message(hub_source(run), "lora"))
    assert (plan.repo_id, plan.repo_type, plan.private) == ("someone/sdxl-4step", "model", True)
    assert plan.commit_message == "dmdr export: lora, generator step 120"
    assert [name for name, _ in plan.files] == ["README.md", "images/samples.png", "pytorch_lora_weights.safetensors"]
    ops = plan.operations()
    assert all(isinstance(op, CommitOperationAdd) for op in ops)
    assert [(op.path_in_repo, op.path_or_fileobj) for op in ops] == [(n, str(p)) for n, p in plan.files]
    assert [p.read_bytes() for _, p in plan.files] == [(out / n).read_bytes() for n, _ in plan.files]


def hub_source(run):
    from dmdr_cli.export.source import open_checkpoint

    return open_checkpoint(run)


@pytest.mark.parametrize("pretrained, license_, relation", [
    ("stabilityai/stable-diffusion-xl-base-1.0", ("openrail++", None, None), "adapter"),
    ("stabilityai/stable-diffusion-3.5-large", ("other", "stabilityai-ai-community",
                                               "https://huggingface.co/stabilityai/stable-diffusion-3.5-large/blob/"
                                               "main/LICENSE.md"), "finetune"),
    ("someone/unknown-model", None, "adapter"),
])
def test_hub_base_models_name_their_licence(trained, pretrained, license_, relation):
    base = trained("sdxl-lora-sde")
    recipe = base.recipe.model_copy(update={"model": base.recipe.model.model_copy(update={"pretrained": pretrained})})
    source = dataclasses.replace(hub_source(base.run), recipe=recipe)
    student = Student(source=source, family=base.family, denoiser=base.student, merged=relation == "finetune",
                      adapter=None)
    meta = hub.card_metadata(student, "safetensors", None)
    assert meta["base_model"] == pretrained and meta["base_model_relation"] == relation
    assert (meta.get("license"), meta.get("license_name"), meta.get("license_link")) == (license_ or (None,) * 3)
    assert "widget" not in meta


class Forbidden(http.server.BaseHTTPRequestHandler):
    """The Hub's answer to a token that cannot write to a namespace."""

    def do_POST(self):
        body = b'{"error": "You don\'t have the rights to create a model under the namespace \\"someone\\""}'
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def forbidding_hub():
    server = http.server.HTTPServer(("127.0.0.1", 0), Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("case", ["no token", "offline", "unreachable", "forbidden"])
def test_push_failures_are_one_line_and_keep_the_export(case, trained, tmp_path, monkeypatch, request):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    if case == "no token":
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", SECRET)
    if case in ("unreachable", "forbidden"):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        endpoint = request.getfixturevalue("forbidding_hub") if case == "forbidden" else "http://127.0.0.1:9"
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(trained("sd3-lora-ode").run), "--format", "lora", "--out",
                                      str(out), "--push-to-hub", "someone/sd3-4step"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    expected = {"no token": "no Hugging Face token to push someone/sd3-4step with: run `hf auth login`",
                "offline": "the Hub is offline here (HF_HUB_OFFLINE=1)",
                "unreachable": "cannot reach the Hugging Face Hub to push someone/sd3-4step (ConnectError",
                "forbidden": "the token cannot write to someone/sd3-4step (403: "}[case]
    assert expected in " ".join(result.output.split())
    assert f"upload it with `hf upload someone/sd3-4step {out}`" in " ".join(result.output.split())
    assert SECRET not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "pytorch_lora_weights.safetensors"]


def test_a_bad_repo_id_is_refused_before_exporting(trained, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(trained("sd3-lora-ode").run), "--format", "lora", "--out",
                                      str(out), "--push-to-hub", "no namespace"])
    assert result.exit_code == 2 and "is not a Hub repo id" in result.output and not out.exists()

