"""Dataset readers: SA-1B tar shards, extracted SA-1B folders, COCO instance sets and plain image folders.

Every reader is a generator that never raises for a bad record: it yields :class:`RawRecord` for each usable
image and :class:`Skipped` (source + short reason) for each thing it left out, so a pipeline can count and
report skips. Readers keep the encoded image bytes; they do not decode pixels (see
:func:`edgesam.data.images.decode_image`).

Format names (``FORMATS``) and the auto-detection rules of :func:`detect_format`, checked in this order:

1. ``"sa1b-tar"``: ``path`` is a ``.tar`` file, or a folder whose top level holds ``*.tar`` files
   (SA-1B shards ``sa_000000.tar``, ...). Each shard holds ``sa_N.jpg`` + ``sa_N.json`` pairs.
2. ``"coco"``: a folder with ``annotations/<name>.json`` that is a COCO instances file: its stem is not the
   stem of an image in the folder and its first 64 KiB mention ``"images"`` or ``"categories"``. Images are
   looked up in ``images/``, in ``<split>/`` (``instances_val2017.json`` -> ``val2017/``), or in the folder.
3. ``"sa1b-folder"``: extracted SA-1B: some image ``X.jpg`` has ``X.json`` beside it, or the EdgeSAM layout
   ``images/<split>/X.jpg`` + ``annotations/<split>/X.json`` exists.
4. ``"images"``: anything else: every image file under the folder, without annotations.

:func:`list_sources` turns a path into independent units of work (one per tar shard; the folder itself
for the other formats) and :func:`iter_source` reads one unit, so a Ray pipeline can parallelise over
shards. :func:`iter_any` chains both.
"""
from __future__ import annotations

import json
import math
import os
import tarfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from .. import storage
from .images import IMAGE_EXTENSIONS
from .records import Item, RawRecord, Skipped

__all__ = ["FORMATS", "detect_format", "list_sources", "iter_source", "iter_any", "iter_sa1b_tar",
           "iter_sa1b_folder", "iter_coco", "iter_image_folder", "validate_annotations", "mask_center_point",
           "sa1b_folder_images", "load_coco", "coco_instance_files", "coco_images_dir"]

FORMATS = ("sa1b-tar", "sa1b-folder", "coco", "images")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------------------------------------------
# SA-1B JSON
def _finite_numbers(values: Any, n: int | None = None) -> list[float]:
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"expected a list of numbers, got {values!r:.60}")
    out = [float(v) for v in values]
    if n is not None and len(out) != n:
        raise ValueError(f"expected {n} numbers, got {len(out)}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"non-finite number in {values!r:.80}")
    return out


def validate_annotations(anns: Iterable[Any], where: str) -> tuple[list[dict], list[Skipped]]:
    """Split SA-1B-style annotations into usable ones and a ``Skipped`` per bad one.

    Bad: not a dict, no ``bbox``, a ``bbox`` that is not 4 finite numbers or has ``w <= 0`` or ``h <= 0``,
    or a ``point_coords`` present but not a list of finite ``[x, y]`` pairs. The ``Skipped`` source is
    ``f"{where}#ann{id}"`` (the list index when the annotation has no id).
    """
    good: list[dict] = []
    bad: list[Skipped] = []
    for i, a in enumerate(anns):
        ident = a.get("id", i) if isinstance(a, dict) else i
        try:
            if not isinstance(a, dict):
                raise ValueError(f"annotation is a {type(a).__name__}, not an object")
            if "bbox" not in a:
                raise ValueError("no bbox")
            try:
                x, y, w, h = _finite_numbers(a["bbox"], 4)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"degenerate bbox {a['bbox']!r:.80}: {exc}") from None
            if w <= 0 or h <= 0:
                raise ValueError(f"degenerate bbox {a['bbox']!r:.80}: width and height must be > 0")
            pts = a.get("point_coords")
            if pts is not None:
                if not isinstance(pts, (list, tuple)) or not pts:
                    raise ValueError(f"bad point_coords {pts!r:.80}")
                for p in pts:
                    _finite_numbers(p, 2)
            good.append(a)
        except (TypeError, ValueError) as exc:
            bad.append(Skipped(f"{where}#ann{ident}", f"bad annotation: {_short(exc)}"))
    return good, bad


