"""Read a recipe: YAML file + `key.path=value` overrides -> validated `Recipe`, or one `RecipeError` line.

Nothing heavy is imported here: validation runs before any weight loads.
"""

from __future__ import annotations

import datetime
import difflib
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import RecipeError
from ..runtime.files import read_bytes
from .schema import Recipe

MAX_DEPTH = 32  # recipes nest a few levels; anything deeper is a mistake (and would exhaust Python's stack)


class DuplicateKeyError(Exception):
    """A mapping that names one key twice: YAML would silently keep the last value."""

    def __init__(self, key, first_line: int, second_line: int, where: str):
        super().__init__(f"{key!r} appears twice")
        self.key, self.first_line, self.second_line, self.where = key, first_line, second_line, where


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags that build objects), refusing a mapping that repeats a key at any level.

    YAML merge keys (`<<: *base`) still merge: a key that overrides a merged one is written once."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the safe constructor's own error says what is wrong with such a key
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line, "")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str):
    """`yaml.safe_load` that refuses duplicated keys (DuplicateKeyError)."""
    loader = UniqueKeyLoader(text)  # a SafeLoader: what yaml.safe_load does, with the duplicate check
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    data = read_yaml(path)
    for item in overrides:
        apply_override(data, item)
    return validate(data, source=str(path))


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"recipe file {str(p)!r} does not exist: give the path of a YAML recipe (see recipes/)")
    if p.is_dir():
        raise RecipeError(f"recipe {str(p)!r} is a folder: give the path of a YAML file inside it")
    raw = read_bytes(p, f"recipe {str(p)!r}", fix="give the path of a readable YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = parse_yaml(text)
    except DuplicateKeyError as e:
        raise RecipeError(f"recipe {str(p)!r} sets {e.key} twice (lines {e.first_line} and {e.second_line}); YAML "
                          f"would silently keep the second: merge them into one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"recipe {str(p)!r} is not valid YAML{where}: {problem}") from None
    except RecursionError:  # PyYAML's parser recurses once per level of [ or {
        raise RecipeError(f"recipe {str(p)!r} is nested too deeply to be a recipe") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise RecipeError(f"recipe {str(p)!r} has a value YAML cannot read: {str(e).splitlines()[0]}") from None
    if data is None:
        raise RecipeError(f"recipe {str(p)!r} is empty: it needs at least a model section (family, pretrained)")
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {str(p)!r} must be a mapping of sections (model:, student:, ...), "
                          f"not a {type(data).__name__}")
    return data


def apply_override(data: dict, item: str) -> None:
    """`a.b.c=value` (value parsed as YAML, so 1e-6, true, [1, 2] and null work) set in place."""
    if not isinstance(item, str) or "=" not in item:
        raise RecipeError(f"override {item!r} is not of the form key.path=value (e.g. train.steps=100)")
    key, _, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise RecipeError(f"override {item!r} has an empty key: write it as key.path=value (e.g. train.steps=100)")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except DuplicateKeyError as e:
        raise RecipeError(f"override {item!r} sets {e.key} twice: write it once") from None
    except (yaml.YAMLError, RecursionError, ValueError):  # not YAML: the text itself, which validation judges
        value = raw
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part) if isinstance(node, dict) else None
        if nxt is None:
            nxt = {}
            node[part] = nxt
        if not isinstance(nxt, dict):
            raise RecipeError(f"override {item!r}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def validate(data: dict, source: str = "recipe") -> Recipe:
    problem = _not_plain(data, (), set())
    if problem:
        raise RecipeError(f"{source}: {problem}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_describe(e.errors()[0], data, source)) from None


def _not_plain(value, path: tuple, open_containers: set[int]) -> str | None:
    """What YAML can express but a recipe never means, as a message (None: nothing). A recipe is text,
    finite numbers, booleans, nulls, lists and mappings keyed by text, a few levels deep: YAML's dates,
    !!binary and !!set, alias loops, NaN/inf and NUL characters would pass some fields' validation and
    break later (a NaN Adam beta, a path with a NUL byte, a resolved recipe that cannot be saved)."""
    where = ".".join(map(str, path)) or "the recipe"
    if len(path) > MAX_DEPTH:
        return f"{where} is nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, (dict, list)):
        if id(value) in open_containers:
            return f"{where} contains itself (a YAML alias loop)"
        open_containers.add(id(value))
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            if not isinstance(key, str) and isinstance(value, dict):
                return f"{where} has the key {key!r}, a YAML {_yaml_kind(key)}: keys are names (quote it)"
            problem = _not_plain(item, (*path, key), open_containers)
            if problem:
                return problem
        open_containers.discard(id(value))
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} = {value} is not a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        return f"{where} = {value} does not fit in 64 bits: give a number below 2^63"
    if isinstance(value, str) and "\0" in value:
        return f"{where} contains a NUL character"
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    return (f"{where} = {_clip(str(value))} is a YAML {_yaml_kind(value)}, not text, a number or a list: quote it "
            f"if it is text")


def _yaml_kind(value) -> str:
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "date"
    return {bytes: "!!binary value", set: "!!set", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _describe(err: dict, data: dict, source: str) -> str:
    loc = [str(p) for p in err["loc"]]
    path = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        hint = closest_key(loc)
        tail = f"; did you mean {hint}?" if hint else f"; valid keys here: {', '.join(valid_keys(loc[:-1]))}"
        return f"{source}: unknown key {path}{tail}"
    if kind == "missing":
        return f"{source}: {path} is required: {field_help(loc)}"
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if kind in ("value_error", "assertion_error") and (not loc or isinstance(value, dict)):
        # a section's own cross-check: its message is already the whole sentence
        return f"{source}: {path + ': ' if loc else ''}{msg}"
    expected = field_help(loc)
    shown = _clip(repr(value)) if not isinstance(value, dict) else "a mapping"
    return f"{source}: {path} = {shown} is invalid ({msg}); expected: {expected}"


def _clip(text: str, limit: int = 80) -> str:
    """A value as shown in a message: long ones cut, so the message stays one readable line."""
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    """The section model that holds the field at `loc` (list indices skipped)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = _section_type(field.annotation)
        if ann is None:
            return None
        model = ann
    return model


def _section_type(ann) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def valid_keys(section_loc: list[str]) -> list[str]:
    model = _model_at(section_loc)
    return list(model.model_fields) if model else []


def closest_key(loc: list[str]) -> str | None:
    """The valid key path closest to an unknown one: first within its section, then anywhere."""
    parent, name = loc[:-1], loc[-1]
    prefix = ".".join(p for p in parent)
    match = difflib.get_close_matches(name, valid_keys(parent), n=1, cutoff=0.5)
    if match:
        return f"{prefix}.{match[0]}" if prefix else match[0]
    everywhere = all_key_paths()
    match = difflib.get_close_matches(".".join(loc), everywhere, n=1, cutoff=0.6)
    if match:
        return match[0]
    by_leaf = [k for k in everywhere if k.rsplit(".", 1)[-1] == name]
    return by_leaf[0] if by_leaf else None


def all_key_paths(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        sub = _section_type(field.annotation)
        if sub is not None and not _is_list(field.annotation):
            out.extend(all_key_paths(sub, path + "."))
        else:
            out.append(path)
    return out


def _is_list(ann) -> bool:
    return getattr(ann, "__origin__", None) is list


def field_help(loc: list[str]) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return "see `dmdr recipe reference`"
    field = model.model_fields.get(loc[-1]) if loc else None
    if field is None:
        return "see `dmdr recipe reference`"
    return field.description or "see `dmdr recipe reference`"


def to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (defaults filled in), saved next to every run output."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=110)
