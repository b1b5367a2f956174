"""The torch backend's fast path on CPU: ``torch.compile(fullgraph=True)`` equivalence, half precision with the
FP32 scopes kept, prompt bucketing, and the settings' validation. CUDA graphs need a GPU (``gpu`` marker).

Weights are random (seeded): these tests compare runtimes of one model with each other, not with ground truth.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from edgesam.data.transforms import preprocess
from edgesam.inference.backends import TorchDecoder, TorchEncoder
from edgesam.inference.cuda_graphs import CudaGraphRunner, bucket_for, check_buckets
from edgesam.inference.rpn_backends import TorchRpnEncoder
from edgesam.inference.torch_options import TorchOptions
from edgesam.models import EdgeSAM
from edgesam.models.half import to_half
from edgesam.models.rpn import build_rpn

S = 128


@pytest.fixture(scope="module")
def model() -> EdgeSAM:
    torch.manual_seed(0)
    m = EdgeSAM(S).eval()
    m.rpn = build_rpn(m.image_encoder.feature_channels).eval()
    return m


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """scikit-image's astronaut, preprocessed to (1,3,S,S) float32."""
    from skimage import data

    x, _ = preprocess(data.astronaut(), S)
    return x.numpy()


def _prompts(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """n prompts of 2 points: points with SAM's padding point, and boxes (labels 2, 3), in the S frame."""
    rng = np.random.RandomState(seed)
    xy = rng.rand(n, 2, 2).astype(np.float32) * S
    boxes = np.sort(xy, axis=1)
    labels = np.array([[1, -1] if i % 2 else [2, 3] for i in range(n)], np.float32)
    coords = np.where(labels[..., None] >= 2, boxes, xy).astype(np.float32)
    return coords, labels


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _compile_report() -> dict[str, float]:
    """Max |compiled - eager| / max(1, max |eager|) of the encoder, the RPN encoder's three outputs and the split
    decoder (5 prompts padded to bucket 8) under ``torch.compile(fullgraph=True)`` (inductor), float32, seeded
    random weights, on a photo; plus the compiled decoder's mask count."""
    torch.manual_seed(0)
    model = EdgeSAM(S).eval()
    model.rpn = build_rpn(model.image_encoder.feature_channels).eval()
    from skimage import data

    photo = preprocess(data.astronaut(), S)[0].numpy()
    compiled = TorchOptions(compile=True, split_decoder=True, prompt_buckets=(1, 8))
    err = lambda got, ref: float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))  # noqa: E731
    emb = TorchEncoder(model.image_encoder, S)(photo)
    out = {"encoder": err(TorchEncoder(model.image_encoder, S, "cpu", compiled)(photo), emb)}
    ref = TorchRpnEncoder(model.image_encoder, model.rpn, S)(photo)
    got = TorchRpnEncoder(model.image_encoder, model.rpn, S, "cpu", compiled)(photo)
    out.update({f"rpn_{name}": err(g, r) for name, g, r in zip(("embedding", "boxes", "scores"), got, ref)})
    coords, labels = _prompts(5)
    m_ref, i_ref = TorchDecoder(model.as_prompt_decoder())(emb, coords, labels)
    m_c, i_c = TorchDecoder(model.as_prompt_decoder(), "cpu", compiled)(emb, coords, labels)
    out.update({"decoder_masks": err(m_c, m_ref), "decoder_iou": err(i_c, i_ref), "decoder_count": len(m_c)})
    return out