def _parse_sa1b_json(data: bytes, where: str) -> tuple[dict | None, list[Skipped], str]:
    """-> (doc with only valid annotations or None, per-annotation skips, error reason when doc is None)."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [], f"bad JSON: {_short(exc)}"
    except RecursionError:
        return None, [], "bad JSON: nested too deeply"
    if not isinstance(doc, dict):
        return None, [], f"bad JSON: top level is a {type(doc).__name__}, expected an object"
    anns = doc.get("annotations", [])
    if not isinstance(anns, list):
        return None, [], "bad JSON: 'annotations' is not a list"
    good, bad = validate_annotations(anns, where)
    info = doc.get("image") if isinstance(doc.get("image"), dict) else {}
    return {"image": info, "annotations": good}, bad, ""


def _int_or_none(v: Any) -> int | None:
    try:
        iv = int(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return iv if iv > 0 else None


def _pair(stem: str, image: bytes, image_where: str, ann_json: bytes, json_where: str) -> Iterator[Item]:
    doc, bad, error = _parse_sa1b_json(ann_json, json_where)
    if doc is None:
        yield Skipped(json_where, f"{error} (image skipped)")
        return
    yield from bad
    info = doc["image"]
    yield RawRecord(stem, image, doc["annotations"], image_where, _int_or_none(info.get("width")),
                    _int_or_none(info.get("height")))


# ---------------------------------------------------------------------------------------------------
# SA-1B tar shards
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
                    damage = _short(exc)
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
                if not (is_json or _is_image(base)) or base.startswith("._"):
                    continue
                stem = base.rsplit(".", 1)[0]
                try:
                    f = tar.extractfile(member)
                    data = f.read() if f is not None else b""
                except (tarfile.TarError, EOFError, OSError) as exc:
                    damage = f"member {member.name}: {_short(exc)}"
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
                    yield from _pair(stem, img, img_where, js, js_where)
    except (tarfile.TarError, EOFError, OSError) as exc:  # cannot open, or damage while closing
        damage = damage or _short(exc)
    if damage is not None:
        yield Skipped(path, f"truncated or corrupt tar: {damage}")
    for stem in sorted(images):
        yield Skipped(images[stem][1], "missing annotation JSON")
    for stem in sorted(jsons):
        yield Skipped(jsons[stem][1], "annotation JSON without an image")


# ---------------------------------------------------------------------------------------------------
# extracted SA-1B folders
def _walk_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(out)  # by path components: "a.jpg" < "sub/a.jpg" < "x.jpg"


def _annotation_for(img: Path, root: Path) -> Path | None:
    beside = img.with_suffix(".json")
    if beside.is_file():
        return beside
    parts = img.relative_to(root).parts
    for i in range(len(parts) - 1):  # .../images/<split>/X.jpg -> .../annotations/<split>/X.json
        if parts[i] == "images":
            cand = root.joinpath(*parts[:i], "annotations", *parts[i + 1:]).with_suffix(".json")
            if cand.is_file():
                return cand
    return None


def sa1b_folder_images(root: str | Path) -> list[Path]:
    """Every image under an extracted SA-1B folder, sorted (what :func:`iter_sa1b_folder` reads)."""
    return [p for p in _walk_files(Path(root)) if _is_image(p.name)]


def iter_sa1b_folder(root: str | Path, images: Iterable[str | Path] | None = None) -> Iterator[Item]:
    """Extracted SA-1B under ``root`` (recursive): ``X.jpg`` paired with ``X.json`` in the same folder, or
    the EdgeSAM layout ``images/<split>/X.jpg`` + ``annotations/<split>/X.json``. image_id is the stem.
    ``images``: read only these image files under ``root`` (a chunk of :func:`sa1b_folder_images`).

    Skips: an image without JSON, an unparsable JSON (pair skipped), degenerate annotations (image kept).
    """
    root = Path(root)
    if not root.is_dir():
        yield Skipped(str(root), "folder not found")
        return
    for img in (sa1b_folder_images(root) if images is None else [Path(p) for p in images]):
        js = _annotation_for(img, root)
        if js is None:
            yield Skipped(str(img), "missing annotation JSON")
            continue
        try:
            image_bytes, ann_bytes = img.read_bytes(), js.read_bytes()
        except OSError as exc:
            yield Skipped(str(img), f"unreadable: {_short(exc)}")
            continue
        yield from _pair(img.stem, image_bytes, str(img), ann_bytes, str(js))


# ---------------------------------------------------------------------------------------------------
# COCO
def mask_center_point(mask: np.ndarray) -> list[float]:
    """``[x, y]`` of the mask's centre click (:func:`edgesam.data.points.centre_click`) as floats."""
    from .points import centre_click

    x, y = centre_click(mask)
    return [float(x), float(y)]


