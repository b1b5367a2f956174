"""SAM teachers built through ``segment_anything``'s registry, plus tiny configurations for tests.

Only the teacher's image encoder, prompt encoder and mask decoder are used. The prompt encoder and
decoder are rebuilt as EdgeSAM's subclasses (same weights) so that teacher and student share one
decode path (box corners and "ignore" labels in the point stream).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from .. import storage
from ..storage import sha256 as sha256_file  # noqa: F401  (re-exported: local files and s3:// / gs:// objects)
from .prompt_decoder import PromptDecoder, build_mask_decoder, build_prompt_encoder

REGISTRY_NAMES = ("vit_h", "vit_l", "vit_b")


@dataclass(frozen=True)
class TinyViTConfig:
    """A small ViT with SAM's classes, for tests and the embedded default (random weights)."""

    depth: int = 2
    embed_dim: int = 64
    num_heads: int = 2
    window_size: int = 4
    global_attn_indexes: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class SmallSamConfig:
    """A small SAM (segment-anything's own classes) that trains on a few CPU cores; see pipelines/train_teacher.py.

    Only the ViT is shrunk: prompt encoder and mask decoder are SAM's (256-d, two-way transformer depth 2),
    so the student's decoder can start from the teacher's exactly as with ViT-H.
    """

    img_size: int = 256
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    window_size: int = 8
    global_attn_indexes: tuple[int, ...] = (1, 3)


