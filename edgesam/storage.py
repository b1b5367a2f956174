"""Paths that may be local or in object storage (``s3://``, ``gs://``, ``file://`` or a plain path).

Every path option of the project goes through this module, so a cache, a run directory, a checkpoint
or an annotation folder can live on a local disk, NFS or a bucket. It uses ``pyarrow.fs`` (already a
dependency through Parquet; Ray Data and Ray Train resolve URIs the same way) and needs no Ray.

Credentials and S3-compatible endpoints come from the standard environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``),
which pyarrow's S3 filesystem reads itself; query options in the URI
(``s3://bucket/x?allow_bucket_creation=true``) are passed to ``FileSystem.from_uri``.

Atomicity: a local write goes to a temp file in the same folder and is renamed over the target; an
object-store write is one PUT (or one completed multipart upload), which readers see whole or not at all.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs

PathLike = str | os.PathLike
_LOCAL = pafs.LocalFileSystem()
# pyarrow's FileSystem.type_name -> URI scheme
_SCHEMES = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs"}
# Every read on an object-store file is one ranged GET: sequential readers (tarfile asks for 10 KiB at a
# time, hashing for 1 MiB) go through a buffer of this size.
REMOTE_BUFFER = 8 << 20


def is_uri(path: PathLike) -> bool:
    """True for ``scheme://...`` other than ``file://`` (i.e. not a local path)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def _split(uri: str) -> tuple[str, str, str, str]:
    """``scheme://bucket/key?query`` -> (scheme, bucket, key, query)."""
    scheme, rest = uri.split("://", 1)
    rest, _, query = rest.partition("?")
    bucket, _, key = rest.partition("/")
    return scheme, bucket, key.strip("/"), query


@lru_cache(maxsize=32)
def _filesystem(root: str) -> pafs.FileSystem:
    # One filesystem per bucket (+ options): creating an S3 client per call is slow.
    return pafs.FileSystem.from_uri(root)[0]


def resolve(path: PathLike) -> tuple[pafs.FileSystem, str]:
    """A path or URI -> (pyarrow filesystem, path inside it). Local paths become absolute."""
    s = str(path)
    if s.startswith("file://"):
        s = s[len("file://"):]
    if not is_uri(s):
        return _LOCAL, os.path.abspath(os.path.expanduser(s))
    scheme, bucket, key, query = _split(s)
    if not bucket:
        raise ValueError(f"{path!r}: a {scheme}:// URI needs a bucket name")
    fs = _filesystem(f"{scheme}://{bucket}" + (f"?{query}" if query else ""))
    return fs, f"{bucket}/{key}" if key else bucket


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    """Inverse of :func:`resolve` (e.g. for a Ray Train ``Checkpoint``'s ``filesystem`` and ``path``)."""
    scheme = _SCHEMES.get(fs.type_name)
    if scheme is None:
        return path
    return path if "://" in path else f"{scheme}://{path}"


def display(path: PathLike) -> str:
    """What to print for a path: the URI as given, or an absolute local path."""
    return str(path) if is_uri(path) else os.path.abspath(str(path))


def join(base: PathLike, *parts: str) -> str:
    """Join path segments; URIs keep their query string at the end."""
    s = str(base)
    if not is_uri(s):
        return os.path.join(s, *parts)
    head, _, query = s.partition("?")
    out = "/".join([head.rstrip("/")] + [p.strip("/") for p in parts if p])
    return f"{out}?{query}" if query else out


def name(path: PathLike) -> str:
    """The last path segment (``basename``)."""
    return str(path).partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


def parent(path: PathLike) -> str:
    s = str(path)
    if not is_uri(s):
        return os.path.dirname(os.path.abspath(s))
    head, _, query = s.partition("?")
    out = head.rstrip("/").rsplit("/", 1)[0]
    return f"{out}?{query}" if query else out


# ---------------------------------------------------------------------------------------------------
# Queries
def _info(path: PathLike) -> pafs.FileInfo:
    fs, p = resolve(path)
    return fs.get_file_info(p)


def exists(path: PathLike) -> bool:
    return _info(path).type != pafs.FileType.NotFound


def is_file(path: PathLike) -> bool:
    return _info(path).type == pafs.FileType.File


def is_dir(path: PathLike) -> bool:
    """On object stores a "directory" is any prefix with objects below it (or a marker object)."""
    return _info(path).type == pafs.FileType.Directory


def size(path: PathLike) -> int:
    """File size in bytes; FileNotFoundError if absent."""
    return stat(path)[0]


