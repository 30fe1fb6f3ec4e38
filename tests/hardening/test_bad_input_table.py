"""docs/bad-input.md is executable: every row of its two tables is run in-process and must end as the row
says (exit 2; dmdr's one `error:` line, or the argument parser's usage box), leaving no file behind."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from string import Template

import pytest
import torch
import typer
from cli_output import error_line
from train_helpers import recipe
from typer.testing import CliRunner

from dmdr_cli.cli import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
ERRORS, PARSER = "first line the user sees", "message in the error box"
NO_INPUT = {"recipe reference"}  # commands that take nothing a user could get wrong


def read_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The markdown tables, keyed by their last column's title; each row as {column title: cell}."""
    tables, header = {}, None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
        elif header is None:
            header = _cells(line)
            rows = tables.setdefault(header[-1], [])
        elif not set(line) <= set("|-: "):
            rows.append(dict(zip(header, _cells(line))))
    return tables


def _cells(line: str) -> list[str]:
    """A row's cells: split at unescaped pipes, `\\|` unescaped, code spans (`x` or `` x ``) unwrapped."""
    out = []
    for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1]):
        cell = cell.strip().replace("\\|", "|")
        span = re.fullmatch(r"(`+) ?(.*?) ?\1", cell)
        out.append(span[2] if span else cell)
    return out


TABLES = read_tables(DOC.read_text(encoding="utf-8"))


def _id(row: dict) -> str:
    return f"{row['command']}: {row['bad input']}"


@pytest.fixture(scope="module")
def places(tiny_sd, exportable, tmp_path_factory) -> dict[str, str]:
    """The doc's placeholders, with the files it says $TMP holds."""
    tmp = tmp_path_factory.mktemp("bad-input")
    recipe(tmp, "sd", tiny_sd, tmp / "run").rename(tmp / "recipe.yaml")
    files = {"not_yaml.yaml": "model: [unclosed\n", "empty.yaml": "", "list.yaml": "- a\n- b\n",
             "tag.yaml": "model: !!python/object/apply:os.system ['echo hi']\n",
             "loop.yaml": "model: &m {family: sd, pretrained: x, again: *m}\n",
             "deep.yaml": "model: " + "[" * 1000 + "]" * 1000 + "\n", "blank.txt": "\n  \n", "p.txt": "a cat\n",
             "weights.txt": "x", "garbage.pt": "not a pickle at all",
             "garbage.safetensors": "not safetensors either", "file.txt": "x", "nonempty/f": "x"}
    for name, text in files.items():
        (tmp / name).parent.mkdir(exist_ok=True)
        (tmp / name).write_text(text)
    (tmp / "images").mkdir()  # one image: rows with this folder fail on their own flag, not on an empty folder
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp / "images" / "0.png")
    (tmp / "no-images").mkdir()
    ckpt = exportable / "checkpoints" / "step-000120"
    for name in ("norecipe", "badstate", "badweights"):
        shutil.copytree(ckpt, tmp / name)
    (tmp / "norecipe" / "recipe.yaml").unlink()
    (tmp / "badstate" / "state.json").write_text("{oops")
    (tmp / "badweights" / "generator.safetensors").write_bytes(b"\x01" * 40)
    _user_mistakes(tmp, ckpt)
    return {"TMP": str(tmp), "RECIPE": str(tmp / "recipe.yaml"), "TEACHER": str(tiny_sd), "RUN": str(exportable),
            "CKPT": str(ckpt)}


