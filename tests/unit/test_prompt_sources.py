"""Prompts from tables and datasets: CSV, TSV, JSONL, Parquet columns and Hugging Face datasets written with the
real libraries (csv, pyarrow, datasets), repeats and empty rows counted, bounded memory on a large file."""

from __future__ import annotations

import csv
import json
import os
import tracemalloc

import pytest

from dmdr_cli.data.prompts import read_prompts
from dmdr_cli.errors import DmdrError

ROWS = [{"id": 1, "prompt": "a red circle, big", "score": 0.5},
        {"id": 2, "prompt": "two blue squares\nside by side", "score": 0.1},  # quoted newline
        {"id": 3, "prompt": "", "score": 0.2},
        {"id": 4, "prompt": "a red circle, big", "score": 0.3},
        {"id": 5, "prompt": "  a cat  ", "score": 0.9}]
KEPT = ["a red circle, big", "two blue squares\nside by side", "a red circle, big", "a cat"]


def write_table(path, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "parquet"])
def test_a_prompt_column_of_each_table_format(suffix, tmp_path):
    path = tmp_path / f"prompts.{suffix}"
    if suffix in ("csv", "tsv"):
        write_table(path, ROWS, "," if suffix == "csv" else "\t")
    elif suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    prompts = read_prompts(str(path))  # the column named "prompt" is found without being named
    assert list(prompts) == KEPT
    assert (prompts.rows, prompts.empty, prompts.duplicates) == (5, 1, 1)
    assert "column 'prompt'" in prompts.summary() and "1 repeats kept" in prompts.summary()
    deduplicated = read_prompts(str(path), deduplicate=True)
    assert list(deduplicated) == ["a red circle, big", "two blue squares\nside by side", "a cat"]
    assert "1 repeats dropped" in deduplicated.summary() and "1 empty dropped" in deduplicated.summary()


def test_a_named_column_and_the_errors_of_a_wrong_one(tmp_path):
    path = write_table(tmp_path / "captions.csv", [{"caption": "a dog", "alt": "a cat"}])
    assert list(read_prompts(str(path), "alt")) == ["a cat"]
    assert list(read_prompts(str(path))) == ["a dog"]  # 'caption' is one of the default names
    with pytest.raises(DmdrError, match=r"has no column 'prompt' \(its columns: caption, alt\)"):
        read_prompts(str(path), "prompt")
    two = write_table(tmp_path / "two.csv", [{"a": "x", "b": "y"}])
    with pytest.raises(DmdrError, match="name the prompt column with data.prompt_column=NAME"):
        read_prompts(str(two))


def test_bad_tables_are_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    numbers = tmp_path / "n.parquet"
    pq.write_table(pa.table({"prompt": [1, 2]}), numbers)
    with pytest.raises(DmdrError, match="column 'prompt' holds int64, not text"):
        read_prompts(str(numbers))
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(DmdrError, match="line 2 is not valid JSON"):
        read_prompts(str(broken))
    latin = tmp_path / "l.csv"
    latin.write_bytes("prompt\nok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DmdrError, match=r"not UTF-8 text \(undecodable byte at line 3\)"):
        read_prompts(str(latin))
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("prompt\n")
    with pytest.raises(DmdrError, match="is not a readable Parquet file"):
        read_prompts(str(not_parquet))
    blank = write_table(tmp_path / "blank.csv", [{"prompt": " "}, {"prompt": ""}])
    with pytest.raises(DmdrError, match="has no prompts"):
        read_prompts(str(blank))


def fill_datasets_cache(repo_id: str, parquet_file) -> None:
    """What an online `load_dataset(repo_id)` leaves in the datasets cache (its "default" config prepared as Arrow),
    made with the library's own Parquet builder: the Hub itself cannot be reached here."""
    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    namespace, name = repo_id.split("/")
    builder = Parquet(dataset_name=name, data_files={"train": [str(parquet_file)]}, hash="0" * 16)
    builder.download_and_prepare()
    root = datasets.config.HF_DATASETS_CACHE
    prepared = os.path.join(root, name)
    os.makedirs(os.path.join(root, f"{namespace}___{name}"))
    os.rename(os.path.join(prepared, os.listdir(prepared)[0]), os.path.join(root, f"{namespace}___{name}", "default"))


def test_hugging_face_datasets_local_and_from_the_cache_offline(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    table = datasets.Dataset.from_dict({"text": ["a red circle", None, "a cat", "a cat"], "n": [1, 2, 3, 4]})
    datasets.DatasetDict({"train": table, "validation": table.select([2])}).save_to_disk(str(tmp_path / "saved"))
    train = read_prompts(f"hf:{tmp_path / 'saved'}")  # a save_to_disk folder: its train split, column 'text'
    assert list(train) == ["a red circle", "a cat", "a cat"] and (train.empty, train.duplicates) == (1, 1)
    assert list(read_prompts(f"hf:{tmp_path / 'saved'}:validation")) == ["a cat"]
    with pytest.raises(DmdrError, match="choose a split with .*it has train, validation"):
        read_prompts(f"hf:{tmp_path / 'saved'}:test")
    with pytest.raises(DmdrError, match="column 'n' holds .*int64.*, not text"):
        read_prompts(f"hf:{tmp_path / 'saved'}", "n")

    table.to_parquet(str(tmp_path / "prompts.parquet"))
    fill_datasets_cache("someone/prompts", tmp_path / "prompts.parquet")
    cached = read_prompts("hf:someone/prompts:train[:3]")  # a hub id, offline, from the library's cache
    assert list(cached) == ["a red circle", "a cat"] and cached.rows == 3
    with pytest.raises(DmdrError, match="hf:nobody/nothing is not in the datasets cache and the Hugging Face Hub "
                                        "cannot be reached"):
        read_prompts("hf:nobody/nothing")


def test_a_large_file_streams_into_a_compact_set(tmp_path):
    n = 200_000
    path = tmp_path / "big.txt"
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"a photo of object number {i % (n // 2):07d} on a table\n")  # every prompt twice
    tracemalloc.start()
    whole = [line.strip() for line in path.read_bytes().decode().splitlines()]  # reading it whole
    whole_kept, whole_peak = tracemalloc.get_traced_memory()
    del whole
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    prompts = read_prompts(str(path), deduplicate=True)
    kept, peak = (m - base for m in tracemalloc.get_traced_memory())
    tracemalloc.stop()
    assert len(prompts) == n // 2 and prompts.duplicates == n // 2
    assert prompts[12345] == "a photo of object number 0012345 on a table"
    assert list(prompts[-2:]) == [f"a photo of object number {i:07d} on a table" for i in (n // 2 - 2, n // 2 - 1)]
    # what stays for the run: the kept text once and an 8-byte offset per prompt, not a Python string per row
    assert kept < 0.3 * whole_kept, (kept, whole_kept)
    assert peak < 0.7 * whole_peak, (peak, whole_peak)
