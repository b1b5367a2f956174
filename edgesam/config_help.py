"""Human-readable listing of a typed config: every dotted key with its default and a one-line doc.

Used by ``edgesam <command> --help``. The doc is the field's ``description``, else the trailing
``# comment`` on the field's line in its class's source (the house style for short field notes).
"""
from __future__ import annotations

import functools
import inspect
import re
from typing import Any, Iterator

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


@functools.lru_cache(maxsize=None)
def _source_comments(cls: type) -> dict[str, str]:
    """``{field: trailing comment}`` read from the source of ``cls`` itself (not its bases)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    for line in source.splitlines():
        m = re.match(r"^\s+([A-Za-z_][A-Za-z0-9_]*)\s*:[^#]*#\s*(.+)$", line)
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2).strip()
    return found


def _doc(model: type[BaseModel], name: str, description: str | None) -> str:
    if description:
        return _first_line(description)
    for cls in model.__mro__:
        if name in getattr(cls, "__annotations__", {}):
            return _source_comments(cls).get(name, "")
    return ""


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class of a field annotation (``X`` or ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _default(field: Any) -> Any:
    if field.default is not PydanticUndefined:
        return field.default
    if field.default_factory is not None:
        try:
            return field.default_factory()
        except TypeError:  # factories that take the validated data
            return None
    return "(required)"


def iter_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """Yield ``(dotted_key, default, doc)`` for every leaf field of ``model``, depth first."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        section = _section_type(field.annotation)
        if section is not None:
            yield from iter_keys(section, key + ".")
            continue
        default = _default(field)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        yield key, default, _doc(model, name, field.description)


def describe(model: type[BaseModel]) -> str:
    """A table of ``key = default  # doc`` lines for ``model`` (YAML-ish values)."""
    rows = list(iter_keys(model))
    width = max((len(f"{k} = {d!r}") for k, d, _ in rows), default=0)
    lines = []
    for key, default, doc in rows:
        left = f"{key} = {_show(default)}"
        lines.append(f"  {left:<{min(width, 60)}}  {('# ' + doc) if doc else ''}".rstrip())
    return "\n".join(lines)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if not isinstance(value, str) else (value or "''")
