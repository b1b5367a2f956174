"""Writing SA-1B-style tar shards: ``sa_<k>.jpg`` + ``sa_<k>.json`` pairs, adjacent, with fixed metadata."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Callable

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
