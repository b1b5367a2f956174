"""Small building blocks of RepViT, each with an exact eval-mode ``fuse()``.

Attribute names (``c``, ``bn``, ``conv``, ``conv1``, ``fc1``, ``fc2``, ``m``) follow the
official EdgeSAM state dict so that released checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor`` without dropping more than 10 %."""
    min_value = min_value or divisor
    new_v = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * value:
        new_v += divisor
    return new_v


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an eval-mode BatchNorm into the preceding convolution (returns a conv with bias)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype,
    )
    fused.weight.data.copy_(conv.weight * scale[:, None, None, None])
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data.copy_(bn.bias + (conv_bias - bn.running_mean) * scale)
    return fused


class Conv2dBN(nn.Module):
    """Conv (no bias) followed by BatchNorm; no activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        return fuse_conv_bn(self.c, self.bn)


class Residual(nn.Module):
    """``x + m(x)``; fuses to a plain module with the identity folded in when ``m`` is a Conv2dBN."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class SqueezeExcite(nn.Module):
    """timm-style SE: global pool, 1x1 conv C->r (bias), ReLU, 1x1 conv r->C (bias), sigmoid gate."""

    def __init__(self, channels: int, rd_ratio: float = 0.25) -> None:
        super().__init__()
        rd = make_divisible(channels * rd_ratio, 8)
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class RepVGGDW(nn.Module):
    """RepVGG-style depthwise mixer: 3x3 DW conv+BN + 1x1 DW conv+BN + identity, summed.

    Input and output: (B, C, H, W). ``fuse()`` returns one 3x3 depthwise conv with bias that is
    exactly equivalent in eval mode.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2dBN(channels, channels, 3, 1, 1, groups=channels)
        self.conv1 = Conv2dBN(channels, channels, 1, 1, 0, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x) + x

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        k3 = self.conv.fuse()
        k1 = self.conv1.fuse()
        w = k3.weight.clone()
        w += nn.functional.pad(k1.weight, [1, 1, 1, 1])
        w[:, 0, 1, 1] += 1.0  # identity branch
        k3.weight.data.copy_(w)
        k3.bias.data.add_(k1.bias)
        return k3


def fuse_for_deploy(module: nn.Module) -> nn.Module:
    """Replace every fusable child (Conv2dBN, RepVGGDW) by its fused conv, in place.

    Exact in eval mode (float tolerance); call after ``.eval()``. Returns ``module``.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, (Conv2dBN, RepVGGDW)):
            setattr(module, name, child.fuse())
        else:
            fuse_for_deploy(child)
    return module
