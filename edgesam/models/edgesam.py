"""The EdgeSAM model: RepViT encoder + SAM prompt encoder / mask decoder.

Keys match the official ``edge_sam.pth`` state dict: ``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.transforms import PIXEL_MEAN, PIXEL_STD  # SAM's pixel statistics, defined once
from .prompt_decoder import (EdgeMaskDecoder, EdgePromptEncoder, PromptDecoder, build_mask_decoder,
                             build_prompt_encoder, decode_prompts)
from .repvit import EncoderConfig, RepViTEncoder



class EdgeSAM(nn.Module):
    """Student model. ``img_size`` is the padded square input side (a multiple of 64, 1024 for SA-1B)."""

    mask_threshold: float = 0.0

    def __init__(self, img_size: int = 1024, encoder_cfg: EncoderConfig = EncoderConfig()) -> None:
        super().__init__()
        if img_size % 64:
            raise ValueError(f"img_size must be a multiple of 64, got {img_size}")
        self.img_size = img_size
        self.image_encoder = RepViTEncoder(encoder_cfg)
        self.prompt_encoder: EdgePromptEncoder = build_prompt_encoder(img_size)
        self.mask_decoder: EdgeMaskDecoder = build_mask_decoder()
        self.rpn: nn.Module | None = None  # attached by step 3 of distillation
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised padded images (B,3,S,S) -> embeddings (B,256,S/16,S/16)."""
        return self.image_encoder(images)

    def decode(self, embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
               mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`decode_prompts`: -> (low-res logits (N,4,S/4,S/4), IoU (N,4))."""
        return decode_prompts(self.prompt_encoder, self.mask_decoder, embeddings, point_coords, point_labels,
                              mask_input)

    def as_prompt_decoder(self) -> PromptDecoder:
        """A module view sharing this model's prompt encoder and decoder (for export and serving)."""
        return PromptDecoder(self.prompt_encoder, self.mask_decoder)
