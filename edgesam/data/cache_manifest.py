"""The cache's ``manifest.json`` and shard listing: identity checks, resume scan, validation for readers."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from .. import storage
from .cache_schema import CACHE_FORMAT_VERSION, MANIFEST, Preprocessing


def shard_files(cache_dir: str | Path) -> list[Path] | list[str]:
    """Complete shards, sorted: Paths for a local cache, URIs for one in object storage."""
    if storage.is_uri(cache_dir):
        return storage.glob(cache_dir, "part-*.parquet")
    return sorted(Path(cache_dir).glob("part-*.parquet"))


def scan_done_ids(cache_dir: str | Path) -> tuple[set[str], list[str]]:
    """Ids in complete shards; leftover temp files and unreadable shards are removed and reported."""
    removed = []
    for tmp in storage.glob(cache_dir, ".tmp-part-*"):
        storage.remove(tmp)
        removed.append(f"{storage.name(tmp)}: unfinished temp shard removed")
    done: set[str] = set()
    for f in shard_files(cache_dir):
        try:
            ids = pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()
        except Exception as exc:  # noqa: BLE001
            storage.remove(f)
            removed.append(f"{storage.name(f)}: unreadable shard removed ({exc})")
            continue
        done.update(ids)
    return done, removed


class CacheMismatchError(ValueError):
    """The cache was made with another teacher or other preprocessing."""


def cache_identity(teacher_identity: dict, pre: Preprocessing) -> dict:
    return {"teacher": teacher_identity, "preprocessing": pre.identity()}


def check_identity(cache_dir: str | Path, identity: dict) -> dict | None:
    """Return the existing manifest (or None); raise CacheMismatchError if its identity differs."""
    path = storage.join(cache_dir, MANIFEST)
    if not storage.is_file(path):
        return None
    try:
        manifest = storage.read_json(path)
    except json.JSONDecodeError as exc:
        raise CacheMismatchError(f"{path} is not valid JSON ({exc}); move the cache away or repair it") from exc
    old = manifest.get("identity")
    if old != identity:
        diff = _diff(old or {}, identity)
        raise CacheMismatchError(
            f"refusing to mix caches: {cache_dir} was made with a different teacher or preprocessing ({diff}). "
            "Use another output directory or delete this cache.")
    return manifest


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    parts = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = _diff(va, vb, f"{prefix}{k}.")
            if sub:
                parts.append(sub)
        elif va != vb:
            parts.append(f"{prefix}{k}: cache has {va!r}, requested {vb!r}")
    return "; ".join(parts)


def write_manifest(cache_dir: str | Path, manifest: dict) -> str:
    return storage.write_json(storage.join(cache_dir, MANIFEST), manifest)  # atomic (temp + rename, or one PUT)


def load_manifest(cache_dir: str | Path, expect: dict | None = None) -> dict:
    """Validate and return the manifest; ``expect`` is a partial identity that must match (e.g. img_size)."""
    path = storage.join(cache_dir, MANIFEST)
    if not storage.is_file(path):
        raise FileNotFoundError(f"not a teacher cache: {path} is missing")
    manifest = storage.read_json(path)
    if manifest.get("status") != "complete":
        raise ValueError(f"teacher cache {cache_dir} is not complete (status {manifest.get('status')!r}); rerun the caching job")
    pre = manifest["identity"]["preprocessing"]
    if pre.get("cache_format_version") != CACHE_FORMAT_VERSION:
        raise ValueError(f"cache format {pre.get('cache_format_version')} is not supported (expected {CACHE_FORMAT_VERSION})")
    for key, value in (expect or {}).items():
        if pre.get(key) != value:
            raise CacheMismatchError(f"cache {cache_dir} has {key}={pre.get(key)!r}, expected {value!r}")
    return manifest
