"""ONNX flavours: decoder graphs that match existing clients' contracts (``python -m edgesam.export --flavor``).

``native`` (``onnx_export``): our batched decoder, inputs ``image_embeddings, point_coords (N,P,2),
point_labels (N,P), mask_input, has_mask_input``, outputs ``scores (N,4), masks (N,4,256,256)``.

``edgesam``: EdgeSAM's own export contract (its ``SamPredictorONNX``, X-AnyLabeling's EdgeSAM loader):
    inputs  ``image_embeddings`` float32 (1,256,64,64), ``point_coords`` float32 (1,P,2) x-y in the resized
            input frame, ``point_labels`` float32 (1,P) (0 neg, 1 pos, 2/3 box corners, -1 padding);
    outputs ``scores`` float32 (1,4) IoU-head predictions, ``masks`` float32 (1,4,256,256) low-res logits.
    These clients send point-only prompts without SAM's padding point; the graph appends one when the
    prompt has no box corner and no padding point, so they get what the PyTorch predictor gives.

``sam``: segment-anything's ``SamOnnxModel`` contract (SAM web demo, CVAT's browser decoder), built by
subclassing the installed ``segment_anything.utils.onnx.SamOnnxModel`` over our prompt encoder and decoder:
    inputs  ``image_embeddings`` (1,256,64,64), ``point_coords`` (1,P,2), ``point_labels`` (1,P),
            ``mask_input`` (1,1,256,256), ``has_mask_input`` (1,), ``orig_im_size`` float32 (2,) = (H, W);
    outputs ``masks`` (1,C,H,W) logits at the original size, ``iou_predictions`` (1,C),
            ``low_res_masks`` (1,C,256,256). C = 1 (SAM's ``--return-single-mask``, what those clients
            load) or 4 with ``--sam-multimask``. The client pads point-only prompts itself, as SAM does.

The encoder is our exact-bicubic graph: float ``(B,3,S,S)`` normalised and padded (``--encoder-input float``)
or uint8 ``(1,3,h,w)`` resized by the client (``--encoder-input uint8``, :mod:`.uint8_encoder`).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from segment_anything.utils.onnx import SamOnnxModel
from torch import nn

from ..models.edgesam import EdgeSAM
from ..models.prompt_decoder import PAD, PromptDecoder
from ..models.teacher import sha256_file
from .onnx_common import (DECODER_FILE, DEFAULT_OPSET, ENCODER_FILE, FP32_SCOPES_KEY, META_FILE, _export, _finalise,
                          _fp32_scopes)
from .onnx_native import export_decoder, export_encoder
from .uint8_encoder import export_uint8_encoder

FLAVORS = ("native", "edgesam", "sam")
ENCODER_INPUT_KINDS = ("float", "uint8")
EDGESAM_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
EDGESAM_DECODER_OUTPUTS = ("scores", "masks")
SAM_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
SAM_DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")


def _prompt_decoder(model: EdgeSAM) -> PromptDecoder:
    pd = model.prompt_decoder if isinstance(getattr(model, "prompt_decoder", None), nn.Module) \
        else model.as_prompt_decoder()
    return copy.deepcopy(pd).cpu().float().eval()


def pad_point_only(point_coords: torch.Tensor, point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append SAM's padding point (0,0) labelled -1 to a (1,P) prompt that has no box corner (2/3) and no
    padding point yet; otherwise return it unchanged. Traceable: the kept length is computed in the graph."""
    p = point_labels.shape[1]
    has = ((point_labels == PAD) | (point_labels >= 2)).any(dim=1)  # (1,)
    coords = torch.cat([point_coords, torch.zeros_like(point_coords[:, :1])], dim=1)
    labels = torch.cat([point_labels, torch.full_like(point_labels[:, :1], PAD)], dim=1)
    keep = torch.arange(p + 1 - has.to(torch.int64)[0], device=point_labels.device)
    return coords.index_select(1, keep), labels.index_select(1, keep)


