"""Builders for the SAM-family image encoders EdgeSAM is compared with, all with RANDOM weights.

Each builder returns ``(name, module, input_size)``: ``module`` maps a ``(B, 3, S, S)`` float32 tensor
(``S = input_size``, pixels normalised as the peer expects) to its image embedding, ``(B, 256, 64, 64)`` for
every peer here. The model code comes from each peer's own package (imported inside its builder, so this
module imports with torch alone); nothing is copied. Latency and MACs do not depend on weight values.

==================  ===========================================  ========================================
key                 model (input)                                package that provides the code
==================  ===========================================  ========================================
``mobilesam``       MobileSAM TinyViT-5M encoder (1024)          ``mobile_sam`` (+ ``timm``)
``efficientvit_l0`` EfficientViT-SAM-L0 image encoder (512)      ``efficientsam``
``sam2_hiera_t``    SAM 2.1 Hiera-T trunk + FPN neck (1024)      ``sam2`` (+ ``hydra-core``, ``iopath``)
``vit_b``           SAM ViT-B image encoder (1024)               ``segment_anything``
``vit_h``           SAM ViT-H image encoder (1024)               ``segment_anything``
==================  ===========================================  ========================================

Wheels each peer needs beyond torch / torchvision / numpy (all ``py3-none-any``, i.e. pure Python, so they
can be carried to another machine, another Python or a CUDA torch as files; sizes are the wheel files):

- SAM ViT-B / ViT-H: ``segment_anything==1.0`` (37 KB). Meta's own code, on PyPI as ``segment-anything``.
- MobileSAM: ``mobilesam_mirror==1.0.0`` (47 KB) + ``timm==1.0.31`` (2.8 MB; its own needs: pyyaml,
  huggingface_hub, safetensors). MobileSAM's authors publish no PyPI package; ``mobilesam-mirror`` is a
  third-party packaging of their repository that installs the ``mobile_sam`` module. It does not declare
  ``timm`` although ``mobile_sam.modeling.tiny_vit_sam`` imports it, and importing it re-registers timm's
  ``tiny_vit_*_224`` model names with MobileSAM's TinyViT (a warning; timm's own classes are unaffected).
- EfficientViT-SAM-L0: ``efficientsam==1.0.0`` (56 KB). mit-han-lab's ``efficientvit`` is not on PyPI;
  ``efficientsam`` is a packaging of its SAM model zoo (``efficientsam.sam_model_zoo``), the same
  ``create_efficientvit_sam_model(name, pretrained=False)`` API and model code.
- SAM 2.1 Hiera-T: ``sam2==1.1.0`` (PyPI has only the sdist, 153 KB; built here with ``SAM2_BUILD_CUDA=0``
  it gives a 184 KB ``sam2-1.1.0-py3-none-any.whl`` with no compiled extension, which only the video
  predictor's hole filling would use) + ``hydra_core==1.3.8`` (169 KB) + ``omegaconf==2.3.1`` (80 KB) +
  ``antlr4_python3_runtime==4.9.3`` (145 KB, sdist-only on PyPI, builds to a pure wheel) +
  ``iopath==0.1.10`` (32 KB, sdist-only, builds to a pure wheel) + ``portalocker==4.4.2`` (130 KB). The
  config is the packaged ``configs/sam2.1/sam2.1_hiera_t.yaml``.

Install them with ``pip install -e '.[peers]'`` (``SAM2_BUILD_CUDA=0`` in the environment skips sam2's CUDA
extension build; ``--no-build-isolation`` keeps pip from fetching a second torch to build its sdist).
A peer whose package is missing raises :class:`PeerUnavailable` carrying the pip command, so a benchmark
can print a skipped row instead of failing.

MACs: :func:`benchmarks.common.count_macs` covers every peer (``count_macs(lambda: module(x))``); the
builders accept ``device="meta"`` so the large ViTs can be counted without computing them.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

import torch
from torch import nn

PeerBuild = tuple[str, nn.Module, int]
"""``(display name, image encoder module, square input size in pixels)``."""

_PIP = {
    "segment_anything": "pip install 'segment-anything>=1.0'",
    "mobile_sam": "pip install 'mobilesam-mirror>=1.0.0' 'timm>=1.0.31'",
    "timm": "pip install 'timm>=1.0.31'",
    "efficientsam": "pip install 'efficientsam>=1.0.0'",
    "sam2": "SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'sam2>=1.1.0'",
}


class PeerUnavailable(RuntimeError):
    """A peer's package is not installed; ``pip`` is the command that installs it."""

    def __init__(self, module: str, pip: str, cause: BaseException) -> None:
        super().__init__(f"{module} is not installed ({type(cause).__name__}: {cause}); install with: {pip}")
        self.module, self.pip = module, pip


