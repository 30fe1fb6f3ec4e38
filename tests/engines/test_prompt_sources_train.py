"""A recipe trains from a CSV column and from a local `datasets` dataset exactly as from the same prompts in a text
file; without data.cache_embeddings each batch is encoded when drawn, to the same result; --dry-run reports
repeats, empty rows and prompts longer than the text encoders see."""

from __future__ import annotations

import csv

import torch

from train_helpers import PROMPTS, ok, recipe, weights

LONG = "a red cat on the left of a blue dog above two green balls below three yellow cubes on a photo"


def quick(tmp_path, model, out, **data):
    return recipe(tmp_path, "sd", model, out, coldstart={"steps": 2, "dynadg": {"steps": 3}, "dynars": {"steps": 3}},
                  train={"steps": 2, "sample_every": 0, "checkpoint_every": 2}, data={"num_validation": 2, **data})


def test_csv_column_and_local_dataset_train_like_the_text_file(tiny_sd, tmp_path):
    import datasets

    table = tmp_path / "prompts.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "caption_en"])
        writer.writerows([[i, p] for i, p in enumerate(PROMPTS)] + [[99, "  "]])
    val = tmp_path / "val-dataset"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"caption_en": PROMPTS[:2]})}).save_to_disk(str(val))

    text = tmp_path / "text-run"
    ok("coldstart", quick(tmp_path, tiny_sd, text))
    from_table = tmp_path / "table-run"
    result = ok("coldstart", quick(tmp_path, tiny_sd, from_table, prompts=str(table), prompt_column="caption_en",
                                   validation_prompts=f"hf:{val}:test"))
    assert "4 prompts from prompt file" in result.output and "1 empty dropped" in result.output
    for name in ("generator", "fake"):
        a, b = weights(text, 2, name), weights(from_table, 2, name)
        assert all(torch.equal(a[k], b[k]) for k in a), "the same prompts in the same order: the same run"

    lazy = tmp_path / "lazy-run"  # the batch's prompts encoded when it is drawn, the encoders kept
    ok("coldstart", quick(tmp_path, tiny_sd, lazy, prompts=str(table), prompt_column="caption_en",
                          cache_embeddings=False))
    a, b = weights(text, 2, "generator"), weights(lazy, 2, "generator")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_dry_run_counts_repeats_empty_and_over_long_prompts(tiny_sd3, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(['{"prompt": "a red cat"}', '{"prompt": "a red cat"}', '{"prompt": null}',
                               f'{{"prompt": "{LONG}"}}', '{"prompt": "a red cat above a blue dog left of a cube"}']))
    result = ok("distill", recipe(tmp_path, "sd3", tiny_sd3, tmp_path / "run"), f"data.prompts={path}",
                "--dry-run")
    out = " ".join(result.output.split())
    assert "4 prompts from prompt file" in out and "5 rows, 1 repeats kept" in out and "1 empty dropped" in out
    # the tiny CLIPs see 16 tokens (BOS and EOS included), the recipe's T5 8 (max_text_tokens); the last prompt
    # is 13 CLIP and 12 T5 tokens
    assert "1 longer than the 16 tokens of tokenizer, tokenizer_2: truncated there" in out
    assert "2 longer than the 8 tokens of tokenizer_3: truncated there" in out
    assert not (tmp_path / "run").exists()
