"""Typed configuration: pydantic models loaded from YAML with ``key.sub=value`` CLI overrides.

Every pipeline does ``cfg = load_config(MyConfig, path_or_name, overrides)``. Names resolve to
``configs/<name>.yaml`` in the repository (or the package's bundled copy).

A file may take whole sections from other configs instead of repeating them:
``include: {cache: sa1b-1pct-cache}`` loads that config as the ``cache`` section (``.`` = the whole file);
keys the including file sets itself win.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict

T = TypeVar("T", bound=BaseModel)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["train.lr=1e-4", "data.root=/x"]`` -> nested dict; values parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        return p
    if p.is_file():
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no config named {name_or_path!r}; known: {names}")
    return candidate


def _resolve_include_path(ref: str, including: Path) -> Path:
    """A config name, or a path relative to the including file."""
    local = including.parent / ref
    return resolve_config_path(local if local.suffix in (".yaml", ".yml") and local.is_file() else ref)


def read_config_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """One YAML config as a dict, with its ``include:`` sections resolved (recursively, cycles refused)."""
    path = path.resolve()
    if path in _chain:
        raise ValueError("config include cycle: " + " -> ".join(p.name for p in (*_chain, path)))
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    includes = loaded.pop("include", None) or {}
    if not isinstance(includes, dict) or not all(isinstance(v, str) for v in includes.values()):
        raise ValueError(f"{path}: include must map a section name (or '.') to a config name or path")
    base: dict = {}
    for section, ref in includes.items():
        sub = read_config_file(_resolve_include_path(ref, path), (*_chain, path))
        base = _merge(base, sub if section == "." else {section: sub})
    return _merge(base, loaded)


def load_config(model: type[T], name_or_path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of ``model`` <- YAML file (if given, with its includes) <- CLI overrides, validated."""
    data: dict = {}
    if name_or_path:
        data = read_config_file(resolve_config_path(name_or_path))
    data = _merge(data, parse_overrides(overrides))
    return model.model_validate(data)


def add_config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--config NAME|PATH`` plus trailing ``key=value`` overrides."""
    parser.add_argument("--config", default=default, help="config name under configs/ or a YAML path")
    parser.add_argument("overrides", nargs="*", help="overrides like train.lr=1e-4")


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