def _build_small_sam(cfg: SmallSamConfig, checkpoint: str | None = None) -> Sam:
    """segment-anything's ``_build_sam`` construction at ``cfg.img_size`` (theirs is fixed at 1024).

    ``checkpoint``: a plain state dict with ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*`` keys
    (SAM's own format), loaded strictly."""
    emb = cfg.img_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.depth, embed_dim=cfg.embed_dim, img_size=cfg.img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg.num_heads, patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=cfg.global_attn_indexes,
            window_size=cfg.window_size, out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(emb, emb),
                                     input_image_size=(cfg.img_size, cfg.img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    sam.eval()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam


# Registry-style builders of the small teachers (name -> config); ``build_teacher`` treats them like
# segment-anything's ``sam_model_registry`` entries, with their own fixed img_size.
SMALL_CONFIGS: dict[str, SmallSamConfig] = {
    "sam_small_256": SmallSamConfig(),
    "sam_micro_128": SmallSamConfig(img_size=128, embed_dim=96, depth=3, num_heads=3, window_size=4,
                                    global_attn_indexes=(2,)),
}
small_sam_registry = {name: partial(_build_small_sam, cfg) for name, cfg in SMALL_CONFIGS.items()}


def sam_state_dict(image_encoder: nn.Module, prompt_decoder: PromptDecoder) -> dict[str, torch.Tensor]:
    """The checkpoint a ``sam_vit_*.pth`` holds: image_encoder.* + prompt_encoder.* + mask_decoder.* (CPU)."""
    state = {f"image_encoder.{k}": v for k, v in image_encoder.state_dict().items()}
    state.update(prompt_decoder.state_dict())
    return {k: v.detach().cpu().clone() for k, v in state.items()}


class SamTeacher(nn.Module):
    """Frozen SAM teacher: ``embed`` (B,3,S,S) -> (B,256,S/16,S/16) and ``decode`` like the student."""

    def __init__(self, image_encoder: nn.Module, prompt_decoder: PromptDecoder, img_size: int, name: str,
                 checkpoint_sha256: str | None) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_decoder = prompt_decoder
        self.img_size = img_size
        self.name = name
        self.checkpoint_sha256 = checkpoint_sha256
        self.requires_grad_(False)
        self.eval()

    @property
    def random_weights(self) -> bool:
        return self.checkpoint_sha256 is None

    @property
    def identity(self) -> dict:
        """What a cache must record to be reproducible (and refused when it differs)."""
        return {"name": self.name, "img_size": self.img_size, "checkpoint_sha256": self.checkpoint_sha256}

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    @torch.no_grad()
    def decode(self, embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
               mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prompt_decoder(embeddings, point_coords, point_labels, mask_input)


def _prompt_decoder_from(sam_prompt_encoder: nn.Module, sam_mask_decoder: nn.Module, img_size: int) -> PromptDecoder:
    pd = PromptDecoder(build_prompt_encoder(img_size), build_mask_decoder())
    pd.prompt_encoder.load_state_dict(sam_prompt_encoder.state_dict())
    pd.mask_decoder.load_state_dict(sam_mask_decoder.state_dict())
    return pd


def build_teacher(name: str = "tiny", checkpoint: str | Path | None = None, img_size: int = 1024,
                  tiny: TinyViTConfig = TinyViTConfig(), seed: int = 0) -> SamTeacher:
    """Build a SAM teacher.

    ``name`` is one of ``vit_h``/``vit_l``/``vit_b`` (segment-anything's registry; ``checkpoint`` is the
    official ``sam_vit_*.pth``, required for real use) or ``tiny`` (random weights, any ``img_size``
    multiple of 64, seeded). A registry model without checkpoint gets random weights and says so via
    ``random_weights``.
    """
    if name in REGISTRY_NAMES:
        if img_size != 1024:
            raise ValueError("SAM registry teachers run at 1024 (their positional embeddings are fixed)")
        ckpt = str(checkpoint) if checkpoint else None
        if ckpt and not storage.is_file(ckpt):
            raise FileNotFoundError(f"SAM checkpoint not found: {ckpt}")
        with storage.local_copy(ckpt) if ckpt else nullcontext() as local:  # the registry opens a local file
            sam = sam_model_registry[name](checkpoint=local)
        digest = sha256_file(ckpt) if ckpt else None
        return SamTeacher(sam.image_encoder, _prompt_decoder_from(sam.prompt_encoder, sam.mask_decoder, 1024),
                          1024, name, digest)
    if name in SMALL_CONFIGS:
        size = SMALL_CONFIGS[name].img_size
        if img_size != size:
            raise ValueError(f"teacher {name} runs at img_size {size}, got {img_size}")
        ckpt = str(checkpoint) if checkpoint else None
        if ckpt and not Path(ckpt).is_file():
            raise FileNotFoundError(f"SAM checkpoint not found: {ckpt}")
        if ckpt is None:
            torch.manual_seed(seed)
        sam = small_sam_registry[name](checkpoint=ckpt)
        return SamTeacher(sam.image_encoder, _prompt_decoder_from(sam.prompt_encoder, sam.mask_decoder, size),
                          size, name, sha256_file(ckpt) if ckpt else None)
    if name != "tiny":
        raise ValueError(f"unknown teacher {name!r}; expected one of {REGISTRY_NAMES + tuple(SMALL_CONFIGS) + ('tiny',)}")
    if img_size % 64:
        raise ValueError(f"img_size must be a multiple of 64, got {img_size}")
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(
        depth=tiny.depth, embed_dim=tiny.embed_dim, img_size=img_size, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=tiny.num_heads, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=tiny.global_attn_indexes,
        window_size=tiny.window_size, out_chans=256)
    pd = PromptDecoder(build_prompt_encoder(img_size), build_mask_decoder())
    digest = None
    if checkpoint:
        state = storage.torch_load(checkpoint, weights_only=True)
        encoder.load_state_dict({k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")})
        pd.load_state_dict({k: v for k, v in state.items() if not k.startswith("image_encoder.")})
        digest = sha256_file(checkpoint)
    name = f"tiny-d{tiny.depth}-w{tiny.embed_dim}-seed{seed}"
    return SamTeacher(encoder, pd, img_size, name, digest)


def build_teacher_prompt_decoder(name: str = "tiny", checkpoint: str | Path | None = None, img_size: int = 1024,
                                 seed: int = 0) -> PromptDecoder:
    """Only the teacher's prompt encoder + mask decoder (what step 2 runs online on cached embeddings).

    For registry teachers the ViT is never built: the decoder keys are read straight from the SAM
    checkpoint, so a ViT-H teacher costs 4 M parameters here, not 636 M.
    """
    if name not in REGISTRY_NAMES:
        return build_teacher(name, checkpoint, img_size, seed=seed).prompt_decoder.requires_grad_(False).eval()
    pd = PromptDecoder(build_prompt_encoder(img_size), build_mask_decoder())
    if checkpoint:
        state = storage.torch_load(checkpoint, weights_only=True)
        pd.load_state_dict({k: v for k, v in state.items() if k.startswith(("prompt_encoder.", "mask_decoder."))})
    else:
        torch.manual_seed(seed)
    return pd.requires_grad_(False).eval()
