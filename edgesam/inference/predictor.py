"""Interactive predictor: a drop-in for ``segment_anything.SamPredictor`` and EdgeSAM's predictor.

Coordinates are x-y pixels in the original image frame (``predict``) or in the resized input frame
(``predict_torch``). Preprocessing is SAM's (``edgesam.data.transforms``: PIL resize of uint8, normalise,
pad). ``predict`` follows SamPredictor: 3 multimask outputs with IoU-head scores by default; EdgeSAM's
``num_multimask_outputs`` (1, 3, 4) and ``use_stability_score`` are accepted too.

``predict_batch`` decodes N prompts in one decoder call and upsamples to full size only the outputs the
caller keeps (``select``): the token choice is made on the low-res logits first.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..data.transforms import ResizeLongestSide, normalize_pad, postprocess_masks, resized_shape
from ..models.prompt_decoder import BOX_BR, BOX_TL, PAD, select_outputs, stability_score
from .backends import DecoderBackend, EncoderBackend, TorchDecoder, TorchEncoder

SELECT_CHOICES = ("all", "stability", "iou")
_SELECT_ALIASES = {"best_stability": "stability", "best_iou": "iou"}
POINT_LABELS = (PAD, 0, 1, BOX_TL, BOX_BR)  # what SAM's ONNX decoder accepts: padding, neg, pos, box corners


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
    """masks (N,K,H,W) bool or logits; scores (N,K) ranking score; iou (N,K) IoU head; stability (N,K);
    low_res_logits (N,K,S/4,S/4); output_index (N,K) int: each output's token index within the
    ``num_outputs`` decoded (K = num_outputs for ``select="all"``, else 1)."""

    masks: np.ndarray
    scores: np.ndarray
    iou: np.ndarray
    stability: np.ndarray
    low_res_logits: np.ndarray
    output_index: np.ndarray | None = None


@dataclass
class LowResPrediction:
    """Decoder outputs before upsampling: low_res_logits (N,C,S/4,S/4), iou (N,C), stability (N,C) torch."""

    low_res_logits: torch.Tensor
    iou: torch.Tensor
    stability: torch.Tensor

    def __len__(self) -> int:
        return int(self.low_res_logits.shape[0])

    def __getitem__(self, rows: slice) -> "LowResPrediction":
        return LowResPrediction(self.low_res_logits[rows], self.iou[rows], self.stability[rows])


def _select_index(low: LowResPrediction, select: str | Sequence[str]) -> torch.Tensor:
    """-> (N,K) token indices: all C tokens, or the best by stability / IoU head per prompt (K = 1)."""
    n, c = low.iou.shape
    modes = [select] if isinstance(select, str) else list(select)
    modes = [_SELECT_ALIASES.get(m, m) for m in modes]
    bad = sorted({m for m in modes if m not in SELECT_CHOICES})
    if bad:
        raise ValueError(f"select must be one of {SELECT_CHOICES}, got {bad}")
    if len(modes) == 1:
        modes = modes * n
    if len(modes) != n:
        raise ValueError(f"select has {len(modes)} entries for {n} prompts")
    if all(m == "all" for m in modes) or c == 1:
        return torch.arange(c).expand(n, c)
    if any(m == "all" for m in modes):
        raise ValueError("select cannot mix 'all' with a best-of choice in one call")
    best_stab, best_iou = low.stability.argmax(1), low.iou.argmax(1)
    return torch.where(torch.tensor([m == "stability" for m in modes]), best_stab, best_iou)[:, None]


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

    # -- image -------------------------------------------------------------------------------------
    def reset_image(self) -> None:
        self.embedding: np.ndarray | None = None
        self.original_hw: tuple[int, int] | None = None
        self.input_hw: tuple[int, int] | None = None

    @property
    def is_image_set(self) -> bool:
        return self.embedding is not None

    @property
    def original_size(self) -> tuple[int, int] | None:  # SamPredictor's name
        return self.original_hw

    @property
    def input_size(self) -> tuple[int, int] | None:  # SamPredictor's name
        return self.input_hw

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an image (uint8 HxWx3 RGB or BGR, any size; grayscale and RGBA are converted)."""
        image = as_rgb_uint8(image, image_format)
        self.set_torch_image(self.transform.apply_image(image), image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """SamPredictor's torch entry: ``transformed_image`` (1,3,h,w) float 0..255 RGB, already resized so
        that its long side is S (``ResizeLongestSide``); normalised and padded here."""
        t = torch.as_tensor(transformed_image)
        if t.ndim != 4 or t.shape[0] != 1 or t.shape[1] != 3 or max(t.shape[-2:]) != self.img_size:
            raise ValueError(f"set_torch_image takes (1,3,h,w) with long side {self.img_size}, got {tuple(t.shape)}")
        x = normalize_pad(t.float().cpu(), self.img_size).numpy()
        self.set_embedding(self.encoder(x), tuple(original_image_size[:2]), (int(t.shape[-2]), int(t.shape[-1])))

    def set_embedding(self, embedding: np.ndarray, original_hw: tuple[int, int], input_hw: tuple[int, int] | None = None) -> None:
        """Use a precomputed embedding (1,256,S/16,S/16) for an image of ``original_hw``."""
        expected = (1, 256, self.img_size // 16, self.img_size // 16)
        if tuple(embedding.shape) != expected:
            raise ValueError(f"embedding must have shape {expected}, got {tuple(embedding.shape)}")
        self.embedding = np.asarray(embedding, dtype=np.float32)
        self.original_hw = (int(original_hw[0]), int(original_hw[1]))
        self.input_hw = input_hw or resized_shape(*self.original_hw, self.img_size)

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding, torch float32 (1,256,S/16,S/16)."""
        if self.embedding is None:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return torch.from_numpy(self.embedding)

    # -- prompt validation ------------------------------------------------------------------------
    def _check_xy(self, xy: np.ndarray, what: str) -> None:
        h, w = self.original_hw
        if not np.all(np.isfinite(xy)):
            raise ValueError(f"{what} contain non-finite values")
        if np.any(xy[..., 0] < 0) or np.any(xy[..., 0] > w) or np.any(xy[..., 1] < 0) or np.any(xy[..., 1] > h):
            raise ValueError(f"{what} outside the image (width {w}, height {h}): x must be in [0, {w}], y in [0, {h}]")

    def _points(self, point_coords, point_labels) -> tuple[np.ndarray, np.ndarray]:
        """Validated points -> (N,P,2) float32 original frame, (N,P) labels."""
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
        if not np.all(np.isin(pl, POINT_LABELS)):
            raise ValueError("point_labels must be 0 (negative) or 1 (positive); 2/3 box corners, -1 padding")
        return pc, pl.astype(np.float32)

    def _build_prompts(self, point_coords, point_labels, boxes, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> coords (N,P,2) in the input frame and labels (N,P); SAM's order: points, then box corners."""
        coords_list, labels_list = [], []
        if point_coords is not None or point_labels is not None:
            pc, pl = self._points(point_coords, point_labels)
            self._check_xy(pc, "point_coords")
            coords_list.append(self.transform.apply_coords(pc, self.original_hw))
            labels_list.append(pl)
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
        return self._join(coords_list, labels_list, pad=boxes is None)

    def _join(self, coords_list: list, labels_list: list, pad: bool) -> tuple[np.ndarray, np.ndarray]:
        if len(coords_list) == 2 and coords_list[0].shape[0] != coords_list[1].shape[0]:
            if coords_list[0].shape[0] == 1:  # one point set shared by every box
                coords_list[0] = np.repeat(coords_list[0], coords_list[1].shape[0], 0)
                labels_list[0] = np.repeat(labels_list[0], coords_list[1].shape[0], 0)
            else:
                raise ValueError(f"{coords_list[0].shape[0]} point sets but {coords_list[1].shape[0]} boxes")
        coords = np.concatenate(coords_list, axis=1)
        labels = np.concatenate(labels_list, axis=1)
        if pad:  # SAM appends a padding point to point-only prompts
            coords = np.concatenate([coords, np.zeros((coords.shape[0], 1, 2), np.float32)], axis=1)
            labels = np.concatenate([labels, np.full((labels.shape[0], 1), PAD, np.float32)], axis=1)
        if coords.shape[0] > self.max_prompts:
            raise ValueError(f"{coords.shape[0]} prompts exceed the limit of {self.max_prompts} per call")
        return coords, labels

    def _mask_input(self, mask_input, n: int) -> np.ndarray | None:
        if mask_input is None:
            return None
        low = self.img_size // 4
        m = np.asarray(mask_input, dtype=np.float32)
        if m.ndim == 3:
            m = m[None]
        if m.ndim != 4 or m.shape[1:] != (1, low, low) or m.shape[0] not in (1, n):
            raise ValueError(f"mask_input must have shape (1,{low},{low}) or (N,1,{low},{low}), got {m.shape}")
        if not np.all(np.isfinite(m)):
            raise ValueError("mask_input contains non-finite values")
        return np.broadcast_to(m, (n, 1, low, low)).copy()

    # -- decoding -----------------------------------------------------------------------------------
    def _decode(self, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None,
                num_outputs: int) -> LowResPrediction:
        if self.embedding is None:
            raise RuntimeError("call set_image() before predict()")
        if num_outputs not in (1, 3, 4):
            raise ValueError(f"num_outputs must be 1, 3 or 4, got {num_outputs}")
        logits, iou = self.decoder(self.embedding, coords, labels, self._mask_input(mask_input, coords.shape[0]))
        logits_t, iou_t = select_outputs(torch.from_numpy(logits), torch.from_numpy(iou), num_outputs)
        return LowResPrediction(logits_t, iou_t, stability_score(logits_t))

    def decode_batch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                     num_outputs: int = 1) -> LowResPrediction:
        """Decode N prompts in one call, nothing upsampled (see :meth:`predict_batch` for the arguments)."""
        if self.embedding is None:
            raise RuntimeError("call set_image() before predict()")
        coords, labels = self._build_prompts(point_coords, point_labels, boxes)
        return self._decode(coords, labels, mask_input, num_outputs)

    def upsample(self, low_res: torch.Tensor, return_logits: bool = False, chunk: int | None = None,
                 temp_bytes: int = 128 << 20) -> np.ndarray:
        """Low-res logits (N,K,S/4,S/4) -> (N,K,H,W) bool masks (or float32 logits) at the original size.

        Done ``chunk`` masks at a time (default: as many as fit ``temp_bytes`` of float32 temporaries at
        S x S and H x W), so the temporaries stay bounded whatever N x K and the image size are."""
        n, k = low_res.shape[:2]
        h, w = self.original_hw
        if chunk is None:
            chunk = max(1, temp_bytes // (4 * (self.img_size ** 2 + 2 * h * w)))
        out = np.empty((n, k, h, w), np.float32 if return_logits else bool)
        flat, dst = low_res.reshape(n * k, 1, *low_res.shape[-2:]), out.reshape(n * k, h, w)
        for i in range(0, n * k, chunk):
            up = postprocess_masks(flat[i:i + chunk], self.input_hw, self.original_hw, self.img_size)[:, 0]
            dst[i:i + chunk] = up.numpy() if return_logits else (up > 0.0).numpy()
        return out

    def finish(self, low: LowResPrediction, select: str | Sequence[str] = "all", return_logits: bool = False,
               score: str = "stability") -> Prediction:
        """Choose outputs on the low-res logits (``select``), then upsample only those."""
        if score not in ("stability", "iou"):
            raise ValueError("score must be 'stability' or 'iou'")
        idx = _select_index(low, select)
        take = lambda t: torch.gather(t, 1, idx)  # noqa: E731
        logits = torch.gather(low.low_res_logits, 1, idx[..., None, None].expand(-1, -1, *low.low_res_logits.shape[-2:]))
        stab, iou = take(low.stability), take(low.iou)
        return Prediction(self.upsample(logits, return_logits), (stab if score == "stability" else iou).numpy(),
                          iou.numpy(), stab.numpy(), logits.numpy(), idx.numpy().astype(np.int64))

    def predict_batch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      num_outputs: int = 1, return_logits: bool = False, score: str = "stability",
                      select: str | Sequence[str] = "all") -> Prediction:
        """Decode N prompts in one decoder call.

        point_coords (N,P,2) / point_labels (N,P) and/or boxes (N,4) XYXY, original frame.
        mask_input: (N,1,S/4,S/4) low-res logits from a previous call, or None.
        num_outputs: 1 (token 0), 3 (tokens 1-3) or 4 (all). select: ``"all"`` keeps every output;
        ``"stability"`` / ``"iou"`` (or a per-prompt list of these) keep the best one per prompt, chosen at
        low resolution, so only the kept masks are upsampled.
        """
        return self.finish(self.decode_batch(point_coords, point_labels, boxes, mask_input, num_outputs),
                           select, return_logits, score)

    # -- SamPredictor API ------------------------------------------------------------------------------
    @staticmethod
    def _num_outputs(multimask_output: bool, num_multimask_outputs: int | None, num_outputs: int | None) -> int:
        if not isinstance(multimask_output, (bool, np.bool_)) and multimask_output in (1, 3, 4) \
                and num_multimask_outputs is None:  # EdgeSAM's positional num_multimask_outputs in this slot
            num_multimask_outputs = int(multimask_output)
        if num_outputs is not None:
            warnings.warn("predict(num_outputs=...) is deprecated: use num_multimask_outputs (EdgeSAM) or "
                          "multimask_output (SAM)", DeprecationWarning, stacklevel=3)
            num_multimask_outputs = num_outputs
        if num_multimask_outputs is None:
            return 3 if multimask_output else 1
        if num_multimask_outputs not in (1, 3, 4):
            raise ValueError(f"num_multimask_outputs must be 1, 3 or 4, got {num_multimask_outputs}")
        return int(num_multimask_outputs)

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output: bool = True,
                return_logits: bool = False, num_multimask_outputs: int | None = None,
                use_stability_score: bool = False, *, features: torch.Tensor | np.ndarray | None = None,
                num_outputs: int | None = None, score: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SamPredictor.predict: points (P,2) + labels (P,) and/or box (4,) XYXY in the original frame,
        mask_input (1,S/4,S/4) -> (masks (C,H,W) bool or logits, scores (C,), low-res logits (C,S/4,S/4)).

        C = 3 (tokens 1-3) when ``multimask_output`` else 1 (token 0); EdgeSAM's ``num_multimask_outputs``
        (1, 3 or 4) overrides it. Scores are the IoU head's unless ``use_stability_score``.
        ``features`` (EdgeSAM's keyword): an embedding (1,256,S/16,S/16) to use instead of the set image's.
        ``num_outputs`` / ``score`` are the deprecated spellings of the last two.
        """
        if box is not None and np.asarray(box).ndim == 2 and np.asarray(box).shape[0] != 1:
            raise ValueError("predict() takes one box; use predict_batch() for several")
        if point_coords is not None and np.asarray(point_coords).ndim == 3:
            raise ValueError("predict() takes points (P,2); use predict_batch() for (N,P,2)")
        n_out = self._num_outputs(multimask_output, num_multimask_outputs, num_outputs)
        score = score or ("stability" if use_stability_score else "iou")
        with self._features(features):
            p = self.predict_batch(point_coords, point_labels, box, mask_input, n_out, return_logits, score)
        return p.masks[0], p.scores[0], p.low_res_logits[0]

    @contextmanager
    def _features(self, features):
        """Decode against ``features`` (EdgeSAM's override) for the duration, then restore the set embedding."""
        if features is None:
            yield
            return
        if self.original_hw is None:
            raise RuntimeError("call set_image() before predict(): the image size is needed for features")
        saved = self.embedding
        self.set_embedding(torch.as_tensor(features).detach().float().cpu().numpy(), self.original_hw, self.input_hw)
        try:
            yield
        finally:
            self.embedding = saved

    @torch.no_grad()
    def predict_torch(self, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                      boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None,
                      multimask_output: bool = True, return_logits: bool = False,
                      num_multimask_outputs: int | None = None, use_stability_score: bool = False, *,
                      features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SamPredictor.predict_torch: prompts already in the input frame (``ResizeLongestSide``), batch B.

        point_coords (B,P,2), point_labels (B,P), boxes (B,4) XYXY, mask_input (B,1,S/4,S/4) ->
        masks (B,C,H,W) bool (or logits), scores (B,C), low-res logits (B,C,S/4,S/4), all torch.
        """
        coords_list, labels_list = [], []
        if point_coords is not None or point_labels is not None:
            pc, pl = self._points(None if point_coords is None else torch.as_tensor(point_coords).cpu().numpy(),
                                  None if point_labels is None else torch.as_tensor(point_labels).cpu().numpy())
            coords_list.append(pc)
            labels_list.append(pl)
        if boxes is not None:
            b = torch.as_tensor(boxes, dtype=torch.float32).cpu().numpy().reshape(-1, 2, 2)
            coords_list.append(b)
            labels_list.append(np.tile(np.array([[BOX_TL, BOX_BR]], np.float32), (len(b), 1)))
        if not coords_list:
            raise ValueError("no prompt given: pass point_coords/point_labels and/or boxes")
        coords, labels = self._join(coords_list, labels_list, pad=boxes is None)
        mask = None if mask_input is None else torch.as_tensor(mask_input).cpu().numpy()
        with self._features(features):
            low = self._decode(coords, labels, mask, self._num_outputs(multimask_output, num_multimask_outputs, None))
        masks = torch.from_numpy(self.upsample(low.low_res_logits, return_logits))
        return masks, (low.stability if use_stability_score else low.iou), low.low_res_logits