def _coco_annotation(a: dict, height: int, width: int) -> dict:
    from .rle import decode_segmentation, encode_mask, mask_to_bbox

    if "segmentation" not in a:
        raise ValueError("no segmentation")
    mask = decode_segmentation(a["segmentation"], height, width)
    if mask.shape != (height, width) and height > 0 and width > 0:
        raise ValueError(f"mask shape {mask.shape} does not match the image {height}x{width}")
    area = int(mask.sum())
    if area == 0:
        raise ValueError("empty mask")
    bbox = mask_to_bbox(mask)
    try:  # keep the dataset's own box (COCO eval prompts use it) when it is sane
        x, y, w, h = _finite_numbers(a.get("bbox"), 4)
        if w > 0 and h > 0:
            bbox = [x, y, w, h]
    except (TypeError, ValueError):
        pass
    out = {"id": a.get("id"), "bbox": bbox, "area": area, "segmentation": encode_mask(mask),
           "point_coords": [mask_center_point(mask)]}
    if "category_id" in a:
        out["category_id"] = a["category_id"]
    return out


def _find_image(images_dir: Path, file_name: str) -> Path | None:
    cand = images_dir / file_name
    if cand.is_file():
        return cand
    alt = images_dir / Path(file_name).name
    return alt if alt.is_file() else None


def load_coco(instances_json: str | Path) -> tuple[list[dict], dict[Any, list[dict]]]:
    """Parse a COCO instances file -> (image entries with an ``id``, annotations grouped by ``image_id``).

    Raises ``OSError`` / ``ValueError`` / ``TypeError`` / ``RecursionError`` / ``UnicodeDecodeError`` for an
    unreadable or malformed file (:func:`iter_coco` turns them into one ``Skipped``).
    """
    with open(instances_json, "rb") as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError("no 'images' list at the top level")
    images = [im for im in doc["images"] if isinstance(im, dict) and "id" in im]
    anns_by_image: dict[Any, list[dict]] = {}
    anns = doc.get("annotations", [])
    if not isinstance(anns, list):
        raise ValueError("'annotations' is not a list")
    for a in anns:
        if isinstance(a, dict) and "image_id" in a:
            anns_by_image.setdefault(a["image_id"], []).append(a)
    return images, anns_by_image


COCO_ERRORS = (OSError, ValueError, TypeError, RecursionError, UnicodeDecodeError)


