"""RepViT-M1 backbone with EdgeSAM's FPN-like fuse neck.

Input: normalised, padded images (B, 3, S, S), S a multiple of 64.
Output: SAM-style image embedding (B, 256, S/16, S/16). ``forward_features`` also returns the
stride-8/16/32 maps (96/192/384 channels) that the RPN uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from .layers import Conv2dBN, RepVGGDW, Residual, SqueezeExcite

# (out_channels, use_se, stride) for the 26 blocks of RepViT-M1 (kernel 3, expansion 2 everywhere).
M1_BLOCKS: tuple[tuple[int, bool, int], ...] = (
    (48, True, 1), (48, False, 1), (48, False, 1),
    (96, False, 2), (96, True, 1), (96, False, 1), (96, False, 1),
    (192, False, 2),
    *[(192, i % 2 == 0 and i < 14, 1) for i in range(15)],
    (384, False, 2), (384, True, 1), (384, False, 1),
)


def _ffn(channels: int) -> Residual:
    # The last BN starts at zero, so each block starts as identity.
    return Residual(nn.Sequential(Conv2dBN(channels, 2 * channels), nn.GELU(),
                                  Conv2dBN(2 * channels, channels, bn_weight_init=0.0)))


class RepViTBlock(nn.Module):
    """One RepViT block: token mixer (spatial) then residual channel-mixer FFN."""

    def __init__(self, in_ch: int, out_ch: int, use_se: bool, stride: int) -> None:
        super().__init__()
        se: nn.Module = SqueezeExcite(in_ch) if use_se else nn.Identity()
        if stride == 1:
            assert in_ch == out_ch
            self.token_mixer = nn.Sequential(RepVGGDW(in_ch), se)
        else:
            self.token_mixer = nn.Sequential(
                Conv2dBN(in_ch, in_ch, 3, stride, 1, groups=in_ch), se, Conv2dBN(in_ch, out_ch, 1))
        self.channel_mixer = _ffn(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


@dataclass(frozen=True)
class EncoderConfig:
    """Student image-encoder configuration."""

    blocks: tuple[tuple[int, bool, int], ...] = M1_BLOCKS
    stem_channels: int = 24
    embed_dim: int = 256
    upsample_mode: str = "bicubic"  # the official weights were trained with bicubic


class RepViTEncoder(nn.Module):
    """RepViT backbone + fuse neck ("FUSE: True" in EdgeSAM)."""

    def __init__(self, cfg: EncoderConfig = EncoderConfig()) -> None:
        super().__init__()
        first = cfg.blocks[0][0]
        stem = nn.Sequential(Conv2dBN(3, cfg.stem_channels, 3, 2, 1), nn.GELU(),
                             Conv2dBN(cfg.stem_channels, first, 3, 2, 1))
        layers: list[nn.Module] = [stem]
        in_ch = first
        for out_ch, use_se, stride in cfg.blocks:
            layers.append(RepViTBlock(in_ch, out_ch, use_se, stride))
            in_ch = out_ch
        self.features = nn.ModuleList(layers)
        # The last block of each stride is where the next block changes channels (or the end).
        chans = [first] + [b[0] for b in cfg.blocks]
        self.stage_ends = [i for i in range(1, len(chans)) if i == len(chans) - 1 or chans[i + 1] != chans[i]]
        c8, c16, c32 = (chans[i] for i in self.stage_ends[-3:])
        self.feature_channels = {"s8": c8, "s16": c16, "s32": c32}
        self.fuse_stage2 = nn.Conv2d(c16, cfg.embed_dim, 1, bias=False)
        self.fuse_stage3 = nn.Module()
        align = None if cfg.upsample_mode == "nearest" else False
        self.fuse_stage3.op_list = nn.Sequential(
            nn.Conv2d(c32, cfg.embed_dim, 1, bias=False),
            nn.Upsample(scale_factor=2, mode=cfg.upsample_mode, align_corners=align))
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 1, bias=False), LayerNorm2d(cfg.embed_dim),
            nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 3, padding=1, bias=False), LayerNorm2d(cfg.embed_dim))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B,3,S,S) -> {"s8": (B,96,S/8,S/8), "s16": (B,192,S/16,..), "s32": (B,384,S/32,..), "embedding": (B,256,S/16,S/16)}."""
        if x.shape[-1] % 64 or x.shape[-2] % 64:
            raise ValueError(f"encoder input H and W must be multiples of 64, got {tuple(x.shape[-2:])}")
        out: dict[str, torch.Tensor] = {}
        names = dict(zip(self.stage_ends[-3:], ("s8", "s16", "s32")))
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in names:
                out[names[i]] = x
        fused = self.fuse_stage2(out["s16"]) + self.fuse_stage3.op_list(out["s32"])
        out["embedding"] = self.neck(fused)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) normalised image -> (B,256,S/16,S/16) embedding."""
        return self.forward_features(x)["embedding"]