def stat(path: PathLike) -> tuple[int, int | None]:
    """(size in bytes, modification time in ns or None where the store keeps none); FileNotFoundError if absent."""
    info = _info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"not a file: {path}")
    return int(info.size), info.mtime_ns


def listdir(path: PathLike, recursive: bool = False, dirs: bool = False) -> list[str]:
    """Files (and with ``dirs`` also directories) below ``path``, sorted, as paths relative to it; [] if
    ``path`` does not exist."""
    fs, p = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True, recursive=recursive))
    kinds = (pafs.FileType.File, pafs.FileType.Directory) if dirs else (pafs.FileType.File,)
    prefix = p.rstrip("/") + "/"
    return sorted(i.path[len(prefix):] for i in infos if i.type in kinds and i.path.startswith(prefix))


def iter_files(path: PathLike) -> Iterator[str]:
    """Files below ``path`` (recursively) as paths relative to it, one folder at a time and unsorted, so that a
    listing of millions of keys never sits in memory at once (object stores: one delimited listing per folder)."""
    fs, p = resolve(path)
    root = p.rstrip("/")
    if isinstance(fs, pafs.LocalFileSystem):
        if not os.path.isdir(root):
            return
        for folder, subdirs, files in os.walk(root):
            subdirs.sort()
            rel = os.path.relpath(folder, root)
            for f in sorted(files):
                yield f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")
        return
    stack = [root]
    while stack:
        folder = stack.pop()
        dirs = []
        for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=False)):
            if info.type == pafs.FileType.Directory:
                dirs.append(info.path)
            elif info.type == pafs.FileType.File and info.path.startswith(root + "/"):
                yield info.path[len(root) + 1:]
        stack.extend(sorted(dirs, reverse=True))


def glob(path: PathLike, pattern: str) -> list[str]:
    """Files directly in ``path`` whose name matches ``pattern`` (fnmatch), as full paths/URIs, sorted."""
    return [join(path, n) for n in listdir(path) if fnmatch.fnmatchcase(n, pattern)]


# ---------------------------------------------------------------------------------------------------
# Reading and writing
def makedirs(path: PathLike) -> None:
    """Create a directory (and parents); on object stores this writes at most a marker object."""
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def open_input_stream(path: PathLike, buffer_size: int = REMOTE_BUFFER):
    """Sequential reader (file-like ``read``); for tar streams and large objects. Remote reads are
    buffered (``buffer_size`` bytes per GET)."""
    fs, p = resolve(path)
    return fs.open_input_stream(p, buffer_size=0 if fs is _LOCAL else buffer_size)


def open_input_file(path: PathLike):
    """Random-access reader (file-like ``read``/``seek``/``tell``); for Parquet footers and tar indexes."""
    fs, p = resolve(path)
    return fs.open_input_file(p)


def open_output_stream(path: PathLike):
    """Writer; parents are created. Not atomic locally: use :func:`write_bytes` for small files."""
    fs, p = resolve(path)
    if fs is _LOCAL:
        os.makedirs(os.path.dirname(p), exist_ok=True)
    return fs.open_output_stream(p)


def read_bytes(path: PathLike) -> bytes:
    """The whole file (one GET on object stores: a random-access file knows its size)."""
    try:
        with open_input_file(path) as f:
            return f.read()
    except OSError as exc:
        if not exists(path):
            raise FileNotFoundError(f"no such file: {path}") from exc
        raise


def write_bytes(path: PathLike, data: bytes) -> str:
    """Write atomically (local temp + rename; one PUT on object stores). Returns the path."""
    fs, p = resolve(path)
    if fs is _LOCAL:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    else:
        with fs.open_output_stream(p) as f:
            f.write(data)
    return str(path)


def read_text(path: PathLike) -> str:
    return read_bytes(path).decode()


def write_text(path: PathLike, text: str) -> str:
    return write_bytes(path, text.encode())


def read_json(path: PathLike) -> Any:
    return json.loads(read_bytes(path))


def write_json(path: PathLike, obj: Any, indent: int | None = 2) -> str:
    return write_bytes(path, json.dumps(obj, indent=indent, default=str).encode())


def remove(path: PathLike, missing_ok: bool = True) -> None:
    fs, p = resolve(path)
    try:
        fs.delete_file(p)
    except (FileNotFoundError, OSError):
        if not missing_ok or exists(path):
            raise