def iter_coco(images_dir: str | Path, instances_json: str | Path,
              parsed: tuple[list[dict], dict[Any, list[dict]]] | None = None) -> Iterator[Item]:
    """COCO instances (``images``, ``annotations`` with polygon, uncompressed-RLE or compressed-RLE
    segmentations) -> one :class:`RawRecord` per image with SA-1B-style annotations.

    Each non-crowd annotation becomes ``{"id", "bbox" (the file's XYWH box, or the mask's when that one is
    unusable), "area" (mask pixels), "segmentation" (compressed RLE, str counts), "point_coords" ([[x, y]]
    of the distance-transform peak), "category_id"}``; crowd annotations are left out silently. image_id is
    the file stem. Skips: an unreadable or malformed JSON (one ``Skipped`` for the whole set), a missing
    image file, an annotation whose segmentation cannot be decoded or is empty (the image is kept).
    ``parsed``: a chunk of :func:`load_coco`'s output to read instead of parsing ``instances_json``.
    """
    images_dir = Path(images_dir)
    js = str(instances_json)
    if parsed is None:
        try:
            parsed = load_coco(instances_json)
        except COCO_ERRORS as exc:
            yield Skipped(js, f"bad COCO JSON: {_short(exc)}")
            return
    images, anns_by_image = parsed
    for im in images:
        file_name = str(im.get("file_name", ""))
        path = _find_image(images_dir, file_name) if file_name else None
        if path is None:
            yield Skipped(str(images_dir / file_name), "image file missing")
            continue
        h, w = _int_or_none(im.get("height")) or 0, _int_or_none(im.get("width")) or 0
        out = []
        for a in anns_by_image.get(im["id"], []):
            if a.get("iscrowd"):
                continue
            try:
                out.append(_coco_annotation(a, h, w))
            except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
                yield Skipped(f"{js}#ann{a.get('id')}", f"bad annotation: {_short(exc)}")
            except Exception as exc:  # noqa: BLE001 - pycocotools raises bare Exception for odd input
                yield Skipped(f"{js}#ann{a.get('id')}", f"bad annotation: {_short(exc)}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            yield Skipped(str(path), f"unreadable: {_short(exc)}")
            continue
        yield RawRecord(path.stem, data, out, str(path), w or None, h or None)


# ---------------------------------------------------------------------------------------------------
# plain image folders
def iter_image_folder(root: str | Path, files: Iterable[str | Path] | None = None) -> Iterator[Item]:
    """Every image under ``root`` (recursive, extensions from ``IMAGE_EXTENSIONS``, any case), no annotations.

    image_id is the path relative to ``root`` without extension, ``/`` replaced by ``__``
    (``a/b/c.jpg`` -> ``"a__b__c"``), so ids stay unique across subfolders. ``files``: read only these
    image files under the folder ``root`` (a chunk of :func:`sa1b_folder_images`, which lists the same files).
    """
    root = Path(root)
    if root.is_file():
        files, base = [root], root.parent
    elif root.is_dir():
        files, base = (sa1b_folder_images(root) if files is None else [Path(p) for p in files]), root
    else:
        yield Skipped(str(root), "folder not found")
        return
    for p in files:
        image_id = p.relative_to(base).with_suffix("").as_posix().replace("/", "__")
        try:
            data = p.read_bytes()
        except OSError as exc:
            yield Skipped(str(p), f"unreadable: {_short(exc)}")
            continue
        yield RawRecord(image_id, data, [], str(p))


# ---------------------------------------------------------------------------------------------------
# detection and dispatch
def _image_stems(root: Path, limit: int = 100_000) -> set[str]:
    stems: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        stems.update(f.rsplit(".", 1)[0] for f in filenames if _is_image(f))
        if len(stems) >= limit:
            break
    return stems


def coco_instance_files(root: str | Path) -> list[Path]:
    """COCO instances files directly under ``root/annotations`` (see the module docstring's rule 2).

    Files whose name contains ``instances`` come first; when there are such files, only they are returned.
    """
    ann = Path(root) / "annotations"
    if not ann.is_dir():
        return []
    candidates = sorted(p for p in ann.glob("*.json") if p.is_file())
    if not candidates:
        return []
    stems = _image_stems(Path(root))
    found = []
    for j in candidates:
        if j.stem in stems:
            continue  # a per-image SA-1B JSON (images/X.jpg + annotations/X.json)
        try:
            with open(j, "rb") as f:
                head = f.read(65536)
        except OSError:
            continue
        if b'"images"' in head or b'"categories"' in head:
            found.append(j)
    named = [j for j in found if "instances" in j.name.lower()]
    return named or found


def coco_images_dir(root: Path, instances_json: Path) -> Path:
    split = instances_json.stem.rsplit("_", 1)[-1]
    for cand in (root / "images" / split, root / "images", root / split):
        if cand.is_dir():
            return cand
    return root


def _has_sa1b_pairs(root: Path) -> bool:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        names = set(filenames)
        for f in filenames:
            if _is_image(f) and f.rsplit(".", 1)[0] + ".json" in names:
                return True
        rel = Path(dirpath).relative_to(root).parts
        if "images" in rel:
            i = rel.index("images")
            mirror = root.joinpath(*rel[:i], "annotations", *rel[i + 1:])
            for f in filenames:
                if _is_image(f) and (mirror / (f.rsplit(".", 1)[0] + ".json")).is_file():
                    return True
    return False


def detect_format(path: str | Path) -> str:
    """One of ``FORMATS`` for ``path``, by the rules in this module's docstring (tar, coco, sa1b-folder,
    images, checked in that order). Raises ``FileNotFoundError`` when ``path`` does not exist."""
    if storage.is_uri(path):
        return _detect_remote(str(path))
    p = Path(path)
    if p.is_file():
        if p.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
            return "sa1b-tar"
        if _is_image(p.name):
            return "images"
        raise ValueError(f"cannot tell the dataset format of the file {p}")
    if not p.is_dir():
        raise FileNotFoundError(f"dataset path not found: {p}")
    if any(q.is_file() for q in p.glob("*.tar")):
        return "sa1b-tar"
    if coco_instance_files(p):
        return "coco"
    if _has_sa1b_pairs(p):
        return "sa1b-folder"
    return "images"


def _detect_remote(uri: str) -> str:
    """Object storage holds SA-1B tars (one ``.tar`` or a prefix of them), streamed by the tar reader."""
    if storage.is_file(uri) and uri.lower().endswith((".tar", ".tar.gz", ".tgz")):
        return "sa1b-tar"
    if storage.is_dir(uri) and storage.glob(uri, "*.tar"):
        return "sa1b-tar"
    if not storage.exists(uri):
        raise FileNotFoundError(f"dataset path not found: {uri}")
    raise ValueError(f"{uri}: from object storage the cache reads SA-1B tars (a .tar object or a prefix holding "
                     "*.tar); copy folders and COCO sets to a local or shared file system")


def list_sources(path: str | Path, fmt: str | None = None) -> list[str]:
    """The independent units of work under ``path``: each tar shard (sorted) for ``sa1b-tar``; the folder
    itself for the other formats. ``fmt`` defaults to :func:`detect_format`."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if storage.is_uri(path):
        return storage.glob(path, "*.tar") if fmt == "sa1b-tar" and storage.is_dir(path) else [str(path)]
    p = Path(path)
    if fmt == "sa1b-tar" and p.is_dir():
        return [str(t) for t in sorted(p.glob("*.tar")) if t.is_file()]
    return [str(p)]


def iter_source(source: str | Path, fmt: str) -> Iterator[Item]:
    """Read one unit from :func:`list_sources` in format ``fmt``.

    For ``coco`` the source may be the set's folder (every instances file under ``annotations/`` is read)
    or one instances JSON file (images are then looked up next to its ``annotations/`` folder).
    """
    if fmt == "sa1b-tar":
        return iter_sa1b_tar(source)
    if fmt == "sa1b-folder":
        return iter_sa1b_folder(source)
    if fmt == "images":
        return iter_image_folder(source)
    if fmt == "coco":
        return _iter_coco_source(Path(source))
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def _iter_coco_source(source: Path) -> Iterator[Item]:
    if source.is_file():
        root = source.parent.parent if source.parent.name == "annotations" else source.parent
        yield from iter_coco(coco_images_dir(root, source), source)
        return
    files = coco_instance_files(source)
    if not files:
        yield Skipped(str(source), "no COCO instances JSON under annotations/")
        return
    for js in files:
        yield from iter_coco(coco_images_dir(source, js), js)


def iter_any(path: str | Path, fmt: str | None = None, **kw: Any) -> Iterator[Item]:
    """Auto-detect the format of ``path`` (or use ``fmt``) and read every source under it.

    Keyword arguments: ``limit_sources`` (read only the first N sources)."""
    fmt = fmt or detect_format(path)
    sources = list_sources(path, fmt)
    limit = kw.pop("limit_sources", None)
    if kw:
        raise TypeError(f"iter_any got unexpected keyword arguments {sorted(kw)}")
    if limit:
        sources = sources[: int(limit)]
    for source in sources:
        yield from iter_source(source, fmt)
