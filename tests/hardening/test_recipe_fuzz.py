"""Property: any YAML document with any `key=value` overrides is either a valid Recipe or a RecipeError with
a message, never another exception; and a valid recipe's resolved YAML (what runs save and `dmdr recipe
show` prints) loads back to the same recipe."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmdr_cli.errors import RecipeError
from dmdr_cli.recipe import Recipe, all_key_paths, load_recipe, to_yaml, validate

# 150 examples keep CI fast; DMDR_FUZZ_EXAMPLES=20000 for a deeper hunt
FUZZ = settings(max_examples=int(os.environ.get("DMDR_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
KEYS = all_key_paths()
BASE = {"model": {"family": "sd", "pretrained": "some/model"}}

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats() | st.text(max_size=12) | st.dates() | st.binary(max_size=4)
           | st.sampled_from(["sd", "sdxl", "sd3", "lora", "full", "refl", "dpo", "grpo", "1e-4", "auto", "inf",
                              ".nan", "~", "\0"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8) | st.sampled_from(KEYS), inner, max_size=3), max_leaves=8)
key_paths = st.sampled_from(KEYS) | st.text(max_size=16) | st.sampled_from(["model", "train", "rl.rewards.0", "a..b",
                                                                           ".x", "model.family.x", "rl.rewards"])
overrides = st.lists(st.builds(lambda k, v: f"{k}={v}", key_paths, st.text(max_size=16)
                               | values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))
                     | st.text(max_size=20), max_size=3)


def near_valid_documents():
    """A valid recipe with a few keys set to arbitrary values: reaches the checks deep in every section."""
    def build(changes):
        data = {"model": dict(BASE["model"])}
        for path, value in changes:
            node = data
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
            node[leaf] = value
        return yaml.safe_dump(data, allow_unicode=True)

    return st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=4).map(build)


def deep(depth: int) -> str:
    """`depth` levels of nested flow lists: PyYAML's parser recurses once per level."""
    return "model: " + "[" * depth + "]" * depth


nested = st.integers(0, 600).map(deep)  # PyYAML exhausts Python's stack near 500
documents = (near_valid_documents() | st.text(max_size=200) | values.map(lambda v: yaml.safe_dump(v))
             | nested)


def check(document: str | bytes, items: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        if isinstance(document, bytes):
            path.write_bytes(document)
        else:
            path.write_text(document, encoding="utf-8")
        try:
            cfg = load_recipe(path, items)
        except RecipeError as e:
            assert str(e).strip(), "a RecipeError says what is wrong"
            return
    assert isinstance(cfg, Recipe)
    assert validate(yaml.safe_load(to_yaml(cfg))) == cfg, "the resolved recipe loads back to itself"


@FUZZ
@given(documents, overrides)
def test_any_document_and_overrides_validate_or_raise_recipe_error(document, items):
    check(document, items)


@FUZZ
@given(st.binary(max_size=64) | st.text(alphabet=st.characters(codec="utf-8"), max_size=64).map(
    lambda t: "model: {family: sd, pretrained: x}\n" + t), overrides)
def test_any_bytes_validate_or_raise_recipe_error(document, items):
    check(document, items)


# What fuzzing found (each a crash, or a recipe that validated and broke the run later), as a file and as
# an override, with what the user is told now.
MODEL = "model: {family: sd, pretrained: x}\n"
FOUND = {
    "model: " + "[" * 1200 + "]" * 1200: "is nested too deeply to be a recipe",  # was RecursionError
    MODEL + "train: {steps: 1" + "0" * 5000 + "}": "has a value YAML cannot read",  # was ValueError
    "model: &a [*a]": "model.0 contains itself (a YAML alias loop)",  # could not be saved with the run
    MODEL + "train: {betas: [.nan, 0.9]}": "train.betas.0 = nan is not a finite number",
    'model: {family: sd, pretrained: "x\\0"}': "model.pretrained contains a NUL character",
    "model: {family: sd, pretrained: 2024-01-02}": "model.pretrained = 2024-01-02 is a YAML date",
    "model: {family: sd, pretrained: !!binary aGk=}": "model.pretrained = b'hi' is a YAML !!binary value",
    MODEL + "1: 2": "the recipe has the key 1, a YAML number: keys are names",
}
FOUND_OVERRIDES = {
    "model.family=" + "[" * 1200: "model.family = '[[[[",  # the text itself, judged by validation
    "train.steps=1" + "0" * 5000: "train.steps = '1000",
    "train.betas=&a [*a]": "train.betas.0 contains itself (a YAML alias loop)",
    "train.betas=[.inf, 0.9]": "train.betas.0 = inf is not a finite number",
    'model.pretrained="x\\0"': "model.pretrained contains a NUL character",
    "model.pretrained=2024-01-02": "model.pretrained = 2024-01-02 is a YAML date",
}


@pytest.mark.parametrize("document,message", FOUND.items(), ids=range(len(FOUND)))
def test_found_documents_are_recipe_errors(document, message, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(document)
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(path)


@pytest.mark.parametrize("override,message", FOUND_OVERRIDES.items(), ids=range(len(FOUND_OVERRIDES)))
def test_found_overrides_are_recipe_errors(override, message, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(MODEL)
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(path, [override])
