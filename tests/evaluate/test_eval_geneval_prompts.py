import json
import re

import pytest

from dmdr_cli.errors import DmdrError
from dmdr_cli.evaluate.geneval_prompts import (
    CLASSES, COLORS, TASK_COUNTS, generate_geneval_metadata, geneval_prompt_set, load_geneval_metadata, plural,
    with_article,
)

TEMPLATES = {
    "single_object": r"a photo of an? [a-z ]+",
    "two_object": r"a photo of an? [a-z ]+ and an? [a-z ]+",
    "counting": r"a photo of (two|three|four) [a-z ]+",
    "colors": rf"a photo of an? ({'|'.join(COLORS)}) [a-z ]+",
    "position": r"a photo of an? [a-z ]+ (left of|right of|above|below) an? [a-z ]+",
    "color_attr": rf"a photo of an? ({'|'.join(COLORS)}) [a-z ]+ and an? ({'|'.join(COLORS)}) [a-z ]+",
}


@pytest.fixture(scope="module")
def official_seed():
    return generate_geneval_metadata()


def test_classes_are_coco_80_under_geneval_names():
    assert len(CLASSES) == len(set(CLASSES)) == 80
    assert {"tv", "computer mouse", "tv remote", "computer keyboard", "dining table", "hair drier"} <= set(CLASSES)
    assert not {"mouse", "remote", "keyboard", "tvmonitor"} & set(CLASSES)


def test_seed_43_reproduces_published_task_counts(official_seed):
    counts = {tag: sum(r["tag"] == tag for r in official_seed) for tag in TASK_COUNTS}
    assert counts == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
                      "color_attr": 100}
    assert len(official_seed) == 553
    # tasks come in GenEval's file order
    assert [r["tag"] for r in official_seed] == [t for t, n in TASK_COUNTS.items() for _ in range(n)]


def test_seed_43_matches_published_prompts(official_seed):
    # Prompts of the published evaluation_metadata.jsonl at these indices (GenEval repository).
    assert official_seed[0]["prompt"] == "a photo of a bench"
    assert official_seed[80]["prompt"] == "a photo of a bench and a sports ball"
    assert official_seed[179] == {"tag": "counting", "include": [{"class": "clock", "count": 2}],
                                  "exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"}
    assert official_seed[259]["prompt"] == "a photo of a blue fire hydrant"
    assert official_seed[353] == {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                  {"class": "dog", "count": 1, "position": ["right of", 0]}],
                                  "prompt": "a photo of a dog right of a teddy bear"}
    assert official_seed[453]["prompt"] == "a photo of a purple wine glass and a black apple"


# Every counting prompt of the published evaluation_metadata.jsonl (GenEval repository, prompts/), in
# GenEval's own wording: its plural rule writes "benchs", "sheeps", "persons", "knifes", "broccolis".
PUBLISHED_COUNTING = """
four sinks|three oranges|three books|four traffic lights|two bananas|four hot dogs|three benchs|four books|two frisbees
three sports balls|two ties|two bicycles|three handbags|three apples|three baseball bats|two pizzas|three suitcases
four benchs|two toothbrushs|four vases|four computer keyboards|three sinks|two trains|three hot dogs|four apples
two sandwichs|three pizzas|four boats|two clocks|two backpacks|three computer keyboards|four stop signs
three refrigerators|four broccolis|two carrots|two cars|two wine glasses|four skateboards|two parking meters
four frisbees|four buses|four handbags|two bears|three persons|three tennis rackets|four bowls|three cups|two ovens
two toilets|three buses|three snowboards|two snowboards|four dogs|two sheeps|three zebras|three kites|three cell phones
four baseball gloves|two beds|two tv remotes|three fire hydrants|four giraffes|two vases|four donuts|four chairs
two fire hydrants|three giraffes|four tvs|three wine glasses|three trucks|two trucks|four clocks|four knifes
four zebras|two teddy bears|three birds|four microwaves|two hair driers|three laptops|three cows
"""


def test_default_counting_prompts_are_the_published_texts(official_seed):
    published = {f"a photo of {p}" for p in PUBLISHED_COUNTING.replace("\n", "|").split("|") if p}
    assert len(published) == 80
    assert {r["prompt"] for r in official_seed if r["tag"] == "counting"} == published


def test_english_plurals_are_opt_in_and_differ_only_in_eight_counting_prompts(official_seed):
    english = generate_geneval_metadata(plural_style="english")
    assert "a photo of two sheep" in {r["prompt"] for r in english}
    changed = [(a["prompt"], b["prompt"]) for a, b in zip(official_seed, english) if a["prompt"] != b["prompt"]]
    assert len(changed) == 8 and ("a photo of three persons", "a photo of three people") in changed
    for a, b in zip(official_seed, english):
        assert {k: v for k, v in a.items() if k != "prompt"} == {k: v for k, v in b.items() if k != "prompt"}
        assert a["prompt"] == b["prompt"] or a["tag"] == "counting"