def move(src: PathLike, dest: PathLike) -> None:
    """Rename a file or directory tree. Object stores have no rename: the objects are copied, then deleted."""
    fs, p = resolve(src)
    fs2, q = resolve(dest)
    if fs is _LOCAL and fs2 is _LOCAL:
        os.makedirs(os.path.dirname(q), exist_ok=True)
        os.replace(p, q)
        return
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file or directory: {src}")
    pafs.copy_files(p, q, source_filesystem=fs, destination_filesystem=fs2)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(p)
    else:
        fs.delete_file(p)


def rmtree(path: PathLike) -> None:
    """Delete a directory tree (missing is fine)."""
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


def sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open_input_stream(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def torch_load(path: PathLike, **kwargs: Any) -> Any:
    """``torch.load`` of a local path or an object (read into memory; torch wants a seekable file)."""
    import torch

    kwargs.setdefault("map_location", "cpu")
    if not is_uri(path):
        return torch.load(resolve(path)[1], **kwargs)
    return torch.load(io.BytesIO(read_bytes(path)), **kwargs)


def torch_save(obj: Any, path: PathLike) -> str:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------------
# Bridges for libraries that need a local path
def upload(local: PathLike, dest: PathLike) -> None:
    """Copy a local file or directory tree to ``dest`` (any filesystem)."""
    fs, p = resolve(dest)
    local = os.path.abspath(str(local))
    if os.path.isdir(local):
        pafs.copy_files(local, p, source_filesystem=_LOCAL, destination_filesystem=fs)
    else:
        if fs is _LOCAL:
            os.makedirs(os.path.dirname(p), exist_ok=True)
        pafs.copy_files(local, p, source_filesystem=_LOCAL, destination_filesystem=fs)


def download(src: PathLike, local: PathLike) -> str:
    """Copy a file or directory tree from ``src`` to a local path; returns the local path."""
    fs, p = resolve(src)
    local = os.path.abspath(str(local))
    if fs.get_file_info(p).type == pafs.FileType.File:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        pafs.copy_files(p, local, source_filesystem=fs, destination_filesystem=_LOCAL)
        return local
    # a folder: object stores list no directory entries, so each file's local parent is made here
    for info in fs.get_file_info(pafs.FileSelector(p, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        dst = os.path.join(local, *info.path[len(p.rstrip("/")) + 1:].split("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        pafs.copy_files(info.path, dst, source_filesystem=fs, destination_filesystem=_LOCAL)
    os.makedirs(local, exist_ok=True)
    return local


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[str]:
    """Yield a local path holding ``path`` (itself when local; else a temp copy, removed on exit).

    For libraries that only take file names (ONNX Runtime, TensorRT, tarfile random access).
    Directories are copied whole.
    """
    if not is_uri(path):
        yield resolve(path)[1]
        return
    tmp = tempfile.mkdtemp(prefix="edgesam-dl-")
    try:
        yield download(path, os.path.join(tmp, name(path) or "object"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(path: PathLike, cache_dir: PathLike | None = None) -> str:
    """A local path holding ``path`` that stays for the process (ONNX/TensorRT sessions, serving replicas).

    Local paths come back unchanged. A remote file or folder is downloaded once per URI into
    ``cache_dir`` (default ``$TMPDIR/edgesam-fetch``), through a temp folder renamed into place, so
    concurrent fetches on one node never see a half-copied model.
    """
    if not is_uri(path):
        return resolve(path)[1]
    root = Path(cache_dir or os.path.join(tempfile.gettempdir(), "edgesam-fetch"))
    final = root / hashlib.sha1(str(path).encode()).hexdigest()[:16]
    target = final / (name(path) or "object")
    if final.is_dir():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        download(path, tmp / target.name)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race: use its copy
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


@contextlib.contextmanager
def staged_dir(path: PathLike) -> Iterator[Path]:
    """Yield a local directory whose files end up in ``path``.

    Local ``path``: the directory itself (created). Remote: a temp directory that is uploaded on a
    clean exit (nothing is uploaded if the block raises) and then removed.
    """
    if not is_uri(path):
        d = Path(resolve(path)[1])
        d.mkdir(parents=True, exist_ok=True)
        yield d
        return
    tmp = Path(tempfile.mkdtemp(prefix="edgesam-up-"))
    try:
        yield tmp
        upload(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def relocate(local: PathLike, staged: PathLike, dest: PathLike) -> str:
    """The final location of ``local`` (a file under the staging dir ``staged``) once it lands in ``dest``."""
    rel = os.path.relpath(os.path.abspath(str(local)), os.path.abspath(str(staged)))
    return display(dest if rel == "." else join(dest, *rel.split(os.sep)))
