"""Interactive predictor with SamPredictor semantics (coordinates in the original image frame).

``set_image`` encodes once; ``predict`` / ``predict_batch`` decode prompts against the cached embedding.
Masks are ranked by the stability score by default: EdgeSAM's IoU head is not distilled.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.transforms import ResizeLongestSide, normalize_pad, postprocess_masks
from ..models.prompt_decoder import BOX_BR, BOX_TL, PAD, select_outputs, stability_score
from .backends import DecoderBackend, EncoderBackend, TorchDecoder, TorchEncoder


def as_rgb_uint8(image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """Validate an image and convert grayscale (H,W)/(H,W,1) and RGBA (H,W,4) to RGB uint8 (H,W,3)."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[..., :3]
    if image_format.upper() == "BGR":
        image = image[..., ::-1]
    elif image_format.upper() != "RGB":
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    return np.ascontiguousarray(image)


@dataclass
class Prediction:
    """masks (N,C,H,W) bool or logits; scores (N,C) ranking score; iou (N,C) IoU head; stability (N,C);
    low_res_logits (N,C,S/4,S/4)."""

    masks: np.ndarray
    scores: np.ndarray
    iou: np.ndarray
    stability: np.ndarray
    low_res_logits: np.ndarray


class Predictor:
    """SAM-style predictor over any encoder/decoder backend pair."""

    def __init__(self, encoder: EncoderBackend, decoder: DecoderBackend, max_prompts: int = 256) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.img_size = encoder.img_size
        self.transform = ResizeLongestSide(self.img_size)
        self.max_prompts = max_prompts
        self.reset_image()

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: str = "cpu") -> "Predictor":
        """Torch backends from an :class:`EdgeSAM` (or a :class:`SamTeacher`)."""
        pd = model.prompt_decoder if isinstance(getattr(model, "prompt_decoder", None), torch.nn.Module) \
            else model.as_prompt_decoder()
        return cls(TorchEncoder(model.image_encoder, model.img_size, device), TorchDecoder(pd, device))

    def reset_image(self) -> None:
        self.embedding: np.ndarray | None = None
        self.original_hw: tuple[int, int] | None = None
        self.input_hw: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an image (uint8 HxWx3 RGB, any size; grayscale and RGBA are converted)."""
        image = as_rgb_uint8(image, image_format)
        resized = self.transform.apply_image(image)
        x = normalize_pad(resized, self.img_size).numpy()
        self.set_embedding(self.encoder(x), image.shape[:2], tuple(resized.shape[-2:]))

    def set_embedding(self, embedding: np.ndarray, original_hw: tuple[int, int], input_hw: tuple[int, int] | None = None) -> None:
        """Use a precomputed embedding (1,256,S/16,S/16) for an image of ``original_hw``."""
        from ..data.transforms import resized_shape

        expected = (1, 256, self.img_size // 16, self.img_size // 16)
        if tuple(embedding.shape) != expected:
            raise ValueError(f"embedding must have shape {expected}, got {tuple(embedding.shape)}")
        self.embedding = np.asarray(embedding, dtype=np.float32)
        self.original_hw = (int(original_hw[0]), int(original_hw[1]))
        self.input_hw = input_hw or resized_shape(*self.original_hw, self.img_size)

    # -- prompt validation ------------------------------------------------------------------------
    def _check_xy(self, xy: np.ndarray, what: str) -> None:
        h, w = self.original_hw
        if not np.all(np.isfinite(xy)):
            raise ValueError(f"{what} contain non-finite values")
        if np.any(xy[..., 0] < 0) or np.any(xy[..., 0] > w) or np.any(xy[..., 1] < 0) or np.any(xy[..., 1] > h):
            raise ValueError(f"{what} outside the image (width {w}, height {h}): x must be in [0, {w}], y in [0, {h}]")

    def _build_prompts(self, point_coords, point_labels, boxes, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        """-> coords (N,P,2) in the input frame and labels (N,P)."""
        coords_list, labels_list = [], []
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise ValueError("point_coords and point_labels must be given together")
            pc = np.asarray(point_coords, dtype=np.float32)
            pl = np.asarray(point_labels)
            if pc.ndim == 2:
                pc = pc[None]
            if pl.ndim == 1:
                pl = pl[None]
            if pc.ndim != 3 or pc.shape[-1] != 2:
                raise ValueError(f"point_coords must have shape (P,2) or (N,P,2), got {np.asarray(point_coords).shape}")
            if pl.shape != pc.shape[:2]:
                raise ValueError(f"point_labels shape {pl.shape} does not match point_coords {pc.shape[:2]} (one label per point)")
            if pc.shape[1] == 0:
                raise ValueError("point_coords is empty")
            if not np.all(np.isin(pl, (0, 1))):
                raise ValueError("point_labels must be 0 (negative) or 1 (positive)")
            self._check_xy(pc, "point_coords")
            coords_list.append(self.transform.apply_coords(pc, self.original_hw))
            labels_list.append(pl.astype(np.float32))
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float32)
            if b.ndim == 1:
                b = b[None]
            if b.ndim != 2 or b.shape[-1] != 4:
                raise ValueError(f"box must have shape (4,) or (N,4) XYXY, got {np.asarray(boxes).shape}")
            self._check_xy(b.reshape(-1, 2, 2), "box corners")
            if np.any(b[:, 2] < b[:, 0]) or np.any(b[:, 3] < b[:, 1]):
                raise ValueError("box must be XYXY with x1 >= x0 and y1 >= y0")
            corners = self.transform.apply_boxes(b, self.original_hw).reshape(-1, 2, 2)
            coords_list.append(corners)
            labels_list.append(np.tile(np.array([[BOX_TL, BOX_BR]], np.float32), (len(b), 1)))
        if not coords_list:
            raise ValueError("no prompt given: pass point_coords/point_labels and/or box")
        if len(coords_list) == 2:
            if coords_list[0].shape[0] != coords_list[1].shape[0]:
                if coords_list[0].shape[0] == 1:
                    coords_list[0] = np.repeat(coords_list[0], coords_list[1].shape[0], 0)
                    labels_list[0] = np.repeat(labels_list[0], coords_list[1].shape[0], 0)
                else:
                    raise ValueError(f"{coords_list[0].shape[0]} point sets but {coords_list[1].shape[0]} boxes")
        coords = np.concatenate(coords_list, axis=1)
        labels = np.concatenate(labels_list, axis=1)
        if boxes is None:  # SAM appends a padding point to point-only prompts
            coords = np.concatenate([coords, np.zeros((coords.shape[0], 1, 2), np.float32)], axis=1)
            labels = np.concatenate([labels, np.full((labels.shape[0], 1), PAD, np.float32)], axis=1)
        if coords.shape[0] > self.max_prompts:
            raise ValueError(f"{coords.shape[0]} prompts exceed the limit of {self.max_prompts} per call")
        return coords, labels

    def predict_batch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      num_outputs: int = 1, return_logits: bool = False, score: str = "stability") -> Prediction:
        """Decode N prompts in one decoder call.

        point_coords (N,P,2) / point_labels (N,P) and/or boxes (N,4) XYXY, original frame.
        mask_input: (N,1,S/4,S/4) low-res logits from a previous call, or None.
        """
        if self.embedding is None:
            raise RuntimeError("call set_image() before predict()")
        if num_outputs not in (1, 3, 4):
            raise ValueError(f"num_outputs must be 1, 3 or 4, got {num_outputs}")
        if score not in ("stability", "iou"):
            raise ValueError("score must be 'stability' or 'iou'")
        coords, labels = self._build_prompts(point_coords, point_labels, boxes, None)
        low = self.img_size // 4
        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32)
            if mask_input.ndim == 3:
                mask_input = mask_input[None]
            if mask_input.shape[1:] != (1, low, low) or mask_input.shape[0] not in (1, coords.shape[0]):
                raise ValueError(f"mask_input must have shape (N,1,{low},{low}), got {mask_input.shape}")
            mask_input = np.broadcast_to(mask_input, (coords.shape[0], 1, low, low)).copy()
        logits, iou = self.decoder(self.embedding, coords, labels, mask_input)
        logits_t, iou_t = select_outputs(torch.from_numpy(logits), torch.from_numpy(iou), num_outputs)
        stab = stability_score(logits_t)
        masks = postprocess_masks(logits_t, self.input_hw, self.original_hw, self.img_size)
        masks_np = masks.numpy() if return_logits else (masks > 0.0).numpy()
        scores = stab if score == "stability" else iou_t
        return Prediction(masks_np, scores.numpy(), iou_t.numpy(), stab.numpy(), logits_t.numpy())

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, num_outputs: int = 1,
                return_logits: bool = False, score: str = "stability") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One prompt (points (P,2) + labels (P,) and/or box (4,)) -> (masks (C,H,W), scores (C,), low-res (C,S/4,S/4))."""
        if box is not None and np.asarray(box).ndim == 2 and np.asarray(box).shape[0] != 1:
            raise ValueError("predict() takes one box; use predict_batch() for several")
        if point_coords is not None and np.asarray(point_coords).ndim == 3:
            raise ValueError("predict() takes points (P,2); use predict_batch() for (N,P,2)")
        p = self.predict_batch(point_coords, point_labels, box, mask_input, num_outputs, return_logits, score)
        return p.masks[0], p.scores[0], p.low_res_logits[0]
