"""A faster, numerically equivalent decoder for prompts without a mask input: image side once, prompts after.

SAM's decoder (``EdgeMaskDecoder.predict_all``) costs ~1.8 GMAC per prompt at S = 1024, and most of it is
work on the 4096 image tokens that is either the same for every prompt or can be reordered:

* Block 1 of the two-way transformer sees the image tokens before any prompt has touched them (with no mask
  input the dense embedding is the constant no-mask vector). Its token->image keys/values and its
  image->token queries are therefore computed ONCE per image (:class:`ImageSide`, ``decoder_image.onnx``).
* Every attention here has few tokens on one side (T = 5 output tokens + P prompt points). The 4096 x 256
  -> 128 projections of the image side are folded into the T-side instead, exactly by associativity:
  ``q k^T = (q W_k) x^T + q b_k`` and ``A (x W_v + b_v) = (A x) W_v + b_v`` (rows of A sum to 1) for
  token->image attention, ``(x W_q + b_q) k^T = x (W_q^T k^T) + b_q k^T`` and ``A (v W_o) = (A v) W_o`` for
  image->token attention. That replaces a 4096 x 256 x 128 GEMM by a 4096 x 256 x 8T one (8 heads).
* The output upscaling (two 2x2 stride-2 transposed convolutions with a channel LayerNorm between them)
  is the same arithmetic written as per-pixel GEMMs on a token-major layout with ONNX LayerNormalization
  (fused in ONNX Runtime), and the four sub-pixel phases are put in place by one final transpose.

At S = 1024 and T = 7 this is ~0.85 GMAC per prompt instead of 1.81 (``benchmarks/decoder_fast.py``
counts both). Outputs agree with the reference decoder to float rounding (tests: max |logit diff| and
mask IoU). Graphs:

``decoder_image.onnx``   ``image_embeddings`` (1,256,h,w) -> ``keys0`` (1,hw,256), ``k1`` (1,8,hw,16),
                         ``v1`` (1,8,hw,16), ``q1`` (1,8,hw,16)
``decoder_prompt.onnx``  ``keys0``, ``k1``, ``v1``, ``q1``, ``point_coords`` (N,P,2), ``point_labels`` (N,P)
                         -> ``scores`` (N,4), ``masks`` (N,4,4h,4w) (as ``decoder.onnx``)

A mask prompt changes the image side of block 1 per prompt; callers with ``mask_input`` use ``decoder.onnx``
(:class:`edgesam.inference.ort_fast.OrtFastDecoder` does that itself).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..models.prompt_decoder import PromptDecoder
from .onnx_common import FP32_SCOPES_KEY, PointPromptEmbedding, _export, _finalise, _fp32_scopes

IMAGE_FILE = "decoder_image.onnx"
PROMPT_FILE = "decoder_prompt.onnx"
IMAGE_OUTPUTS = ("keys0", "k1", "v1", "q1")
PROMPT_INPUTS = (*IMAGE_OUTPUTS, "point_coords", "point_labels")
PROMPT_OUTPUTS = ("scores", "masks")


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(B, L, C) -> (B, h, L, C/h)."""
    b, n, c = x.shape
    return x.reshape(b, n, h, c // h).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, h, L, d) -> (B, L, h*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, computed in float32 for half inputs (a normalisation: exp of fp16 logits
    overflows and the sum loses the small terms) and returned in the input dtype."""
    if x.dtype == torch.float32:
        return torch.softmax(x, dim=-1)
    return torch.softmax(x.float(), dim=-1).to(x.dtype)


class ImageSide(nn.Module):
    """Per-image part: (1,256,h,w) -> keys0 (1,hw,256), k1, v1, q1 (1,8,hw,16) of transformer block 1."""

    def __init__(self, pd: PromptDecoder) -> None:
        super().__init__()
        pe, md = pd.prompt_encoder, pd.mask_decoder
        blk = md.transformer.layers[0]
        self.heads = blk.cross_attn_token_to_image.num_heads
        self.t2i, self.i2t = blk.cross_attn_token_to_image, blk.cross_attn_image_to_token
        self.register_buffer("pos", pe.get_dense_pe().detach().flatten(2).transpose(1, 2).clone())  # (1,hw,256)
        self.register_buffer("no_mask", pe.no_mask_embed.weight.detach().reshape(1, 1, -1).clone())

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        keys = image_embeddings.flatten(2).transpose(1, 2) + self.no_mask  # (1,hw,256)
        kp = keys + self.pos
        h = self.heads
        return keys, _heads(self.t2i.k_proj(kp), h), _heads(self.t2i.v_proj(keys), h), _heads(self.i2t.q_proj(kp), h)


def _token_to_image(attn: nn.Module, q_in: torch.Tensor, x_k: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
    """SAM ``Attention`` with few queries (N,T,C) over many keys, the key/value projections folded to the T side.

    x_k (N,L,C) key input (image tokens + PE), x_v (N,L,C) value input -> (N,T,C)."""
    h = attn.num_heads
    n, t, _ = q_in.shape
    q = _heads(attn.q_proj(q_in), h)  # (N,h,T,d)
    d = q.shape[-1]
    wk = attn.k_proj.weight.reshape(h, d, -1)  # (h,d,C)
    qw = (q @ wk).reshape(n, h * t, -1)  # (N,hT,C)
    qb = (q * attn.k_proj.bias.reshape(1, h, 1, d)).sum(-1).reshape(n, h * t, 1)
    logits = (qw @ x_k.transpose(1, 2) + qb) / math.sqrt(d)  # (N,hT,L)
    a = _softmax(logits)
    ax = (a @ x_v).reshape(n, h, t, -1)  # (N,h,T,C)
    wv = attn.v_proj.weight.reshape(h, d, -1).transpose(1, 2)  # (h,C,d)
    out = ax @ wv + attn.v_proj.bias.reshape(1, h, 1, d)  # (N,h,T,d)
    return attn.out_proj(_merge(out))


def _image_to_token(attn: nn.Module, scores: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """Softmax over T of ``scores`` (N,h,L,T) (already scaled), values ``v_in`` (N,T,C) -> (N,L,C), out-proj folded."""
    h = attn.num_heads
    n, _, l, t = scores.shape
    a = _softmax(scores).transpose(1, 2).reshape(n, l, h * t)  # (N,L,hT)
    v = _heads(attn.v_proj(v_in), h)  # (N,h,T,d)
    d = v.shape[-1]
    wo = attn.out_proj.weight.t().reshape(h, d, -1)  # (h,d,C)
    vw = (v @ wo).reshape(n, h * t, -1)  # (N,hT,C)
    return a @ vw + attn.out_proj.bias


def _i2t_scores_folded(attn: nn.Module, x_q: torch.Tensor, k_in: torch.Tensor) -> torch.Tensor:
    """Scaled image->token logits (N,h,L,T) with the image-side query projection folded: x_q (N,L,C), k_in (N,T,C)."""
    h = attn.num_heads
    k = _heads(attn.k_proj(k_in), h)  # (N,h,T,d)
    n, _, t, d = k.shape
    wq = attn.q_proj.weight.reshape(h, d, -1)  # (h,d,C)
    m = (k @ wq).reshape(n, h * t, -1)  # (N,hT,C)
    b = (k * attn.q_proj.bias.reshape(1, h, 1, d)).sum(-1).reshape(n, 1, h * t)
    s = (x_q @ m.transpose(1, 2) + b) / math.sqrt(d)  # (N,L,hT)
    return s.reshape(n, -1, h, t).transpose(1, 2)


class _PixelLinear(nn.Module):
    """ConvTranspose2d(k=2, s=2) as a per-pixel linear map to its 4 sub-pixel phases: x (...,Cin) ->
    (...,4*Cout), phases (a, b) major. A module of its own so that its ONNX MatMul carries a scope
    (``/up1/``, ``/up2/``) by which INT8 quantisation selects it."""

    def __init__(self, conv: nn.ConvTranspose2d) -> None:
        super().__init__()
        self.register_buffer("w", conv.weight.detach().permute(0, 2, 3, 1).reshape(conv.in_channels, -1).clone())
        self.register_buffer("b", conv.bias.detach().repeat(4).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


class PromptSide(nn.Module):
    """Per-prompt part: (keys0, k1, v1, q1 from :class:`ImageSide`, coords (N,P,2), labels (N,P)) -> scores (N,4),
    masks (N,4,4h,4w), equal to the reference decoder with no mask input."""

    def __init__(self, pd: PromptDecoder) -> None:
        super().__init__()
        self.pe, self.md = pd.prompt_encoder, pd.mask_decoder
        self.prompt_pe = PointPromptEmbedding(self.pe)  # its own ONNX scope: kept FP32 in FP16 copies
        self.h, self.w = self.pe.image_embedding_size
        self.register_buffer("pos", self.pe.get_dense_pe().detach().flatten(2).transpose(1, 2).clone())
        up = self.md.output_upscaling
        c1, ln, c2 = up[0], up[1], up[3]
        self.up1, self.up2 = _PixelLinear(c1), _PixelLinear(c2)
        self.ln, self.c1_out, self.c2_out = ln, c1.out_channels, c2.out_channels

    def _layer_norm(self, z: torch.Tensor) -> torch.Tensor:
        """The upscaling LayerNorm over the last axis (64 channels), in the dtype of its weights: float32 when
        :func:`edgesam.models.half.to_half` kept it so, with the result cast back to ``z``'s dtype."""
        w = self.ln.weight
        if z.dtype == w.dtype:
            return F.layer_norm(z, (self.c1_out,), w, self.ln.bias, self.ln.eps)
        return F.layer_norm(z.to(w.dtype), (self.c1_out,), w, self.ln.bias, self.ln.eps).to(z.dtype)

    def _upscale_masks(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """keys (N,hw,256), hyper (N,K,32) -> masks (N,K,4h,4w)."""
        n, hw, _ = keys.shape
        z = self.up1(keys).reshape(n, hw, 4, self.c1_out)  # (N,hw,(a,b),64)
        z = F.gelu(self._layer_norm(z))
        y = F.gelu(self.up2(z)).reshape(n, hw * 16, self.c2_out)  # (N, hw*(a,b)*(c,d), 32)
        m = y @ hyper.transpose(1, 2)  # (N, hw*16, K)
        k = hyper.shape[1]
        m = m.reshape(n, self.h, self.w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)  # n k i a c j b d
        return m.reshape(n, k, 4 * self.h, 4 * self.w)

    def forward(self, keys0: torch.Tensor, k1: torch.Tensor, v1: torch.Tensor, q1: torch.Tensor,
                point_coords: torch.Tensor, point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        md, tr = self.md, self.md.transformer
        sparse = self.prompt_pe(point_coords, point_labels)  # (N,P,256)
        n = sparse.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)  # (N,T,256)
        b1, b2 = tr.layers[0], tr.layers[1]
        d = k1.shape[-1]
        # block 1: image side precomputed
        q = b1.norm1(b1.self_attn(q=tokens, k=tokens, v=tokens))
        qq = _heads(b1.cross_attn_token_to_image.q_proj(q + tokens), k1.shape[1])  # (N,h,T,d)
        a = _softmax(qq @ k1.transpose(-1, -2) / math.sqrt(d))
        q = b1.norm2(q + b1.cross_attn_token_to_image.out_proj(_merge(a @ v1)))
        q = b1.norm3(q + b1.mlp(q))
        kk = _heads(b1.cross_attn_image_to_token.k_proj(q + tokens), k1.shape[1])  # (N,h,T,d)
        s = q1 @ kk.transpose(-1, -2) / math.sqrt(d)  # (N,h,hw,T)
        keys = b1.norm4(keys0 + _image_to_token(b1.cross_attn_image_to_token, s, q))
        # block 2: image tokens now depend on the prompt; projections folded to the token side
        qp = q + tokens
        q = b2.norm1(q + b2.self_attn(q=qp, k=qp, v=q))
        kp = keys + self.pos
        q = b2.norm2(q + _token_to_image(b2.cross_attn_token_to_image, q + tokens, kp, keys))
        q = b2.norm3(q + b2.mlp(q))
        s = _i2t_scores_folded(b2.cross_attn_image_to_token, kp, q + tokens)
        keys = b2.norm4(keys + _image_to_token(b2.cross_attn_image_to_token, s, q))
        q = tr.norm_final_attn(q + _token_to_image(tr.final_attn_token_to_image, q + tokens, keys + self.pos, keys))
        iou = md.iou_prediction_head(q[:, 0])
        mask_tok = q[:, 1:1 + md.num_mask_tokens]
        hyper = torch.stack([mlp(mask_tok[:, i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1)
        return iou, self._upscale_masks(keys, hyper)


class FastPromptDecoder(nn.Module):
    """Both parts as one torch module with :class:`PromptDecoder`'s call (mask_input must be None)."""

    def __init__(self, pd: PromptDecoder) -> None:
        super().__init__()
        self.image_side, self.prompt_side = ImageSide(pd), PromptSide(pd)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (masks (N,4,4h,4w), iou (N,4)), the order of :func:`decode_prompts`."""
        if mask_input is not None:
            raise ValueError("FastPromptDecoder has no mask input; use the reference PromptDecoder for mask prompts")
        if image_embeddings.shape[0] != 1:
            raise ValueError(f"FastPromptDecoder takes one embedding (1,256,h,w), got {tuple(image_embeddings.shape)}")
        iou, masks = self.prompt_side(*self.image_side(image_embeddings), point_coords, point_labels)
        return masks, iou


def export_fast_decoder(model: nn.Module, out_dir: str | Path, opset: int = 17) -> dict[str, Path]:
    """Write ``decoder_image.onnx`` and ``decoder_prompt.onnx`` for an :class:`EdgeSAM` into ``out_dir``."""
    out = Path(out_dir)
    pd = model.prompt_decoder if isinstance(getattr(model, "prompt_decoder", None), nn.Module) \
        else model.as_prompt_decoder()
    pd = copy.deepcopy(pd).cpu().float().eval()
    fast = FastPromptDecoder(pd).eval()
    h = model.img_size // 16
    emb = torch.randn(1, 256, h, h)
    with torch.no_grad():
        img_out = fast.image_side(emb)
    _export(fast.image_side, (emb,), out / IMAGE_FILE, ("image_embeddings",), IMAGE_OUTPUTS, opset)
    n, p = 2, 3  # not 1: keeps the tracer from specialising a broadcast on these axes
    coords = torch.rand(n, p, 2) * model.img_size
    labels = torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]])
    pts = {0: "num_prompts", 1: "num_points"}
    with torch.no_grad():
        _export(fast.prompt_side, (*img_out, coords, labels), out / PROMPT_FILE, PROMPT_INPUTS, PROMPT_OUTPUTS, opset,
                {"point_coords": pts, "point_labels": pts, "scores": {0: "num_prompts"}, "masks": {0: "num_prompts"}})
    for name in (IMAGE_FILE, PROMPT_FILE):
        _finalise(out / name, {FP32_SCOPES_KEY: json.dumps(_fp32_scopes(out / name)),
                               "edgesam.img_size": str(model.img_size)})
    return {"decoder_image": out / IMAGE_FILE, "decoder_prompt": out / PROMPT_FILE}