def test_compile_fullgraph_matches_eager() -> None:
    """Encoder, RPN encoder and split decoder under ``torch.compile(fullgraph=True)`` (inductor) match eager
    float32 to 1e-4, and the compiled decoder pads 5 prompts to bucket 8 without changing them.

    Inductor's CPU kernels are shared objects linked against the compiler's OpenMP, next to the one torch ships;
    the check runs in its own process so the suite's process never holds both at exit."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", "import json, tests.test_torch_fast as t; "
                                                 "print(json.dumps(t._compile_report()))"],
                          cwd=root, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print("torch.compile vs eager, max error relative to max(1, |eager|):", report)
    assert report.pop("decoder_count") == 5
    assert set(report) == {"encoder", "rpn_embedding", "rpn_boxes", "rpn_scores", "decoder_masks", "decoder_iou"}
    assert all(v <= 1e-4 for v in report.values()), report


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_keeps_fp32_scopes(model: EdgeSAM, dtype: str) -> None:
    """Normalisations and the PE stay float32; convolutions and linears take the half dtype; the caller's
    model is left in float32."""
    opts = TorchOptions(dtype=dtype, fuse=True, split_decoder=True)
    enc = TorchEncoder(model.image_encoder, S, "cpu", opts)
    dec = TorchDecoder(model.as_prompt_decoder(), "cpu", opts)
    half = opts.torch_dtype
    norms = [m for mod in (enc.encoder, dec.prompt_decoder) for m in mod.modules()
             if isinstance(m, (nn.LayerNorm, LayerNorm2d))]
    assert len(norms) >= 2 + 9  # neck (2) + two-way transformer (9) + upscaling
    assert all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    pes = [m for m in dec.prompt_decoder.modules() if isinstance(m, PositionEmbeddingRandom)]
    assert pes and all(m.positional_encoding_gaussian_matrix.dtype == torch.float32 for m in pes)
    convs = [m for m in enc.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.dtype == half for m in convs)
    linears = [m for m in dec.prompt_decoder.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.dtype == half for m in linears)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(type(m) in (nn.LayerNorm, LayerNorm2d) for m in model.modules()
               if isinstance(m, (nn.LayerNorm, LayerNorm2d)))


def test_to_half_refuses_other_dtypes() -> None:
    with pytest.raises(ValueError, match="float16 or torch.bfloat16"):
        to_half(nn.Linear(2, 2), torch.int8)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_masks_match_fp32_on_a_photo(model: EdgeSAM, photo: np.ndarray, dtype: str) -> None:
    """Half precision (split and reference decoder) against float32 on a photo, box and point prompts:
    mean mask IoU >= 0.98 and embedding error <= 5 % (random weights; masks checked non-trivial)."""
    emb = TorchEncoder(model.image_encoder, S)(photo)
    opts = TorchOptions(dtype=dtype, channels_last=True, fuse=True, split_decoder=True)
    emb_h = TorchEncoder(model.image_encoder, S, "cpu", opts)(photo)
    assert np.linalg.norm(emb_h - emb) / np.linalg.norm(emb) <= 0.05
    coords, labels = _prompts(16, seed=3)
    m_ref, _ = TorchDecoder(model.as_prompt_decoder())(emb, coords, labels)
    fg = (m_ref[:, 0] > 0).mean(axis=(1, 2))
    assert ((fg > 0.01) & (fg < 0.99)).sum() >= 8, fg
    for split in (True, False):
        m_h, _ = TorchDecoder(model.as_prompt_decoder(), "cpu",
                              TorchOptions(dtype=dtype, fuse=True, split_decoder=split))(emb_h, coords, labels)
        ious = [_iou(m_h[i, 0], m_ref[i, 0]) for i in range(len(coords))]
        assert np.mean(ious) >= 0.98, (split, ious)


def test_split_decoder_reuses_the_image_side(model: EdgeSAM, photo: np.ndarray) -> None:
    """Calls with the same embedding tensor run the image side once; a new tensor runs it again."""
    dec = TorchDecoder(model.as_prompt_decoder(), "cpu", TorchOptions(split_decoder=True))
    calls = []
    inner = dec._image_side
    dec._image_side = lambda e: calls.append(1) or inner(e)
    emb = torch.as_tensor(TorchEncoder(model.image_encoder, S)(photo))
    coords, labels = (torch.as_tensor(a) for a in _prompts(3))
    a = dec.decode_tensors(emb, coords, labels)
    b = dec.decode_tensors(emb, coords[:1], labels[:1])
    assert len(calls) == 1 and torch.allclose(a[0][:1], b[0], atol=1e-5)
    dec.decode_tensors(emb.clone(), coords, labels)
    assert len(calls) == 2


def test_options_validation() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        TorchOptions(dtype="fp8")
    with pytest.raises(ValueError, match="strictly ascending"):
        TorchOptions(prompt_buckets=(8, 8))
    with pytest.raises(ValueError, match="max_graphs"):
        TorchOptions(max_graphs=0)
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        TorchEncoder(nn.Identity(), S, "cpu", TorchOptions(cuda_graphs=True))
    assert TorchOptions.for_device("cpu") == TorchOptions()
    gpu = TorchOptions.for_device("cuda:0", compile=True)
    assert (gpu.dtype, gpu.channels_last, gpu.split_decoder, gpu.compile) == ("fp16", True, True, True)
    assert gpu.backend_name("cuda:0") == "torch-cuda:0-fp16-cl-compiled-split"
    assert TorchOptions().backend_name("cpu") == "torch-cpu"


def test_buckets() -> None:
    assert [bucket_for(n, (1, 8, 64)) for n in (1, 2, 8, 9, 64, 65, 1000)] == [1, 8, 8, 64, 64, 64, 64]
    assert check_buckets([1, 4]) == (1, 4)
    for bad in ([], [0, 1], [4, 2]):
        with pytest.raises(ValueError):
            check_buckets(bad)
    with pytest.raises(ValueError):
        bucket_for(0, (1,))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_match_eager(model: EdgeSAM, photo: np.ndarray) -> None:
    """CUDA-graph replays of the encoder and the split decoder equal eager runs on the same device, and the
    graph cache stays within ``max_graphs``."""
    base = TorchOptions(split_decoder=True)
    graphs = TorchOptions(split_decoder=True, cuda_graphs=True, prompt_buckets=(1, 8), max_graphs=2)
    emb = TorchEncoder(model.image_encoder, S, "cuda", base)(photo)
    emb_g = TorchEncoder(model.image_encoder, S, "cuda", graphs)(photo)
    assert np.abs(emb_g - emb).max() <= 1e-4 * max(1.0, np.abs(emb).max())
    dec = TorchDecoder(model.as_prompt_decoder(), "cuda", graphs)
    for n in (1, 5, 12):
        coords, labels = _prompts(n)
        m_ref, _ = TorchDecoder(model.as_prompt_decoder(), "cuda", base)(emb, coords, labels)
        m_g, _ = dec(emb, coords, labels)
        assert np.abs(m_g - m_ref).max() <= 1e-3 * max(1.0, np.abs(m_ref).max())
    assert isinstance(dec._prompt_side, CudaGraphRunner) and len(dec._prompt_side) <= 2


def test_configs_reach_the_torch_backends(tmp_path) -> None:
    """``model.torch`` in the serve and annotate configs selects the torch options their backends run with,
    and the half-precision server agrees with the float32 one on a photo (box prompts, mask IoU >= 0.98)."""
    from edgesam.config import load_config
    from pipelines.annotate_config import AnnotateConfig
    from pipelines.annotate_model import build_generator
    from serve.config import ModelSection
    from serve.model import load_backends

    from tests.students import random_student_checkpoint

    ckpt = random_student_checkpoint(tmp_path / "s.pt", S, seed=0)
    base = dict(checkpoint=str(ckpt), backend="torch", img_size=S, device="cpu", threads=1)
    ref = load_backends(ModelSection(**base))
    half = load_backends(ModelSection(**base, torch={"dtype": "bf16", "split_decoder": True}))
    assert ref.info.backend == "torch-cpu/torch-cpu"
    assert half.info.backend == "torch-cpu-bf16-split/torch-cpu-bf16-split"
    from skimage import data

    x, _ = preprocess(data.coffee(), S)
    coords, labels = _prompts(12, seed=5)
    m_ref, _ = ref.decoder(ref.encoder(x.numpy()), coords, labels)
    m_half, _ = half.decoder(half.encoder(x.numpy()), coords, labels)
    assert np.mean([_iou(m_half[i, 0], m_ref[i, 0]) for i in range(len(coords))]) >= 0.98

    cfg = load_config(AnnotateConfig, "annotate", [f"model.checkpoint={ckpt}", f"model.img_size={S}",
                                                   "everything.mode=grid", "model.torch.dtype=bf16"])
    gen = build_generator(cfg, device="cpu")
    assert gen.decoder.name == "torch-cpu-bf16" and gen.encoder.name == "torch-cpu-bf16"
    assert gen.encoder.opts.fuse  # half precision runs on the fused encoder