@pytest.mark.parametrize("seed", [43, 7])
def test_template_shapes_and_metadata(seed):
    for r in generate_geneval_metadata(seed=seed):
        assert re.fullmatch(TEMPLATES[r["tag"]], r["prompt"]), r
        classes = [req["class"] for req in r["include"]]
        assert all(c in CLASSES for c in classes)
        if r["tag"] == "counting":
            (inc,), (exc,) = r["include"], r["exclude"]
            assert 2 <= inc["count"] <= 4 and exc == {"class": inc["class"], "count": inc["count"] + 1}
        else:
            assert "exclude" not in r and all(req["count"] == 1 for req in r["include"])
        if r["tag"] in ("colors", "color_attr"):
            assert "person" not in classes  # GenEval has no "<colour> person" prompts
        if r["tag"] in ("two_object", "position", "color_attr"):
            assert classes[0] != classes[1]
        if r["tag"] == "color_attr":
            assert r["include"][0]["color"] != r["include"][1]["color"]


def test_deterministic_per_seed():
    assert generate_geneval_metadata(seed=5) == generate_geneval_metadata(seed=5)
    assert generate_geneval_metadata(seed=5) != generate_geneval_metadata(seed=6)


@pytest.mark.parametrize("name, english, official", [
    ("person", "people", "persons"), ("computer mouse", "computer mice", "computer mouses"),
    ("sheep", "sheep", "sheeps"), ("skis", "skis", "skises"), ("scissors", "scissors", "scissorses"),
    ("knife", "knives", "knifes"), ("bus", "buses", "buses"), ("wine glass", "wine glasses", "wine glasses"),
    ("toothbrush", "toothbrushes", "toothbrushs"), ("sandwich", "sandwiches", "sandwichs"),
    ("bench", "benches", "benchs"), ("tv", "tvs", "tvs"), ("hair drier", "hair driers", "hair driers"),
])
def test_plurals(name, english, official):
    assert plural(name, "english") == english
    assert plural(name) == official


def test_articles():
    assert with_article("orange") == "an orange" and with_article("umbrella") == "an umbrella"
    assert with_article("red") == "a red" and with_article("tv") == "a tv"


def test_prompt_set_source(tmp_path):
    records, source = geneval_prompt_set(seed=3)
    assert source.startswith("generated by GenEval's procedure (seed 3, GenEval's own plurals") and len(records) > 500
    _, english = geneval_prompt_set(seed=3, plural_style="english")
    assert "NOT the official prompt texts" in english
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:5]))
    loaded, source = geneval_prompt_set(path)
    assert loaded == records[:5] and source == f"official file {path}"
    with pytest.raises(DmdrError, match="keeps its own texts"):
        geneval_prompt_set(path, plural_style="english")


def _write(tmp_path, lines):
    path = tmp_path / "meta.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"})


@pytest.mark.parametrize("bad, message", [
    ("{not json", "line 2: is not valid JSON"),
    ('{"tag": "single_object", "include": [{"class": "mouse", "count": 1}], "prompt": "p"}',
     "line 2: include[0].class 'mouse' is not one of the 80 known classes (did you mean 'computer mouse'?)"),
    ('{"tag": "colours", "include": [{"class": "dog", "count": 1}], "prompt": "p"}', "line 2: tag 'colours'"),
    ('{"tag": "colors", "include": [{"class": "dog", "count": 1, "colour": "red"}], "prompt": "p"}',
     "line 2: include[0] has unknown key(s) ['colour']"),
    ('{"tag": "position", "include": [{"class": "dog", "count": 1, "position": ["left of", 0]}], "prompt": "p"}',
     "line 2: include[0].position index 0 must point at an earlier include"),
    ('{"tag": "counting", "include": [{"class": "dog", "count": 0}], "prompt": "p"}',
     "line 2: include[0].count must be a positive integer"),
    ('{"tag": "single_object", "include": [], "prompt": "p"}', "line 2: include must be a non-empty list"),
    ('[1, 2]', "line 2: must be a JSON object"),
])
def test_loader_names_line_and_problem(tmp_path, bad, message):
    with pytest.raises(DmdrError, match=re.escape(message)):
        load_geneval_metadata(_write(tmp_path, [GOOD, bad]))


def test_loader_accepts_tuple_positions_and_blank_lines(tmp_path):
    rec = {"tag": "position", "include": [{"class": "cup", "count": 1},
                                          {"class": "dog", "count": 1, "position": ["above", 0]}], "prompt": "p"}
    assert load_geneval_metadata(_write(tmp_path, [GOOD, "", json.dumps(rec)]))[1] == rec


def test_loader_missing_file(tmp_path):
    with pytest.raises(DmdrError, match="does not exist"):
        load_geneval_metadata(tmp_path / "nope.jsonl")


def test_sample_sets_take_the_english_plurals_only_when_asked():
    from dmdr_cli.evaluate.sample_sets import geneval_set

    official = geneval_set(size=64, per_prompt=1)
    english = geneval_set(size=64, per_prompt=1, english_plurals=True)
    assert "a photo of two sheeps" in [r["prompt"] for r in official.records]
    assert "a photo of two sheep" in [r["prompt"] for r in english.records]
    assert "NOT the official prompt texts" in english.source and "NOT" not in official.source


def test_help_names_the_non_official_options():
    from typer.testing import CliRunner

    from dmdr_cli.cli import app

    text = " ".join(CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"}).output.split())
    for flag in ("--geneval-english-plurals", "--dpg-all-rows", "--dpg-lenient-yes"):
        assert flag in text
    assert text.count("NON-OFFICIAL") >= 3
    sample_help = " ".join(CliRunner().invoke(app, ["sample", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "--geneval-english-plurals" in sample_help and "NON-OFFICIAL" in sample_help
