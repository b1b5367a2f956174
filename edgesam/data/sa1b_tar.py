"""SA-1B tar shards: streaming them (:func:`iter_sa1b_tar`, local or object storage) and writing them
(:func:`write_shards`: ``sa_<k>.jpg`` + ``sa_<k>.json`` pairs, adjacent, with fixed metadata)."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from .. import storage
from .dataset_files import is_image, short_error
from .records import Item, Skipped
from .sa1b_json import pair_record

__all__ = ["iter_sa1b_tar", "write_shards"]


def _open_binary(path: str, filesystem: Any = None) -> BinaryIO:
    """A readable binary stream of ``path``: a local file, or ``filesystem.open_input_stream(path)`` for a
    ``pyarrow.fs.FileSystem`` (object storage). Sequential reads only: nothing is loaded whole."""
    if filesystem is None:
        return storage.open_input_stream(path) if storage.is_uri(path) else open(path, "rb")  # s3:// tars: buffered GETs
    return filesystem.open_input_stream(path, buffer_size=storage.REMOTE_BUFFER)


def _file_size(path: str, filesystem: Any = None) -> int:
    if filesystem is None:
        return storage.size(path) if storage.is_uri(path) else os.path.getsize(path)
    return int(filesystem.get_file_info(path).size)


def _missing_end_marker(path: str, tar: tarfile.TarFile, filesystem: Any = None) -> bool:
    """An uncompressed tar whose member data stop without the end-of-archive block was cut short.

    (tarfile silently ends iteration when the file ends exactly on a header boundary.)
    """
    try:
        with _open_binary(path, filesystem) as f:
            magic = f.read(6)
        if magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
            return False  # compressed: the decompressor reports truncation itself
        return _file_size(path, filesystem) < tar.offset + tarfile.BLOCKSIZE
    except OSError:
        return False


def iter_sa1b_tar(path: str | Path, filesystem: Any = None) -> Iterator[Item]:
    """Read an SA-1B shard ``sa_*.tar``: ``sa_N.jpg`` + ``sa_N.json`` members paired by stem.

    The tar is read as a stream (``tarfile`` mode ``r|*``, one member at a time, from a local file or from
    ``filesystem.open_input_stream(path)`` when a ``pyarrow.fs.FileSystem`` is given), so memory holds only
    the members waiting for their other half: two for SA-1B's adjacent ``.jpg``/``.json`` pairs, whatever
    the size of the tar.

    Members may come in either order and may sit under a subfolder. Yields a :class:`RawRecord` per
    complete pair (source ``"<tar>::<member>"``) as soon as both halves have been read, and :class:`Skipped`
    for: an image without JSON (``"missing annotation JSON"``), a JSON without image, a JSON that does not
    parse (the pair is skipped), each annotation with a degenerate box (source ``"<tar>::sa_N.json#ann<id>"``;
    the image still goes through), and a damaged or truncated tar (every pair before the damage comes
    through first, then one ``Skipped`` naming the tar). Members that are neither images nor JSON are ignored.
    """
    path = str(path)
    images: dict[str, tuple[bytes, str]] = {}
    jsons: dict[str, tuple[bytes, str]] = {}
    damage: str | None = None
    try:
        with _open_binary(path, filesystem) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            while True:
                try:
                    member = tar.next()
                except (tarfile.TarError, EOFError, OSError) as exc:
                    damage = short_error(exc)
                    break
                if member is None:
                    if _missing_end_marker(path, tar, filesystem):
                        damage = "file ends without the end-of-archive marker"
                    break
                tar.members.clear()  # stream mode: the headers read so far are not needed again
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                is_json = base.lower().endswith(".json")
                if not (is_json or is_image(base)) or base.startswith("._"):
                    continue
                stem = base.rsplit(".", 1)[0]
                try:
                    f = tar.extractfile(member)
                    data = f.read() if f is not None else b""
                except (tarfile.TarError, EOFError, OSError) as exc:
                    damage = f"member {member.name}: {short_error(exc)}"
                    break
                if len(data) != member.size:
                    damage = f"member {member.name}: unexpected end of data"
                    break
                where = f"{path}::{member.name}"
                if is_json:
                    if stem in jsons:
                        yield Skipped(jsons[stem][1], "duplicate annotation JSON for this stem, first one dropped")
                    jsons[stem] = (data, where)
                else:
                    if stem in images:
                        yield Skipped(images[stem][1], "duplicate image for this stem, first one dropped")
                    images[stem] = (data, where)
                if stem in images and stem in jsons:
                    img, img_where = images.pop(stem)
                    js, js_where = jsons.pop(stem)
                    yield from pair_record(stem, img, img_where, js, js_where)
    except (tarfile.TarError, EOFError, OSError) as exc:  # cannot open, or damage while closing
        damage = damage or short_error(exc)
    if damage is not None:
        yield Skipped(path, f"truncated or corrupt tar: {damage}")
    for stem in sorted(images):
        yield Skipped(images[stem][1], "missing annotation JSON")
    for stem in sorted(jsons):
        yield Skipped(jsons[stem][1], "annotation JSON without an image")


def _json_bytes(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed metadata: identical bytes for a given seed
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(out_dir: str | Path, num_images: int, images_per_shard: int,
                 record: Callable[[int], tuple[bytes, dict]]) -> list[Path]:
    """``sa_000000.tar``, ... in ``out_dir`` with ``sa_<k>.jpg`` + ``sa_<k>.json`` from ``record(k)`` =
    (JPEG bytes, SA-1B doc), pairs adjacent as in SA-1B; each tar is written to ``.part`` and renamed."""
    if num_images < 0 or images_per_shard < 1:
        raise ValueError("num_images must be >= 0 and images_per_shard >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s, start in enumerate(range(0, num_images, images_per_shard)):
        path = out / f"sa_{s:06d}.tar"
        tmp = path.with_name(path.name + ".part")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for k in range(start, min(num_images, start + images_per_shard)):
                jpg, doc = record(k)
                _add_member(tar, f"sa_{k}.jpg", jpg)
                _add_member(tar, f"sa_{k}.json", _json_bytes(doc))
        os.replace(tmp, path)
        shards.append(path)
    return shards
