"""The recipe reference, generated from the schema so the docs cannot drift from the code."""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .load import _is_list, _section_type
from .schema import Recipe


def _type_name(ann) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return " / ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in inner) + (" or null" if len(inner) < len(args) else "")
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann))


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        return "(section)" if isinstance(value, BaseModel) else f"`{value!r}`"
    return f"`{field.default!r}`"


def reference_rows(model: type[BaseModel] = Recipe, prefix: str = ""):
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        sub = _section_type(field.annotation)
        if sub is not None and not _is_list(field.annotation):
            yield from reference_rows(sub, path + ".")
            continue
        yield path, _type_name(field.annotation), _default(field), (field.description or "").replace("|", "\\|")
        if sub is not None:  # a list of sub-records (rl.rewards): document their fields too
            yield from reference_rows(sub, path + "[].")


def reference_markdown() -> str:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for path, typ, default, help_text in reference_rows():
        lines.append(f"| `{path.replace(' ', '')}` | {typ} | {default} | {help_text} |")
    return "\n".join(lines) + "\n"
