"""`output.push` at the end of `dmdr distill`: refused before training without a token; with the Hub unreachable the
run trains, exports into RUN/export and stops with one line, not marked done (`--resume latest` retries the upload)."""

from __future__ import annotations

from train_helpers import invoke, recipe


def push_recipe(tmp_path, model, out):
    return recipe(tmp_path, "sd", model, out, coldstart={"steps": 0}, train={"steps": 1, "sample_every": 1},
                  output={"dir": str(out), "push": {"repo_id": "someone/tiny-student"}})


def test_no_token_is_refused_before_training(tiny_sd, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    run = tmp_path / "run"
    result = invoke("distill", push_recipe(tmp_path, tiny_sd, run))
    assert result.exit_code == 2 and "output.push.repo_id needs a Hugging Face token" in result.output
    assert not run.exists()


def test_unreachable_hub_at_the_end_keeps_the_run_and_its_export(tiny_sd, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", "hf_dmdrTestToken")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    run = tmp_path / "run"
    result = invoke("distill", push_recipe(tmp_path, tiny_sd, run))
    assert result.exit_code == 2, result.output
    assert "cannot reach the Hugging Face Hub to push someone/tiny-student" in " ".join(result.output.split())
    assert "hf_dmdrTestToken" not in result.output
    assert (run / "checkpoints" / "step-000001").is_dir() and not (run / "done.json").exists()
    card = (run / "export" / "README.md").read_text()
    assert card.startswith("---\n") and "widget:" in card and (run / "export" / "images" / "samples.png").is_file()
