"""Where prompts live, read one row at a time.

A prompt spec is a built-in set (`builtin:NAME`), a Hugging Face dataset (`hf:REPO[:SPLIT]`: a hub id read
through the `datasets` library and its cache, or a folder written by `save_to_disk` / holding data files), or
a file: `.csv`, `.tsv`, `.jsonl` / `.ndjson` and `.parquet` hold a column of prompts, anything else is text with
one prompt per line. Every reader yields rows lazily (a file is never read whole, a dataset's Arrow files are
memory-mapped by `datasets`), so a million-prompt file costs its prompts and not a copy of the file.
A row that is missing or null is yielded as None (an empty prompt, counted by the caller).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ..errors import DmdrError
from ..runtime.files import open_binary, reason

TABLES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# the column read when none is named: the names the diffusers training scripts and prompt sets use
DEFAULT_COLUMNS = ("prompt", "text", "caption")
_BATCH = 4096
FIX = "give a text file with one prompt per line, or a CSV / TSV / JSONL / Parquet file with a prompt column"


@dataclass
class PromptRows:
    label: str  # how messages name the source: "prompt file 'p.csv' (column 'prompt')"
    rows: Iterator[Optional[str]]


def missing_extra(package: str, extra: str, feature: str) -> DmdrError:
    return DmdrError(f"{feature} needs the {package} package, which is not installed: pip install 'dmdr[{extra}]'")


def choose_column(columns: list[str], column: str | None, label: str) -> str:
    """The named column, or the first of DEFAULT_COLUMNS present, or the only column there is."""
    if column is not None:
        if column not in columns:
            raise DmdrError(f"{label} has no column {column!r} (its columns: {', '.join(columns) or 'none'}): "
                            f"set data.prompt_column to one of them")
        return column
    found = [c for c in DEFAULT_COLUMNS if c in columns]
    if found:
        return found[0]
    if len(columns) == 1:
        return columns[0]
    raise DmdrError(f"{label} has no column named {' / '.join(DEFAULT_COLUMNS)} (its columns: "
                    f"{', '.join(columns) or 'none'}): name the prompt column with data.prompt_column=NAME")


def open_rows(spec: str, column: str | None = None) -> PromptRows:
    """The rows of a prompt spec that is a file or an `hf:` dataset (built-in sets are read by prompts.py)."""
    if spec.startswith("hf:"):
        return _dataset_rows(spec[3:], column)
    path = Path(spec).expanduser()
    kind = TABLES.get(path.suffix.lower())
    what = f"prompt file {spec!r}"
    f = open_binary(path, what, FIX)  # one line if it is missing, a folder or unreadable
    if kind is None:
        return PromptRows(what, _text_rows(f, what))
    if kind == "parquet":
        f.close()
        return _parquet_rows(path, column, what)
    if kind == "jsonl":
        return _jsonl_rows(f, column, what)
    return _csv_rows(f, column, what, "\t" if kind == "tsv" else ",")


def _decode(raw: bytes, what: str, line: int) -> str:
    try:
        return raw.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError:
        raise DmdrError(f"{what} is not UTF-8 text (undecodable byte at line {line}): re-save it as UTF-8") from None


def _lines(f, what: str) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) of a binary file, closing it at the end; read errors are one line."""
    with f:
        number = 0
        while True:
            try:
                raw = f.readline()
            except OSError as err:
                raise DmdrError(f"{what} cannot be read ({reason(err)}): {FIX}") from None
            if not raw:
                return
            number += 1
            yield number, _decode(raw, what, number)


def _text_rows(f, what: str) -> Iterator[str]:
    for _, line in _lines(f, what):
        yield line