def _user_mistakes(tmp: Path, ckpt: Path) -> None:
    """The files of the rows for what users actually do (issue 15): unreadable and malformed inputs, damaged
    checkpoints, a checkpoint of the table's own recipe to resume with changed keys, broken sample folders."""
    import json

    from PIL import Image
    from safetensors.torch import load_file, save_file

    from dmdr_cli.recipe import load_recipe, to_yaml

    (tmp / "bin.txt").write_bytes(b"\xff\xfe\x00 not text")
    (tmp / "table.csv").write_text("id,alt\n1,a cat\n")
    (tmp / "a-folder").mkdir()
    recipe_text = (tmp / "recipe.yaml").read_text()
    (tmp / "dup.yaml").write_text(recipe_text + "train:\n  steps: 5\n")  # a second train: section at the end
    (tmp / "dupkey.yaml").write_text("model:\n  family: sd\n  pretrained: x\n  family: sdxl\n")
    teacher = Path(load_recipe(tmp / "recipe.yaml").model.pretrained)
    (tmp / "badteacher").mkdir()
    (tmp / "badteacher" / "model_index.json").write_text("{oops")
    (tmp / "listteacher").mkdir()
    (tmp / "listteacher" / "model_index.json").write_text("[1, 2]")
    shutil.copytree(teacher, tmp / "cutteacher")
    weights = next((tmp / "cutteacher" / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    # a checkpoint of $RECIPE itself (its recipe.yaml), for --resume with changed keys
    same = tmp / "same" / "checkpoints" / ckpt.name
    shutil.copytree(ckpt, same)
    (same / "recipe.yaml").write_text(to_yaml(load_recipe(tmp / "recipe.yaml")))
    (same.parent / "latest").write_text(ckpt.name + "\n")
    reshaped = tmp / "reshaped"  # $RECIPE's checkpoint with one generator tensor of another shape
    shutil.copytree(same, reshaped)
    tensors = load_file(str(reshaped / "generator.safetensors"))
    tensors["conv_in.weight"] = torch.zeros(tensors["conv_in.weight"].shape[0], 3, 3, 3)
    save_file(tensors, str(reshaped / "generator.safetensors"))
    for name in ("emptystate", "liststate", "nofake", "int64", "truncated"):
        shutil.copytree(ckpt, tmp / name)
    (tmp / "emptystate" / "state.json").write_text("{}")
    (tmp / "liststate" / "state.json").write_text("[1, 2]")
    (tmp / "nofake" / "fake.safetensors").unlink()
    weights = load_file(str(ckpt / "generator.safetensors"))
    save_file({k: v.to(torch.int64) for k, v in weights.items()}, str(tmp / "int64" / "generator.safetensors"))
    data = (ckpt / "generator.safetensors").read_bytes()
    (tmp / "truncated" / "generator.safetensors").write_bytes(data[: len(data) // 2])
    # sample folders as `dmdr sample` writes them, each broken one way
    row = {"file": "0.png", "prompt": "a cat", "seed": 0, "steps": 2, "nfe": 2, "model": "m"}
    for name in ("badjsonl", "listjsonl", "corruptpng", "emptypng", "missingpng", "nofile"):
        folder = tmp / "samples" / name
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / "0.png")
        (folder / "samples.jsonl").write_text(json.dumps(row) + "\n")
    (tmp / "samples" / "badjsonl" / "samples.jsonl").write_text(json.dumps(row) + "\n{not json\n")
    (tmp / "samples" / "listjsonl" / "samples.jsonl").write_text("[1, 2]\n")
    (tmp / "samples" / "corruptpng" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp / "samples" / "emptypng" / "0.png").write_bytes(b"")
    (tmp / "samples" / "missingpng" / "samples.jsonl").write_text(json.dumps({**row, "file": "1.png"}) + "\n")
    (tmp / "samples" / "nofile" / "samples.jsonl").write_text(json.dumps({"prompt": "a cat"}) + "\n")
    (tmp / "samples" / "settingslist").mkdir()
    (tmp / "samples" / "settingslist" / "sample_settings.json").write_text("[1, 2]")
    for name, text in (("badreport", "{oops"), ("listreport", '{"benches": [1]}')):
        (tmp / "reports" / name).mkdir(parents=True)
        (tmp / "reports" / name / "report.json").write_text(text)


def run_row(row: dict, places: dict[str, str]):
    argv = [Template(token).substitute(places) for token in shlex.split(row["arguments"])]
    before = _files(places)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}{result.exception!r}"
    assert _files(places) == before, "a refused command leaves nothing behind"
    return result


def _files(places) -> list[str]:
    return sorted(str(p) for root in (places["TMP"], places["RUN"]) for p in Path(root).rglob("*"))


@pytest.mark.parametrize("row", TABLES[ERRORS], ids=_id)
def test_error_line(row, places):
    line = error_line(run_row(row, places))
    expected = Template(row[ERRORS]).substitute(places)
    if expected.endswith("..."):  # the rest of the line is a library's wording
        assert line.startswith(expected[:-3]), line
    else:
        assert line == expected


@pytest.mark.parametrize("row", TABLES[PARSER], ids=_id)
def test_usage_box(row, places):
    result = run_row(row, places)
    assert result.stderr.startswith("Usage: dmdr"), result.stderr
    box = " ".join(line.strip("│ ") for line in result.stderr.splitlines() if line.startswith("│"))
    assert Template(row[PARSER]).substitute(places) in " ".join(box.split())


def test_every_command_has_rows():
    def names(group, prefix=""):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from names(command, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}"

    covered = {row["command"] for table in (ERRORS, PARSER) for row in TABLES[table]}
    missing = set(names(typer.main.get_command(app))) - covered - NO_INPUT
    assert not missing, f"commands without a row in {DOC.name}: {sorted(missing)}"
    assert len(TABLES[ERRORS]) >= 60, "the parser found the table"
