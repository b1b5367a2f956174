"""Runtime backends behind one small interface.

Encoder: ``(B,3,S,S) float32 normalised padded images -> (B,256,S/16,S/16) float32``.
Decoder: ``(embedding (1,256,h,w), point_coords (N,P,2) x-y in the padded S frame, point_labels (N,P),
mask_input (N,1,4h,4w) logits or None) -> (low-res mask logits (N,4,4h,4w), IoU predictions (N,4))``,
all float32 numpy. Box prompts are two points labelled 2 and 3.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class EncoderBackend(Protocol):
    img_size: int
    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class DecoderBackend(Protocol):
    name: str

    def __call__(self, embedding: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray,
                 mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


class TorchEncoder:
    """Eager PyTorch encoder on ``device``."""

    def __init__(self, encoder: torch.nn.Module, img_size: int, device: str = "cpu") -> None:
        self.encoder = encoder.to(device).eval()
        self.img_size = img_size
        self.device = device
        self.name = f"torch-{device}"

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(images, dtype=torch.float32, device=self.device)
        return self.encoder(x).float().cpu().numpy()


class TorchDecoder:
    """Eager PyTorch prompt encoder + mask decoder (a :class:`PromptDecoder`)."""

    def __init__(self, prompt_decoder: torch.nn.Module, device: str = "cpu") -> None:
        self.prompt_decoder = prompt_decoder.to(device).eval()
        self.device = device
        self.name = f"torch-{device}"

    @torch.inference_mode()
    def __call__(self, embedding: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray,
                 mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        dev = self.device
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=dev)  # noqa: E731
        masks, iou = self.decode_tensors(t(embedding), t(point_coords), t(point_labels),
                                         None if mask_input is None else t(mask_input))
        return masks.float().cpu().numpy(), iou.float().cpu().numpy()

    @torch.inference_mode()
    def decode_tensors(self, embedding: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                       mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``__call__`` on tensors already on ``device``; the outputs stay there (no host round trip)."""
        return self.prompt_decoder(embedding, point_coords, point_labels, mask_input)