def _csv_rows(f, column: str | None, what: str, delimiter: str) -> PromptRows:
    lines = _lines(f, what)
    reader = csv.reader((line for _, line in lines), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DmdrError(f"{what} is empty: write a header row naming the prompt column, then one row per "
                        f"prompt") from None
    except csv.Error as err:
        raise DmdrError(f"{what}: its header row is not valid CSV ({err})") from None
    name = choose_column([h.strip() for h in header], column, what)
    index = [h.strip() for h in header].index(name)

    def rows():
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DmdrError(f"{what} line {reader.line_num} is not valid CSV ({err}): fix the quoting") from None
            yield row[index] if index < len(row) else None

    return PromptRows(f"{what} (column {name!r})", rows())


def _jsonl_rows(f, column: str | None, what: str) -> PromptRows:
    lines = _lines(f, what)

    def objects():
        for number, line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as err:
                raise DmdrError(f"{what} line {number} is not valid JSON ({reason(err)}): one object per "
                                f"line") from None
            if not isinstance(row, dict):
                raise DmdrError(f"{what} line {number} is not a JSON object: one object per line, such as "
                                f'{{"prompt": "a red circle"}}')
            yield number, row

    stream = objects()
    first = next(stream, None)
    if first is None:
        raise DmdrError(f"{what} has no prompts (it is empty or blank lines only): write one JSON object per line")
    name = choose_column(list(first[1]), column, what)

    def rows():
        yield _text_value(first[1].get(name), what, f"line {first[0]}")
        for number, row in stream:
            yield _text_value(row.get(name), what, f"line {number}")

    return PromptRows(f"{what} (column {name!r})", rows())


def _text_value(value, what: str, where: str) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    raise DmdrError(f"{what} {where}: the prompt is {type(value).__name__} {value!r}, not text: prompts must be "
                    f"strings")


def _check_string_column(kind, name: str, what: str) -> None:
    import pyarrow as pa

    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)):
        raise DmdrError(f"{what}: column {name!r} holds {kind}, not text: set data.prompt_column to the column of "
                        f"prompts")


def _parquet_rows(path: Path, column: str | None, what: str) -> PromptRows:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise missing_extra("pyarrow", "datasets", "a Parquet prompt file") from None
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DmdrError(f"{what} is not a readable Parquet file ({reason(err)}): check the file") from None
    name = choose_column(list(parquet.schema_arrow.names), column, what)
    _check_string_column(parquet.schema_arrow.field(name).type, name, what)

    def rows():
        try:
            for batch in parquet.iter_batches(batch_size=_BATCH, columns=[name]):
                yield from batch.column(0).to_pylist()
        except (OSError, ValueError) as err:
            raise DmdrError(f"{what} cannot be read ({reason(err)}): the file is damaged") from None

    return PromptRows(f"{what} (column {name!r})", rows())


def parse_dataset_spec(spec: str) -> tuple[str, str | None]:
    """`REPO[:SPLIT]` -> (repo or folder, split or None); a split may carry a slice, `train[:1000]`."""
    repo, sep, split = spec.partition(":")
    if not repo:
        raise DmdrError("hf: needs a dataset: hf:USER/NAME, hf:USER/NAME:SPLIT or hf:FOLDER")
    return repo, (split or None) if sep else None


def load_dataset_split(spec: str):
    """A `datasets.Dataset`: a `save_to_disk` folder read with `load_from_disk`, anything else with `load_dataset`
    (a hub id from the library's cache, offline when HF_HUB_OFFLINE=1; a folder of data files)."""
    try:
        import datasets
    except ImportError:
        raise missing_extra("datasets", "datasets", "an hf: prompt set") from None
    repo, split = parse_dataset_spec(spec)
    label = f"dataset hf:{spec}"
    folder = Path(repo).expanduser()
    try:
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            data = datasets.load_from_disk(str(folder))
            if isinstance(data, datasets.DatasetDict):
                split = split or ("train" if "train" in data else None)
                if split not in data:
                    raise DmdrError(f"{label}: choose a split with hf:{repo}:SPLIT (it has {', '.join(data)})")
                return data[split]
            return data
        return datasets.load_dataset(str(folder) if folder.is_dir() else repo, split=split or "train")
    except DmdrError:
        raise
    except ConnectionError as err:  # offline, or the Hub unreachable, and no cached copy
        raise DmdrError(f"{label} is not in the datasets cache and the Hugging Face Hub cannot be reached "
                        f"({_first_line(err)}): load it once online, or point hf: at a local copy") from None
    except Exception as err:  # datasets raises many types (DatasetNotFoundError, ValueError: unknown split, ...)
        if type(err).__module__.startswith(("datasets", "huggingface_hub", "pyarrow")) or isinstance(
                err, (OSError, ValueError, KeyError)):
            raise DmdrError(f"{label} cannot be loaded: {_first_line(err)}") from None
        raise


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _dataset_rows(spec: str, column: str | None) -> PromptRows:
    data = load_dataset_split(spec)
    what = f"dataset hf:{spec}"
    name = choose_column(list(data.column_names), column, what)
    feature = data.features[name]
    dtype = getattr(feature, "dtype", None)
    if dtype not in ("string", "large_string", "string_view", "null"):
        raise DmdrError(f"{what}: column {name!r} holds {feature}, not text: set data.prompt_column to the column "
                        f"of prompts")
    table = data.select_columns([name])

    def rows():  # batches of the memory-mapped Arrow table, never the whole column as a list
        for batch in table.iter(batch_size=_BATCH):
            yield from batch[name]

    return PromptRows(f"{what} (column {name!r})", rows())