class EdgeSamFlavorDecoder(nn.Module):
    """EdgeSAM's 3-input decoder contract: (1,256,h,w), (1,P,2), (1,P) -> scores (1,4), masks (1,4,4h,4w)."""

    def __init__(self, prompt_decoder: PromptDecoder, pad_points: bool = True) -> None:
        super().__init__()
        self.prompt_encoder = prompt_decoder.prompt_encoder
        self.mask_decoder = prompt_decoder.mask_decoder
        self.pad_points = pad_points

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pad_points:
            point_coords, point_labels = pad_point_only(point_coords, point_labels)
        pe = self.prompt_encoder
        sparse = pe.embed_points(point_coords, point_labels)
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *image_embeddings.shape[-2:])
        masks, scores = self.mask_decoder.predict_all(image_embeddings, pe.get_dense_pe(), sparse, dense)
        return scores, masks


class _SamLike(nn.Module):
    """The attributes ``SamOnnxModel`` reads from a ``Sam``: prompt encoder, mask decoder, input size."""

    mask_threshold = 0.0

    def __init__(self, prompt_decoder: PromptDecoder, img_size: int) -> None:
        super().__init__()
        self.prompt_encoder = prompt_decoder.prompt_encoder
        self.mask_decoder = prompt_decoder.mask_decoder
        self.image_encoder = SimpleNamespace(img_size=img_size)


class SamFlavorDecoder(SamOnnxModel):
    """segment-anything's ``SamOnnxModel`` over EdgeSAM's prompt encoder and mask decoder (same math: EdgeSAM
    keeps SAM's decoder; labels 2/3 are box corners through ``point_embeddings[2/3]``)."""

    def __init__(self, prompt_decoder: PromptDecoder, img_size: int, return_single_mask: bool = True) -> None:
        super().__init__(_SamLike(prompt_decoder, img_size), return_single_mask=return_single_mask)

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """SAM's upsample -> crop -> resize, with the crop as index_select over ``arange(size)`` so that it stays
        dynamic in the graph (the parent's ``int()`` crop is frozen at the trace example's size by this
        torch's exporter)."""
        s = self.img_size
        masks = nn.functional.interpolate(masks, size=(s, s), mode="bilinear", align_corners=False)
        hw = self.resize_longest_image_size(orig_im_size, s)
        masks = masks.index_select(2, torch.arange(hw[0], device=masks.device))
        masks = masks.index_select(3, torch.arange(hw[1], device=masks.device))
        size = orig_im_size.to(torch.int64)
        return nn.functional.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)


