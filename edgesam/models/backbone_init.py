"""ImageNet initialisation of the student's backbone from THU-MIG's RepViT-M1 classification checkpoint.

The paper starts RepViT from ``repvit_m1_distill_300.pth``, the ORIGINAL July-2023 RepViT-M1 release
(top-1 78.5), stored as ``{"model": state_dict}``. Its 676 ``features.*`` tensors have the same names and
shapes as ``RepViTEncoder.features``; its 14 ``classifier.*`` tensors (the ImageNet heads) are ignored,
and the fuse convolutions and the neck (8 tensors) are not in an ImageNet model, so they stay random.

The later ``repvit_m0_9_distill_300e.pth`` (the model renamed RepViT-M0.9 in THU-MIG commit b749e1f) is
refused: its RepVGG-DW token mixers were changed (``conv1`` became a plain convolution with a bias, and a
BatchNorm ``bn`` was added after the branch sum), so those blocks do not match EdgeSAM's RepVGG-DW.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

# Keys only the M0.9 layout has: RepVGG-DW's conv1 as a plain, biased Conv2d (M1: conv1.c.weight + conv1.bn.*).
# (Its post-sum BatchNorm "token_mixer.0.bn" shares its name with the downsample blocks' Conv2d_BN, so it is no sign.)
_M09_KEY = re.compile(r"^features\.\d+\.token_mixer\.0\.conv1\.(weight|bias)$")
IGNORED_PREFIXES = ("classifier.",)


class BackboneCheckpointError(ValueError):
    """The file is not the RepViT-M1 ImageNet checkpoint this encoder can start from."""


@dataclass
class BackboneInitReport:
    """What a backbone load did, by encoder key."""

    source: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # in the checkpoint, not used (ImageNet heads)
    random: list[str] = field(default_factory=list)  # in the encoder, not in the checkpoint: left as initialised

    def summary(self) -> str:
        groups = sorted({k.split(".")[0] for k in self.random})
        return (f"backbone init from {self.source}: loaded {len(self.loaded)} tensors (features.*); ignored "
                f"{len(self.ignored)} (the ImageNet classifier heads); {len(self.random)} stay random "
                f"({', '.join(groups) or 'none'}: not part of an ImageNet model)")


def _read_state(checkpoint: str | Path | Mapping[str, Any]) -> tuple[Mapping[str, torch.Tensor], str]:
    if isinstance(checkpoint, Mapping):
        obj, source = checkpoint, "<state dict>"
    else:
        import argparse

        from .. import storage

        path = str(checkpoint)  # local, s3:// or gs://
        if not storage.is_file(path):
            raise BackboneCheckpointError(f"student.backbone_checkpoint not found: {path}")
        source = path
        try:  # training checkpoints may carry the argparse Namespace of the run next to "model"
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = storage.torch_load(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - an unpickling error names the offending global
            raise BackboneCheckpointError(f"{path} cannot be read as a weights-only checkpoint ({exc}); extract its state dict "
                             "with torch.save({'model': torch.load(p, weights_only=False)['model']}, out)") from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneCheckpointError(f"{source} holds no state dict (expected {{'model': state_dict}})")
    return obj, source


def load_repvit_imagenet(encoder: nn.Module, checkpoint: str | Path | Mapping[str, Any]) -> BackboneInitReport:
    """Load the ImageNet RepViT-M1 ``features.*`` weights into ``encoder`` (a ``RepViTEncoder``), in place.

    Every ``features.*`` tensor of the encoder must be in the checkpoint with the same shape; anything else
    but the classifier heads is an error (nothing is loaded then). Returns what was loaded, ignored and left
    random. Raises BackboneCheckpointError (a ValueError) for the RepViT-M0.9 file, naming why.
    """
    state, source = _read_state(checkpoint)
    m09 = sorted(k for k in state if _M09_KEY.match(k))
    if m09:
        raise BackboneCheckpointError(
            f"{source} is the later RepViT-M0.9 checkpoint (repvit_m0_9_distill_300e.pth; THU-MIG commit b749e1f "
            "renamed repvit_m1 to repvit_m0_9 and changed RepVGG-DW), not the original RepViT-M1 release EdgeSAM "
            f"starts from: it has a different RepVGG-DW layout ({len(m09)} keys such as {m09[0]!r}: conv1 is a "
            "plain convolution with a bias and a BatchNorm 'bn' follows the branch sum), while EdgeSAM's RepVGG-DW "
            "has a Conv2d_BN conv1 and no extra BatchNorm. Use repvit_m1_distill_300.pth (RepViT release v1.0, "
            "July 2023).")
    own = encoder.state_dict()
    ignored = sorted(k for k in state if k.startswith(IGNORED_PREFIXES))
    unexpected = sorted(k for k in state if k not in own and not k.startswith(IGNORED_PREFIXES))
    wanted = [k for k in own if k.startswith("features.")]
    missing = [k for k in wanted if k not in state]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs encoder {tuple(own[k].shape)}"
             for k in wanted if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if unexpected or missing or wrong:
        parts = [f"{name} ({len(keys)}): {', '.join(keys[:6])}" for name, keys in
                 (("shape mismatch", wrong), ("missing features keys", missing), ("unexpected keys", unexpected)) if keys]
        raise BackboneCheckpointError(f"{source} is not a RepViT-M1 ImageNet checkpoint for this encoder: " + " | ".join(parts))
    result = encoder.load_state_dict({k: state[k] for k in wanted}, strict=False)
    assert not result.unexpected_keys
    return BackboneInitReport(source=source, loaded=wanted, ignored=ignored, random=sorted(result.missing_keys))
