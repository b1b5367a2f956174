"""Files of a dataset root that may be a local folder or an object-store prefix (``s3://bucket/prefix``).

The readers see a dataset as one sorted listing of relative paths (:func:`walk`) and read files whole
(:func:`edgesam.storage.read_bytes`) or their first bytes (:func:`read_head`), so every format works the same
from a disk or a bucket. Object storage goes through :mod:`edgesam.storage` (pyarrow.fs): a listing is one paginated LIST
(1000 keys per request), a file one GET.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import storage
from .images import IMAGE_EXTENSIONS

__all__ = ["is_image", "short_error", "walk", "relative", "read_head", "annotation_candidates"]


def is_image(name: str) -> bool:
    """True for a file name with an image extension (``IMAGE_EXTENSIONS``, any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def short_error(exc: BaseException) -> str:
    """The exception's message, at most 200 characters (for ``Skipped`` reasons)."""
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def walk(root: str | Path) -> list[str]:
    """Every file below ``root`` as a ``/``-separated path relative to it, hidden files and folders (a part
    starting with ``.``) left out, sorted by path components (``a.jpg`` < ``sub/a.jpg`` < ``x.jpg``).
    [] when ``root`` does not exist."""
    if storage.is_uri(root):
        rels = [r for r in storage.listdir(root, recursive=True) if not _hidden(r)]
    else:
        rels = []
        base = str(root)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = os.path.relpath(dirpath, base).replace(os.sep, "/")
            prefix = "" if rel_dir == "." else rel_dir + "/"
            rels.extend(prefix + f for f in filenames if not f.startswith("."))
    return sorted(rels, key=lambda r: r.split("/"))


def relative(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators (URIs compared without their query string)."""
    if not storage.is_uri(root):
        return os.path.relpath(str(path), str(root)).replace(os.sep, "/")
    base = str(root).partition("?")[0].rstrip("/") + "/"
    p = str(path).partition("?")[0]
    return p[len(base):] if p.startswith(base) else storage.name(p)


def read_head(path: str | Path, n: int) -> bytes:
    """The first ``n`` bytes of a file (one ranged read on object stores)."""
    with storage.open_input_stream(path, buffer_size=n) as f:
        return f.read(n)


def annotation_candidates(image_rel: str) -> list[str]:
    """Where an extracted SA-1B image's JSON may be, relative to the dataset root: ``X.json`` beside
    ``X.jpg``, then ``.../annotations/<rest>/X.json`` for each ``images`` folder in ``.../images/<rest>/X.jpg``."""
    parts = image_rel.split("/")
    stem = os.path.splitext(parts[-1])[0]
    out = ["/".join(parts[:-1] + [stem + ".json"])]
    for i, part in enumerate(parts[:-1]):
        if part == "images":
            out.append("/".join(parts[:i] + ["annotations"] + parts[i + 1:-1] + [stem + ".json"]))
    return out
