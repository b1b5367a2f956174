"""Label Studio brush RLE: the ``rle`` field of a ``brushlabels`` result (``"format": "rle"``).

Label Studio's brush tool stores a mask as the RGBA bytes of an image (``H*W*4`` values, row-major, pixel by
pixel) packed with the ``@thi.ng/rle-pack`` bit format, and sends the packed bytes as a JSON list of ints
(0..255). The bit stream is MSB first:

* header: 32 bits number of words ``num``; 5 bits ``word_size - 1``; 4 x 4 bits ``rle_sizes[i] - 1``
  (Label Studio: word size 8, repeat-count sizes ``(3, 4, 8, 16)`` bits);
* then blocks until ``num`` words are produced, each: 1 bit flag (1 = run, 0 = literal chunk), 2 bits size
  class ``t``, ``rle_sizes[t]`` bits ``count - 1``, then one word (a run of ``count`` equal words) or ``count``
  words (a literal chunk);
* zero padding to a whole byte.

:func:`encode_rle` writes every run of 2 or more equal words as run blocks (split at 2**16 words) and every
single word as a literal chunk of one, as Label Studio's own Python converter does; :func:`decode_rle` reads
any valid stream (also multi-word literal chunks). Masks go through :func:`mask_to_rle` /
:func:`rle_to_mask` (all four channels 255 inside the mask, 0 outside; the alpha channel is read back).
The encoder is vectorised with numpy; the decoder walks the blocks in Python (a few reads per run).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)
HEADER_BITS = 32 + 5 + 4 * 4


class BrushRLEError(ValueError):
    """A malformed or oversized brush RLE."""


def _pack_fields(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Concatenate unsigned ``values`` (F,) written MSB first with ``widths`` (F,) bits each -> bytes
    (zero-padded to a whole byte)."""
    values = values.astype(np.uint64)
    widths = widths.astype(np.int64)
    total = int(widths.sum())
    field = np.repeat(np.arange(len(widths)), widths)
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    shift = (widths[field] - 1 - (np.arange(total) - starts[field])).astype(np.uint64)
    bits = ((values[field] >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tobytes()


def encode_rle(words: np.ndarray, word_size: int = WORD_SIZE, rle_sizes: Sequence[int] = RLE_SIZES) -> list[int]:
    """1-D array of unsigned words (< 2**word_size) -> packed bytes as a list of ints (Label Studio's ``rle``)."""
    words = np.asarray(words).ravel()
    if words.size and (words.min() < 0 or int(words.max()) >= 2 ** word_size):
        raise BrushRLEError(f"words must lie in [0, 2**{word_size})")
    if words.size >= 2 ** 32:
        raise BrushRLEError("at most 2**32 - 1 words")
    sizes = np.asarray(rle_sizes, np.int64)
    header_v = np.array([words.size, word_size - 1, *(sizes - 1)], np.uint64)
    header_w = np.array([32, 5, 4, 4, 4, 4], np.int64)
    if words.size == 0:
        return list(_pack_fields(header_v, header_w))
    change = np.flatnonzero(words[1:] != words[:-1]) + 1
    run_start = np.concatenate([[0], change])
    run_len = np.diff(np.concatenate([run_start, [words.size]]))
    run_val = words[run_start].astype(np.uint64)
    max_count = 1 << int(sizes.max())  # longest run one block can hold
    blocks = -(-run_len // max_count)  # ceil: runs longer than that split into several blocks
    rid = np.repeat(np.arange(run_len.size), blocks)
    offset = np.arange(rid.size) - np.repeat(np.cumsum(blocks) - blocks, blocks)
    count = np.minimum(max_count, run_len[rid] - offset * max_count)
    flag = (run_len[rid] > 1).astype(np.uint64)  # single words: a literal chunk of one (count 1)
    cls = np.searchsorted(1 << sizes, count, side="left")  # smallest class with count - 1 < 2**size
    values = np.stack([flag, cls.astype(np.uint64), (count - 1).astype(np.uint64), run_val[rid]], 1).ravel()
    widths = np.stack([np.ones_like(cls), np.full_like(cls, 2), sizes[cls], np.full_like(cls, word_size)], 1).ravel()
    return list(_pack_fields(np.concatenate([header_v, values]), np.concatenate([header_w, widths])))


class _Bits:
    """MSB-first reader over bytes with bounds checks (reads of up to 32 bits, each from the few bytes it spans)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = 8 * len(data)
        self.pos = 0

    def read(self, n: int) -> int:
        end = self.pos + n
        if end > self.size:
            raise BrushRLEError("brush RLE is truncated")
        first, last = self.pos >> 3, (end + 7) >> 3
        chunk = int.from_bytes(self.data[first:last], "big")
        self.pos = end
        return (chunk >> (8 * last - end)) & ((1 << n) - 1)


def _as_bytes(rle: object) -> bytes:
    if isinstance(rle, (bytes, bytearray)):
        return bytes(rle)
    if not isinstance(rle, (list, tuple, np.ndarray)):
        raise BrushRLEError(f"rle must be a list of byte values, got {type(rle).__name__}")
    arr = np.asarray(rle)
    if arr.ndim != 1 or (arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255)):
        raise BrushRLEError("rle must be a flat list of integers in 0..255")
    return arr.astype(np.uint8).tobytes()


def decode_rle(rle: object, max_words: int = 1 << 28) -> np.ndarray:
    """Packed bytes (list of ints or bytes) -> 1-D array of words (uint8/16/32 by word size).

    Raises :class:`BrushRLEError` on a malformed stream or a header asking for more than ``max_words``."""
    src = _Bits(_as_bytes(rle))
    num, word_size = src.read(32), src.read(5) + 1
    sizes = [src.read(4) + 1 for _ in range(4)]
    if num > max_words:
        raise BrushRLEError(f"brush RLE declares {num} words, over the limit of {max_words}")
    out = np.zeros(num, np.uint8 if word_size <= 8 else np.uint16 if word_size <= 16 else np.uint32)
    i = 0
    while i < num:
        is_run = src.read(1)
        j = i + 1 + src.read(sizes[src.read(2)])
        if j > num:
            raise BrushRLEError(f"brush RLE block runs past the {num} declared words")
        if is_run:
            out[i:j] = src.read(word_size)
        else:
            for k in range(i, j):
                out[k] = src.read(word_size)
        i = j
    return out


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """bool/uint8 (H, W) mask -> Label Studio brush ``rle`` (RGBA, 255 inside)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise BrushRLEError(f"mask must be (H, W), got shape {mask.shape}")
    return encode_rle(np.repeat((mask != 0).astype(np.uint8).ravel() * 255, 4))


def rle_to_mask(rle: object, height: int, width: int) -> np.ndarray:
    """Label Studio brush ``rle`` -> bool (H, W) mask (alpha channel > 0)."""
    words = decode_rle(rle, max_words=4 * height * width)
    if words.size != 4 * height * width:
        raise BrushRLEError(f"brush RLE holds {words.size} values, expected 4 x {height} x {width}")
    return words.reshape(height, width, 4)[..., 3] > 0
