"""Image decoding and the RLE helpers, on real encoded files (PNG, JPEG, headers that lie about their size)."""
from __future__ import annotations

import io
import json
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from edgesam.data.images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image
from edgesam.data.rle import (decode_rle, decode_rles, decode_segmentation, encode_mask, encode_masks, mask_to_bbox,
                              rle_area, to_uncompressed_rle)
from tests.imaging import png_bytes


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (no real pixel data)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------
# images
def test_decode_image_modes_to_rgb():
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    out = decode_image(png_bytes(rgb))
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3) and np.array_equal(out, rgb)
    assert out.flags.writeable and out.flags.c_contiguous
    gray = np.arange(120, dtype=np.uint8).reshape(12, 10)
    out = decode_image(png_bytes(gray))
    assert out.shape == (12, 10, 3) and np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)
    assert out.flags.writeable
    rgba = np.dstack([rgb, np.full((12, 10), 7, np.uint8)])
    assert np.array_equal(decode_image(png_bytes(rgba)), rgb)
    la = Image.fromarray(np.dstack([gray, gray]), mode="LA")
    buf = io.BytesIO()
    la.save(buf, format="PNG")
    assert np.array_equal(decode_image(buf.getvalue())[..., 1], gray)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    out = decode_image(buf.getvalue())
    assert out.shape == (12, 10, 3) and np.array_equal(out, np.asarray(pal.convert("RGB")))
    # 16-bit grayscale: 65535 -> 255, 257 * v -> v
    g16 = (np.arange(120, dtype=np.uint16).reshape(12, 10) * 257)
    g16[0, 0] = 65535
    out = decode_image(png_bytes(g16))
    expect = (g16 // 257).astype(np.uint8)
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3) and np.array_equal(out[..., 0], expect)
    # 16-bit colour PNG (written by OpenCV, BGR order)
    c16 = np.zeros((9, 11, 3), np.uint16)
    c16[..., 2], c16[..., 1], c16[..., 0] = 65535, 257 * 50, 0
    ok, enc = cv2.imencode(".png", c16)
    assert ok
    out = decode_image(enc.tobytes())
    assert out.shape == (9, 11, 3) and out[0, 0].tolist() == [255, 50, 0]


def test_decode_image_honours_exif_orientation():
    arr = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high
    arr[:5, :5] = [255, 0, 0]  # red top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(buf.getvalue(), "rotated.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:4, -4:, 0].mean() > 200 and out[:4, :4, 0].mean() < 50  # the corner moved to the top right
    plain = io.BytesIO()
    Image.fromarray(arr).save(plain, format="JPEG", quality=95)
    assert decode_image(plain.getvalue()).shape == (20, 40, 3)


def test_decode_image_errors_name_the_source():
    with pytest.raises(ImageDecodeError, match=r"not an image.*shard\.tar::sa_1\.jpg"):
        decode_image(b"hello, this is text", "shard.tar::sa_1.jpg")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"", "x.png")
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(noise)
    with pytest.raises(ImageDecodeError, match=r"truncated.*cut\.png"):
        decode_image(data[: len(data) // 2], "cut.png")
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], "cut.jpg")
    tiny = png_bytes(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ImageDecodeError, match=r"too small.*1x1.*tiny\.png"):
        decode_image(tiny, "tiny.png")
    assert decode_image(tiny, min_side=1).shape == (1, 1, 3)
    assert decode_image(png_bytes(np.zeros((8, 8, 3), np.uint8))).shape == (8, 8, 3)
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(png_bytes(noise), "big.png", max_pixels=64 * 64 - 1)


def test_decode_image_pixel_limits_never_crash():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither PIL's warning nor its own exception may escape
        for w, h in [(10_000, 6_000), (10_000, 10_000), (20_000, 20_000), (100_000, 100_000)]:
            with pytest.raises(ImageDecodeError, match=rf"too large.*bomb\.png"):
                decode_image(png_header_only(w, h), "bomb.png")
        # the header of a permitted size passes the size check and fails on the (missing) pixel data
        with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
            decode_image(png_header_only(100, 100), "fake.png")
    assert ".jpg" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------------------------------
# RLE
def test_rle_helpers_round_trip():
    rng = np.random.default_rng(3)
    masks = rng.random((3, 17, 23)) > 0.6
    masks[2] = False
    rles = encode_masks(masks)
    assert len(rles) == 3 and all(isinstance(r["counts"], str) and r["size"] == [17, 23] for r in rles)
    json.dumps(rles)  # JSON-safe
    assert rles[0] == encode_mask(masks[0]) == encode_mask(masks[0].astype(np.uint8))
    for m, r in zip(masks, rles):
        assert np.array_equal(decode_rle(r), m)
        assert np.array_equal(decode_rle({"size": r["size"], "counts": r["counts"].encode()}), m)
        assert rle_area(r) == int(m.sum())
        unc = to_uncompressed_rle(m)
        assert isinstance(unc["counts"], list) and sum(unc["counts"]) == 17 * 23
        assert np.array_equal(decode_rle(unc), m) and rle_area(unc) == int(m.sum())
        assert np.array_equal(decode_segmentation(unc, 17, 23), m)
        assert np.array_equal(decode_segmentation(r, 17, 23), m)
    assert np.array_equal(decode_rles(rles), masks)
    assert encode_masks(np.zeros((0, 4, 4), bool)) == []
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert mask_to_bbox(m) == [3.0, 2.0, 6.0, 3.0] and mask_to_bbox(np.zeros((4, 4), bool)) == [0.0] * 4
    # polygons: pixel-corner coordinates, several polygons are merged
    poly = decode_segmentation([[3, 2, 9, 2, 9, 5, 3, 5], [0, 8, 2, 8, 2, 10, 0, 10]], 10, 12)
    expect = m.copy()
    expect[8:10, 0:2] = True
    assert np.array_equal(poly, expect)
    assert np.array_equal(decode_segmentation([3, 2, 9, 2, 9, 5, 3, 5], 10, 12), m)  # a flat single polygon
    with pytest.raises(ValueError):
        decode_segmentation([[1, 1, 2, 2]], 10, 12)  # no polygon with 3 points
    with pytest.raises(ValueError, match="does not match"):
        decode_segmentation(encode_mask(m), 11, 12)
    with pytest.raises(ValueError):
        decode_segmentation("nope", 10, 12)