def _import(module: str, pip_key: str | None = None):
    """Import ``module`` or raise :class:`PeerUnavailable` naming the pip command for ``pip_key``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        key = pip_key or module.split(".")[0]
        raise PeerUnavailable(key, _PIP[key], e) from e


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# Display names, shared by the builders and by the skipped rows of peers that are not installed.
_NAMES = {
    "mobilesam": "MobileSAM image encoder (TinyViT-5M)",
    "efficientvit_l0": "EfficientViT-SAM-L0 image encoder",
    "sam2_hiera_t": "SAM 2.1 Hiera-T image encoder",
    "vit_b": "SAM ViT-B image encoder",
    "vit_h": "SAM ViT-H image encoder",
}


def _build_sam_vit(kind: str, device: torch.device | str) -> nn.Module:
    registry = _import("segment_anything").sam_model_registry
    with torch.device(device):
        return registry[kind](checkpoint=None).image_encoder.eval()


def build_sam_vit_b(device: torch.device | str = "cpu") -> PeerBuild:
    """SAM ViT-B image encoder: (B, 3, 1024, 1024) -> (B, 256, 64, 64). 1024 is fixed (absolute pos embed)."""
    return _NAMES["vit_b"], _build_sam_vit("vit_b", device), 1024


def build_sam_vit_h(device: torch.device | str = "cpu") -> PeerBuild:
    """SAM ViT-H image encoder: (B, 3, 1024, 1024) -> (B, 256, 64, 64); 637 M parameters (2.5 GB fp32)."""
    return _NAMES["vit_h"], _build_sam_vit("vit_h", device), 1024


def build_mobilesam(device: torch.device | str = "cpu") -> PeerBuild:
    """MobileSAM's TinyViT-5M image encoder: (B, 3, 1024, 1024) -> (B, 256, 64, 64).

    The input must be 1024: the encoder reshapes its last stage to a fixed 64x64 grid.
    """
    _import("timm", "timm")
    with warnings.catch_warnings():
        # timm deprecation shims and the tiny_vit re-registration, both harmless here
        warnings.simplefilter("ignore")
        registry = _import("mobile_sam", "mobile_sam").sam_model_registry
        # built on the CPU and then moved: TinyViT's constructor calls .item(), which meta tensors refuse
        encoder = registry["vit_t"](checkpoint=None).image_encoder.to(device).eval()
    # TinyViT builds an ImageNet classifier head that MobileSAM's forward never calls; dropping it keeps
    # the parameter count to what runs (5.74 M rather than 6.07 M).
    encoder.norm_head, encoder.head = nn.Identity(), nn.Identity()
    return _NAMES["mobilesam"], encoder, 1024


def build_efficientvit_sam_l0(device: torch.device | str = "cpu") -> PeerBuild:
    """EfficientViT-SAM-L0 image encoder: (B, 3, 512, 512) -> (B, 256, 64, 64).

    512 is L0's own encoder resolution (``EfficientViTSam.image_size == (1024, 512)``: masks at 1024,
    image encoder at 512).
    """
    zoo = _import("efficientsam.sam_model_zoo", "efficientsam")
    with torch.device(device):
        sam = zoo.create_efficientvit_sam_model("efficientvit-sam-l0", pretrained=False)
    return _NAMES["efficientvit_l0"], sam.image_encoder.eval(), int(sam.image_size[1])


class Sam2ImageEncoder(nn.Module):
    """What ``SAM2Base.forward_image`` computes for one image batch, as a plain module.

    ``forward(x)`` with x (B, 3, S, S) returns the main feature map (B, 256, S/16, S/16); with
    ``high_res_features=True`` it returns ``(main, feat_s0, feat_s1)`` with the decoder's projected
    high-resolution maps (B, 32, S/4, S/4) and (B, 64, S/8, S/8), so an exported graph keeps every branch
    ``forward_image`` runs (returning only ``main`` lets the ONNX exporter prune them).
    """

    def __init__(self, image_encoder: nn.Module, conv_s0: nn.Module, conv_s1: nn.Module,
                 high_res_features: bool = False) -> None:
        super().__init__()
        self.image_encoder, self.conv_s0, self.conv_s1 = image_encoder, conv_s0, conv_s1
        self.high_res_features = high_res_features

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.image_encoder(x)
        fpn = out["backbone_fpn"]
        s0, s1 = self.conv_s0(fpn[0]), self.conv_s1(fpn[1])
        return (out["vision_features"], s0, s1) if self.high_res_features else out["vision_features"]


def build_sam2_hiera_t(device: torch.device | str = "cpu", high_res_features: bool = False) -> PeerBuild:
    """SAM 2.1 Hiera-T image encoder (Hiera trunk + FPN neck + the decoder's high-res projections).

    (B, 3, 1024, 1024) -> (B, 256, 64, 64), or a 3-tuple with ``high_res_features`` (see
    :class:`Sam2ImageEncoder`). Built from the packaged ``configs/sam2.1/sam2.1_hiera_t.yaml``.
    """
    build = _import("sam2.build_sam", "sam2").build_sam2
    sam = build("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device=str(device), mode="eval")
    if not sam.use_high_res_features_in_sam:
        raise RuntimeError("sam2.1_hiera_t.yaml no longer enables high-res features; Sam2ImageEncoder assumes it")
    module = Sam2ImageEncoder(sam.image_encoder, sam.sam_mask_decoder.conv_s0, sam.sam_mask_decoder.conv_s1,
                              high_res_features).eval()
    return _NAMES["sam2_hiera_t"], module, int(sam.image_size)


@dataclass(frozen=True)
class Peer:
    """One comparison model: how to build it and where its code comes from."""

    key: str
    name: str
    builder: Callable[..., PeerBuild]
    dists: tuple[str, ...]  # PyPI distributions whose installed versions the tables cite
    pip: str
    source: str  # which package provides the model code, for table notes


# Cheapest first, so an interrupted benchmark run still has the small peers.
PEERS: dict[str, Peer] = {p.key: p for p in (
    Peer("mobilesam", _NAMES["mobilesam"], build_mobilesam, ("mobilesam-mirror", "timm"), _PIP["mobile_sam"],
         "`mobile_sam` `sam_model_registry['vit_t']` from mobilesam-mirror (third-party PyPI packaging of "
         "MobileSAM's repository; no official package exists)"),
    Peer("efficientvit_l0", _NAMES["efficientvit_l0"], build_efficientvit_sam_l0, ("efficientsam",),
         _PIP["efficientsam"],
         "`efficientsam.sam_model_zoo.create_efficientvit_sam_model('efficientvit-sam-l0', pretrained=False)` "
         "(PyPI packaging of mit-han-lab's EfficientViT-SAM; `efficientvit` itself is not on PyPI)"),
    Peer("sam2_hiera_t", _NAMES["sam2_hiera_t"], build_sam2_hiera_t, ("sam2", "hydra-core"), _PIP["sam2"],
         "sam2 `build_sam2('configs/sam2.1/sam2.1_hiera_t.yaml', ckpt_path=None)`: the modules "
         "`forward_image` runs (trunk, FPN neck, the mask decoder's `conv_s0`/`conv_s1`)"),
    Peer("vit_b", _NAMES["vit_b"], build_sam_vit_b, ("segment-anything",), _PIP["segment_anything"],
         "segment_anything `sam_model_registry['vit_b'](checkpoint=None)`"),
    Peer("vit_h", _NAMES["vit_h"], build_sam_vit_h, ("segment-anything",), _PIP["segment_anything"],
         "segment_anything `sam_model_registry['vit_h'](checkpoint=None)`"),
)}


def installed_versions(key: str) -> str:
    """``name==version`` of the distributions behind peer ``key`` ("name missing" for absent ones)."""
    return ", ".join(f"{d}=={v}" if (v := _dist_version(d)) else f"{d} missing" for d in PEERS[key].dists)


def build_peer(key: str, device: torch.device | str = "cpu", **kwargs) -> PeerBuild:
    """Build peer ``key`` (see :data:`PEERS`) in eval mode; raises :class:`PeerUnavailable` when not installed."""
    if key not in PEERS:
        raise KeyError(f"unknown peer {key!r}; known: {', '.join(PEERS)}")
    return PEERS[key].builder(device=device, **kwargs)
