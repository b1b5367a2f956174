"""SAM's prompt encoder and mask decoder (from ``segment_anything``) with EdgeSAM's small changes.

* Points carry labels -2 (ignore: zero embedding), -1 (padding), 0 (negative), 1 (positive),
  2/3 (box top-left / bottom-right corner). Boxes therefore travel as two labelled points, the
  convention of SAM's ONNX decoder, so one code path serves points, boxes and both.
* The decoder always predicts all 4 mask tokens; callers select 1 (token 0), 3 (tokens 1-3) or 4.
* Image embeddings may be given once (1, C, h, w) for many prompts or once per prompt (N, C, h, w).
"""
from __future__ import annotations

import contextlib

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn

IGNORE, PAD, NEG, POS, BOX_TL, BOX_BR = -2, -1, 0, 1, 2, 3
VALID_LABELS = (IGNORE, PAD, NEG, POS, BOX_TL, BOX_BR)


def _float32(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off on ``device_type`` (where autocast exists; a no-op on e.g. the meta device)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class EdgePromptEncoder(PromptEncoder):
    """PromptEncoder whose point path also embeds box corners and the EdgeSAM "ignore" label."""

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """coords (N, P, 2) x-y pixels in the padded S x S input frame; labels (N, P) -> (N, P, 256) in the
        dtype of the point embeddings (the positional encoding itself is computed in float32)."""
        if coords.dtype != torch.float32:
            coords = coords.float()
        with _float32(coords.device.type):
            emb = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)
        dtype = self.point_embeddings[0].weight.dtype
        if emb.dtype != dtype:
            emb = emb.to(dtype)
        labels = labels.to(torch.long)[..., None]
        emb = torch.where(labels < 0, torch.zeros_like(emb), emb)
        emb = emb + (labels == PAD) * self.not_a_point_embed.weight
        for lab in (NEG, POS, BOX_TL, BOX_BR):
            emb = emb + (labels == lab) * self.point_embeddings[lab].weight
        return emb

    def get_dense_pe(self) -> torch.Tensor:
        """(1, 256, S/16, S/16) positional encoding of the embedding grid, always float32: sin/cos of
        ``2 pi (coords @ G)`` lose their phase in half precision, so the PE stays out of autocast and half casts."""
        with _float32(self.pe_layer.positional_encoding_gaussian_matrix.device.type):
            return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_dense(self, mask_input: torch.Tensor | None, n: int) -> torch.Tensor:
        """Mask prompt (N, 1, S/4, S/4) logits or None -> dense embedding (N, 256, S/16, S/16)."""
        if mask_input is not None:
            return self._embed_masks(mask_input)
        h, w = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, h, w)


class EdgeMaskDecoder(MaskDecoder):
    """SAM MaskDecoder returning all 4 mask tokens, with one embedding per prompt allowed."""

    def predict_all(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                    sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the two-way transformer and heads.

        image_embeddings: (1 or N, 256, h, w); image_pe: (1, 256, h, w); sparse: (N, P, 256);
        dense: (N, 256, h, w). Returns low-res mask logits (N, 4, 4h, 4w) and IoU predictions (N, 4).
        """
        n = sparse.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        src = image_embeddings.expand(n, -1, -1, -1) if image_embeddings.shape[0] == 1 else image_embeddings
        src = src + dense
        if image_pe.dtype != src.dtype:  # the PE is float32 (see EdgePromptEncoder.get_dense_pe)
            image_pe = image_pe.to(src.dtype)
        pos = image_pe.expand(n, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_out = hs[:, 0, :]
        mask_out = hs[:, 1:1 + self.num_mask_tokens, :]
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(mask_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        bu, cu, hu, wu = up.shape
        masks = (hyper @ up.reshape(bu, cu, hu * wu)).reshape(bu, -1, hu, wu)
        return masks, self.iou_prediction_head(iou_out)


def build_prompt_encoder(img_size: int, embed_dim: int = 256) -> EdgePromptEncoder:
    """SAM prompt encoder for a square padded input of ``img_size`` pixels (multiple of 64)."""
    return EdgePromptEncoder(embed_dim=embed_dim, image_embedding_size=(img_size // 16, img_size // 16),
                             input_image_size=(img_size, img_size), mask_in_chans=16)


def build_mask_decoder(embed_dim: int = 256) -> EdgeMaskDecoder:
    """SAM mask decoder: two-way transformer depth 2, 8 heads, MLP 2048, 4 mask tokens."""
    return EdgeMaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=2048, num_heads=8),
        transformer_dim=embed_dim, iou_head_depth=3, iou_head_hidden_dim=256)


def select_outputs(masks: torch.Tensor, scores: torch.Tensor, num_outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick tokens: 1 -> token 0, 3 -> tokens 1..3 (SAM multimask), 4 -> all. Works on dim 1."""
    if num_outputs == 1:
        return masks[:, :1], scores[:, :1]
    if num_outputs == 3:
        return masks[:, 1:], scores[:, 1:]
    if num_outputs == 4:
        return masks, scores
    raise ValueError(f"num_outputs must be 1, 3 or 4, got {num_outputs}")


def stability_score(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """IoU between the masks thresholded at ``threshold ± offset``; logits (..., H, W) -> (...).

    An empty mask (nothing above ``threshold - offset``) scores 0, not 1: it is not a stable object."""
    inter = (logits > threshold + offset).sum((-1, -2), dtype=torch.int32)
    union = (logits > threshold - offset).sum((-1, -2), dtype=torch.int32)
    return inter.float() / union.clamp(min=1).float()


def decode_prompts(prompt_encoder: EdgePromptEncoder, mask_decoder: EdgeMaskDecoder, image_embeddings: torch.Tensor,
                   point_coords: torch.Tensor, point_labels: torch.Tensor,
                   mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """image_embeddings (1|N,256,h,w); point_coords (N,P,2) x-y in the padded input frame; point_labels (N,P);
    mask_input (N,1,4h,4w) logits or None -> (masks (N,4,4h,4w) logits, iou (N,4))."""
    sparse = prompt_encoder.embed_points(point_coords, point_labels)
    dense = prompt_encoder.embed_dense(mask_input, point_coords.shape[0])
    return mask_decoder.predict_all(image_embeddings, prompt_encoder.get_dense_pe(), sparse, dense)


class PromptDecoder(nn.Module):
    """Prompt encoder + mask decoder as one module: (embedding, points, labels[, mask]) -> logits, IoU."""

    def __init__(self, prompt_encoder: EdgePromptEncoder, mask_decoder: EdgeMaskDecoder) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`decode_prompts`."""
        return decode_prompts(self.prompt_encoder, self.mask_decoder, image_embeddings, point_coords,
                              point_labels, mask_input)
