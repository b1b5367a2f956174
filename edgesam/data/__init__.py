"""Datasets: readers (SA-1B, COCO, image folders), RLE, transforms, synthetic scenes, teacher cache.

Modules (import them directly; this package file stays light so ``edgesam.data.transforms`` does not pull in
OpenCV or pycocotools):

* :mod:`edgesam.data.records`: ``RawRecord`` / ``Skipped``, what readers yield;
* :mod:`edgesam.data.readers`: ``detect_format`` / ``list_sources`` / ``iter_source`` / ``iter_any``, and the
  readers ``iter_sa1b_tar`` (:mod:`~edgesam.data.sa1b_tar`), ``iter_sa1b_folder`` / ``iter_image_folder``
  (:mod:`~edgesam.data.folders`), ``iter_coco`` (:mod:`~edgesam.data.coco_reader`), local or ``s3://``
  (listing and reading through :mod:`~edgesam.data.dataset_files`; SA-1B JSON checks in
  :mod:`~edgesam.data.sa1b_json`);
* :mod:`edgesam.data.images`: ``decode_image`` (bytes -> RGB uint8), ``ImageDecodeError``, ``IMAGE_EXTENSIONS``;
* :mod:`edgesam.data.rle`: COCO RLE through pycocotools (``encode_mask(s)``, ``decode_rle``,
  ``decode_segmentation``, ``mask_to_bbox``, ``rle_area``);
* :mod:`edgesam.data.synthetic`: procedurally generated SA-1B shards with exact masks
  (``make_scene``, ``write_sa1b_shards``, ``ensure_sample_dataset``; CLI ``python -m edgesam.data.synthetic``).
* :mod:`edgesam.data.synthetic_dense`: dense SA-1B-like tars (1500x2250, >= 100 masks per image);
* :mod:`edgesam.data.read_units`: a dataset path -> bounded, streamed units of reading work (``plan_units``,
  ``iter_unit``), what the caching pipeline maps over.

The names above are also available as attributes of this package, imported on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "RawRecord": "records", "Skipped": "records",
    "decode_image": "images", "ImageDecodeError": "images", "IMAGE_EXTENSIONS": "images",
    "encode_mask": "rle", "encode_masks": "rle", "decode_rle": "rle", "decode_segmentation": "rle",
    "mask_to_bbox": "rle", "rle_area": "rle",
    "iter_sa1b_tar": "readers", "iter_sa1b_folder": "readers", "iter_coco": "readers",
    "iter_image_folder": "readers", "detect_format": "readers", "list_sources": "readers",
    "iter_source": "readers", "iter_any": "readers",
    "make_scene": "synthetic", "write_sa1b_shards": "synthetic", "write_sa1b_folder": "synthetic",
    "write_coco_set": "synthetic", "ensure_sample_dataset": "synthetic",
    "make_dense_scene": "synthetic_dense", "write_dense_shards": "synthetic_dense",
    "plan_units": "read_units", "iter_unit": "read_units",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