def export_edgesam_decoder(model: EdgeSAM, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    path = Path(path)
    wrapper = EdgeSamFlavorDecoder(_prompt_decoder(model)).eval()
    h = model.img_size // 16
    args = (torch.randn(1, 256, h, h), torch.rand(1, 3, 2) * model.img_size, torch.tensor([[1.0, 0.0, 1.0]]))
    points = {1: "num_points"}
    with torch.no_grad():
        _export(wrapper, args, path, EDGESAM_DECODER_INPUTS, EDGESAM_DECODER_OUTPUTS, opset,
                {"point_coords": points, "point_labels": points})
    _finalise(path, {FP32_SCOPES_KEY: json.dumps(_fp32_scopes(path)), "edgesam.img_size": str(model.img_size),
                     "edgesam.flavor": "edgesam"}, {"scores": (1, 4), "masks": (1, 4, 4 * h, 4 * h)})
    return path


def export_sam_decoder(model: EdgeSAM, path: str | Path, opset: int = DEFAULT_OPSET, single_mask: bool = True) -> Path:
    path = Path(path)
    wrapper = SamFlavorDecoder(_prompt_decoder(model), model.img_size, return_single_mask=single_mask).eval()
    s, h = model.img_size, model.img_size // 16
    args = (torch.randn(1, 256, h, h), torch.rand(1, 3, 2) * s, torch.tensor([[1.0, 0.0, -1.0]]),
            torch.zeros(1, 1, 4 * h, 4 * h), torch.zeros(1), torch.tensor([s * 0.75, float(s)]))
    points = {1: "num_points"}
    c = 1 if single_mask else 4
    with torch.no_grad():
        _export(wrapper, args, path, SAM_DECODER_INPUTS, SAM_DECODER_OUTPUTS, opset,
                {"point_coords": points, "point_labels": points, "masks": {2: "height", 3: "width"}})
    _finalise(path, {FP32_SCOPES_KEY: json.dumps(_fp32_scopes(path)), "edgesam.img_size": str(s),
                     "edgesam.flavor": "sam", "edgesam.single_mask": str(single_mask)},
              {"masks": (1, c, "height", "width"), "iou_predictions": (1, c), "low_res_masks": (1, c, 4 * h, 4 * h)})
    return path


def export_flavor(model: EdgeSAM, out_dir: str | Path, flavor: str, encoder_input: str = "float", fuse: bool = True,
                  opset: int = DEFAULT_OPSET, checkpoint_sha256: str | None = None, sam_single_mask: bool = True,
                  cubic_as_conv: bool = True) -> dict[str, Path]:
    """Write ``encoder.onnx`` (float or uint8 input), ``decoder.onnx`` (the flavour's contract) and
    ``export_meta.json`` into ``out_dir``. ``native`` + ``float`` is :func:`onnx_export.export_all`'s job."""
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    if encoder_input not in ENCODER_INPUT_KINDS:
        raise ValueError(f"encoder_input must be one of {ENCODER_INPUT_KINDS}, got {encoder_input!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    enc = (export_uint8_encoder(model, out / ENCODER_FILE, fuse=fuse, opset=opset) if encoder_input == "uint8"
           else export_encoder(model, out / ENCODER_FILE, fuse=fuse, opset=opset, cubic_as_conv=cubic_as_conv))
    if flavor == "edgesam":
        dec = export_edgesam_decoder(model, out / DECODER_FILE, opset)
    elif flavor == "sam":
        dec = export_sam_decoder(model, out / DECODER_FILE, opset, single_mask=sam_single_mask)
    else:
        dec = export_decoder(model, out / DECODER_FILE, opset)
    meta = {"flavor": flavor, "encoder_input": encoder_input, "img_size": int(model.img_size), "opset": int(opset),
            "fused": bool(fuse), "checkpoint_sha256": checkpoint_sha256 or "unknown (in-memory model)",
            "random_weights": checkpoint_sha256 == "random", "files": {"encoder": enc.name, "decoder": dec.name},
            "sha256": {"encoder": sha256_file(enc), "decoder": sha256_file(dec)},
            "sam_single_mask": bool(sam_single_mask) if flavor == "sam" else None,
            "torch_version": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    meta_path = out / META_FILE
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {"encoder": enc, "decoder": dec, "meta": meta_path}


def add_flavor_args(parser: argparse.ArgumentParser) -> None:
    """The CLI options of this module (added to ``python -m edgesam.export``)."""
    parser.add_argument("--flavor", choices=FLAVORS, default="native",
                        help="decoder contract: native (ours, batched), edgesam (EdgeSAM's 3-input ONNX: X-AnyLabeling "
                             "EdgeSAM loader), sam (segment-anything's SamOnnxModel: SAM web demo, CVAT)")
    parser.add_argument("--encoder-input", choices=ENCODER_INPUT_KINDS, default="float",
                        help="float: (B,3,S,S) normalised and padded; uint8: (1,3,h,w) RGB resized to long side S by "
                             "the client (X-AnyLabeling), normalised and padded in the graph")
    parser.add_argument("--sam-multimask", action="store_true",
                        help="--flavor sam: return all 4 masks instead of SAM's single-mask selection")


def wants_flavor(args: argparse.Namespace) -> bool:
    return args.flavor != "native" or args.encoder_input != "float"
