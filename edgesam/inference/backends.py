"""Runtime backends behind one small interface.

Encoder: ``(B,3,S,S) float32 normalised padded images -> (B,256,S/16,S/16) float32``.
Decoder: ``(embedding (1,256,h,w), point_coords (N,P,2) x-y in the padded S frame, point_labels (N,P),
mask_input (N,1,4h,4w) logits or None) -> (low-res mask logits (N,4,4h,4w), IoU predictions (N,4))``,
all float32 numpy. Box prompts are two points labelled 2 and 3.

The torch backends also offer the same calls on device tensors (``tensors`` / ``decode_tensors``), so a
device-resident caller (segment everything on CUDA) never copies the embedding or the logits to the host.
How they run (precision, channels_last, ``torch.compile``, CUDA graphs, split decoder) is a
:class:`~edgesam.inference.torch_options.TorchOptions`; the default is float32 eager, as on the CPU.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from .amg_utils import batches
from .cuda_graphs import CudaGraphRunner, bucket_for
from .torch_options import TorchOptions, compiled, prepare


class EncoderBackend(Protocol):
    img_size: int
    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class DecoderBackend(Protocol):
    name: str

    def __call__(self, embedding: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray,
                 mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


class TorchEncoder:
    """PyTorch image encoder on ``device``, run as ``opts`` says (default: eager float32)."""

    def __init__(self, encoder: torch.nn.Module, img_size: int, device: str = "cpu",
                 opts: TorchOptions | None = None) -> None:
        self.opts = opts or TorchOptions()
        self.encoder = prepare(encoder, self.opts, device, conv=True)
        self.img_size = img_size
        self.device = device
        self.name = self.opts.backend_name(device)
        run = compiled(self.encoder, self.opts)
        self._run = CudaGraphRunner(run, self.opts.max_graphs) if self.opts.cuda_graphs else run

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.tensors(images).float().cpu().numpy()

    @torch.inference_mode()
    def tensors(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) normalised padded images -> (B,256,S/16,S/16) embedding on ``device`` in ``opts.dtype``."""
        out = self._run(self.opts.images(images, self.device))
        return out[0] if isinstance(out, tuple) else out


class TorchDecoder:
    """PyTorch prompt encoder + mask decoder (a :class:`PromptDecoder`), run as ``opts`` says.

    With ``opts.split_decoder``, prompts without a mask input go through the split decoder: its image side
    runs once per embedding (kept for the next call with the same embedding tensor, as segment everything
    makes in chunks), its prompt side per call, padded to ``opts.prompt_buckets`` when compiled or graphed.
    Mask prompts and per-prompt embeddings use the reference decoder.
    """

    def __init__(self, prompt_decoder: torch.nn.Module, device: str = "cpu", opts: TorchOptions | None = None) -> None:
        self.opts = opts or TorchOptions()
        self.device = device
        self.name = self.opts.backend_name(device)
        self.prompt_decoder = prepare(prompt_decoder, self.opts, device, conv=False)
        self._image_side = self._prompt_side = None
        if self.opts.split_decoder:
            from ..export.decoder_fast import FastPromptDecoder

            # the split decoder's constant buffers are made from the float32 weights, before any half cast
            fast = prepare(FastPromptDecoder(prompt_decoder.eval()), self.opts, device, conv=False)
            self._image_side = compiled(fast.image_side, self.opts)
            side = compiled(fast.prompt_side, self.opts)
            self._prompt_side = CudaGraphRunner(side, self.opts.max_graphs) if self.opts.cuda_graphs else side
        self._last: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    @torch.inference_mode()
    def __call__(self, embedding: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray,
                 mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        dev = self.device
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=dev)  # noqa: E731
        masks, iou = self.decode_tensors(t(embedding), t(point_coords), t(point_labels),
                                         None if mask_input is None else t(mask_input))
        return masks.cpu().numpy(), iou.cpu().numpy()

    @torch.inference_mode()
    def decode_tensors(self, embedding: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                       mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``__call__`` on tensors already on ``device``; float32 outputs stay there (no host round trip)."""
        dtype = self.opts.torch_dtype
        emb = embedding.to(dtype)
        if self._prompt_side is None or mask_input is not None or emb.shape[0] != 1:
            mask = None if mask_input is None else mask_input.to(dtype)
            masks, iou = self.prompt_decoder(emb, point_coords, point_labels, mask)
            return masks.float(), iou.float()
        image = self._image_tensors(embedding, emb)
        coords, labels = point_coords.float(), point_labels.float()
        if not self.opts.pads_prompts:
            iou, masks = self._prompt_side(*image, coords, labels)
            return masks.float(), iou.float()
        outs = [self._padded(image, coords[s], labels[s])
                for s in batches(coords.shape[0], self.opts.prompt_buckets[-1])]
        return torch.cat([m for m, _ in outs]), torch.cat([i for _, i in outs])

    def _image_tensors(self, embedding: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The image side for ``embedding``, reused while the caller passes the same tensor object."""
        if self._last is not None and self._last[0] is embedding:
            return self._last[1]
        image = tuple(self._image_side(emb))
        self._last = (embedding, image)
        return image

    def _padded(self, image: tuple[torch.Tensor, ...], coords: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt-side call padded to its bucket by repeating the last prompt (prompts are independent,
        so the padding changes nothing for the real ones); -> float32 (masks, iou) for the real prompts."""
        n = coords.shape[0]
        pad = bucket_for(n, self.opts.prompt_buckets) - n
        if pad:
            coords = torch.cat([coords, coords[-1:].expand(pad, -1, -1)])
            labels = torch.cat([labels, labels[-1:].expand(pad, -1)])
        iou, masks = self._prompt_side(*image, coords, labels)
        return masks[:n].float(), iou[:n].float()
