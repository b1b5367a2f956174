"""The neck's x2 bicubic upsample written as convolutions (exact), for fast ONNX Runtime graphs.

ONNX Runtime's CPU cubic ``Resize`` kernel costs ~70 ms of a ~0.2 s encoder run at 1024 px; the same
interpolation as replicate-pad + depthwise 5x5 conv + DepthToSpace costs a few ms and matches PyTorch's
``F.interpolate(mode="bicubic", align_corners=False)`` to float rounding.
"""
from __future__ import annotations

import torch
from torch import nn


def cubic_taps(t: float, a: float = -0.75) -> list[float]:
    """Keys cubic-convolution weights of the 4 taps around a sample at fractional offset ``t``."""
    def k(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a if x < 2 else 0.0
    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


class BicubicUpsample2x(nn.Module):
    """Exactly ``F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)`` as convolutions.

    With half-pixel centres, output 2i samples input i - 1/4 and output 2i+1 samples i + 1/4, so each of
    the four output phases is a fixed 5x5 filter over a replicate-padded input (torch clamps border taps):
    pad 2 -> depthwise conv with 4 filters per channel -> pixel shuffle (ONNX DepthToSpace).
    (B,C,H,W) -> (B,C,2H,2W). ONNX Runtime's CPU cubic ``Resize`` kernel is ~10x slower than this.
    """

    def __init__(self) -> None:
        super().__init__()
        taps = torch.tensor([cubic_taps(0.75) + [0.0], [0.0] + cubic_taps(0.25)], dtype=torch.float64)  # (2,5)
        self.register_buffer("weight", torch.einsum("pu,qv->pquv", taps, taps).reshape(4, 1, 5, 5).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = int(x.shape[1])  # static channels: keeps the filter bank a constant when the batch axis is dynamic
        y = nn.functional.conv2d(nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"),
                                 self.weight.repeat(c, 1, 1, 1), groups=c)
        return nn.functional.pixel_shuffle(y, 2)


def bicubic_as_conv(module: nn.Module) -> int:
    """Swap every x2 bicubic ``nn.Upsample`` (align_corners False) for :class:`BicubicUpsample2x`, in place."""
    swapped = 0
    for name, child in list(module.named_children()):
        if (isinstance(child, nn.Upsample) and child.mode == "bicubic" and not child.align_corners
                and child.size is None and float(child.scale_factor) == 2.0):
            setattr(module, name, BicubicUpsample2x())
            swapped += 1
        else:
            swapped += bicubic_as_conv(child)
    return swapped
