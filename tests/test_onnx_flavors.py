"""ONNX flavours driven the way their clients drive them, compared with the torch :class:`Predictor`.

* ``edgesam`` + ``--encoder-input uint8``: X-AnyLabeling's EdgeSAM loader (cv2-resized uint8 NCHW into the
  encoder; 3-input decoder, outputs read as ``scores, masks``; best of 4 by stability; cv2 upsampling).
* ``edgesam`` decoder: EdgeSAM's own ``SamPredictorONNX`` (points through ``apply_coords``, no padding
  point, all 4 low-res masks upsampled with cv2).
* ``sam``: CVAT's browser decoder / the SAM web demo (clicks scaled by 1024 / long side, a padding point
  always appended, ``orig_im_size`` = (H, W), masks read at full size), and the low-res round trip.

Weights are random (the parity fixture's official-format checkpoint when present, else a seeded model), so
masks are not meaningful objects; what is compared is the same computation through two routes.
"""
from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # exports a 1024 uint8 encoder (~20 s CPU, minutes when the cores are shared)
cv2 = pytest.importorskip("cv2")
ort = pytest.importorskip("onnxruntime")

from edgesam.export.flavors import (EDGESAM_DECODER_INPUTS, SAM_DECODER_INPUTS, SAM_DECODER_OUTPUTS,  # noqa: E402
                                    export_flavor, export_sam_decoder)
from edgesam.inference import Predictor  # noqa: E402
from edgesam.models import EdgeSAM  # noqa: E402
from edgesam.models.checkpoint import _unwrap, load_state_dict_strict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "reference" / "parity"
S = 1024  # the clients hard-code 1024 / 256
PROMPTS = {  # original-frame prompts on skimage's chelsea (300 x 451)
    "point": dict(point_coords=[[220.0, 150.0]], point_labels=[1]),
    "point_pos_neg": dict(point_coords=[[220.0, 150.0], [40.0, 260.0]], point_labels=[1, 0]),
    "box": dict(box=[60.0, 20.0, 400.0, 280.0]),
    "box_and_point": dict(box=[60.0, 20.0, 400.0, 280.0], point_coords=[[220.0, 150.0]], point_labels=[1]),
}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _model() -> EdgeSAM:
    model = EdgeSAM(S)
    ckpt = PARITY / "edge_sam_random_fp16.pth"
    if ckpt.exists():  # official format, random weights, fp16 -> float32
        state, _ = _unwrap(torch.load(ckpt, map_location="cpu", weights_only=True))
        load_state_dict_strict(model, {k: v.float() for k, v in state.items()})
    else:
        torch.manual_seed(0)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("flavors")
    model = _model()
    image = np.ascontiguousarray(data.chelsea())  # (300, 451, 3) uint8 RGB
    predictor = Predictor.from_model(model)
    predictor.set_image(image)
    paths = export_flavor(model, d / "edgesam", "edgesam", "uint8", checkpoint_sha256="random")
    sam1 = export_sam_decoder(model, d / "sam_single.onnx")
    sam4 = export_sam_decoder(model, d / "sam_multi.onnx", single_mask=False)
    sess = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])  # noqa: E731
    return {"model": model, "image": image, "predictor": predictor, "paths": paths,
            "enc_u8": sess(paths["encoder"]), "dec_edgesam": sess(paths["decoder"]),
            "sam1": sess(sam1), "sam4": sess(sam4)}


def _reference(predictor: Predictor, prompt: dict, mask_input=None):
    """Predictor outputs for all 4 tokens: masks (4,H,W), iou (4,), stability (4,), low-res (4,256,256)."""
    p = predictor.predict_batch(prompt.get("point_coords") and np.array([prompt["point_coords"]], np.float32),
                                prompt.get("point_labels") and np.array([prompt["point_labels"]]),
                                prompt.get("box") and np.array([prompt["box"]], np.float32),
                                mask_input=mask_input, num_outputs=4)
    return p.masks[0], p.iou[0], p.stability[0], p.low_res_logits[0]


# -- client-shaped drivers (each mirrors its client's input handling) -----------------------------------
def _preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _apply_coords(coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    nh, nw = _preprocess_shape(*original_size, S)
    out = deepcopy(coords).astype(float)
    out[..., 0] *= nw / original_size[1]
    out[..., 1] *= nh / original_size[0]
    return out


def _marks_to_points(prompt: dict) -> tuple[np.ndarray, np.ndarray]:
    """X-AnyLabeling marks: points with their labels, a rectangle as two corners labelled 2 and 3."""
    pts, labels = list(prompt.get("point_coords", [])), list(prompt.get("point_labels", []))
    if "box" in prompt:
        b = prompt["box"]
        pts, labels = pts + [[b[0], b[1]], [b[2], b[3]]], labels + [2, 3]
    return np.array(pts, np.float32), np.array(labels, np.float32)


def _cv2_postprocess(low: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """(C,256,256) or (256,256) -> original size with cv2, as both EdgeSAM clients do it."""
    m = low.transpose(1, 2, 0) if low.ndim == 3 else low
    m = cv2.resize(m, (S, S))[: input_size[0], : input_size[1]]
    m = cv2.resize(m, (original_size[1], original_size[0]))
    return m.transpose(2, 0, 1) if m.ndim == 3 else m


def xanylabeling_edgesam(enc, dec, image: np.ndarray, prompt: dict) -> tuple[np.ndarray, int]:
    """X-AnyLabeling's EdgeSAM loader: -> (mask (H,W) bool, chosen token)."""
    h, w = image.shape[:2]
    th, tw = _preprocess_shape(h, w, S)
    blob = np.expand_dims(np.ascontiguousarray(cv2.resize(image, (tw, th)).transpose(2, 0, 1)), 0)
    embeddings = enc.run(None, {enc.get_inputs()[0].name: blob})[0]
    coords, labels = _marks_to_points(prompt)
    coords = np.expand_dims(_apply_coords(coords, (h, w)).astype(np.float32), 0)
    scores, masks = dec.run(None, {"image_embeddings": embeddings, "point_coords": coords,
                                   "point_labels": labels[None]})
    hi, lo = masks[0] > 1.0, masks[0] > -1.0
    stability = np.sum(hi & lo, axis=(-1, -2)) / np.sum(hi | lo, axis=(-1, -2))
    best = int(np.argmax(stability))
    return _cv2_postprocess(masks[0, best], (th, tw), (h, w)) > 0.0, best


def edgesam_onnx_predictor(dec, embedding: np.ndarray, original_size, prompt: dict) -> tuple[np.ndarray, np.ndarray]:
    """EdgeSAM's SamPredictorONNX.predict (points only, boxes as corners 2/3): -> masks (4,H,W), scores (1,4)."""
    coords, labels = _marks_to_points(prompt)
    coords = _apply_coords(coords, original_size)
    scores, low = dec.run(None, {"image_embeddings": embedding, "point_coords": coords[None].astype(np.float32),
                                 "point_labels": labels[None].astype(np.float32)})
    return _cv2_postprocess(low[0], _preprocess_shape(*original_size, S), original_size) > 0.0, scores


def cvat_decoder(dec, embedding: np.ndarray, original_size, clicks: list[tuple[float, float, int]],
                 mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CVAT's SAM plugin modelData + worker (the SAM web demo feeds the same): -> (mask (H,W) bool, low-res)."""
    h, w = original_size
    sam_scale = 1024 / max(h, w)
    n = len(clicks)
    coords = np.zeros(2 * (n + 1), np.float32)
    labels = np.zeros(n + 1, np.float32)
    for i, (x, y, t) in enumerate(clicks):
        coords[2 * i], coords[2 * i + 1], labels[i] = x * sam_scale, y * sam_scale, t
    labels[n] = -1.0
    feeds = {"image_embeddings": embedding, "point_coords": coords.reshape(1, n + 1, 2),
             "point_labels": labels.reshape(1, n + 1), "orig_im_size": np.array([h, w], np.float32),
             "mask_input": mask_input if mask_input is not None else np.zeros((1, 1, 256, 256), np.float32),
             "has_mask_input": np.array([1.0 if mask_input is not None else 0.0], np.float32)}
    out = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, feeds)))
    masks = out["masks"]
    return masks[0, 0] > 0, out["low_res_masks"]


# -- tests -----------------------------------------------------------------------------------------------
def test_graph_contracts(setup):
    names = lambda s: [i.name for i in s.get_inputs()]  # noqa: E731
    enc = setup["enc_u8"].get_inputs()[0]
    assert enc.type == "tensor(uint8)" and enc.shape[:2] == [1, 3] and isinstance(enc.shape[2], str)
    assert names(setup["dec_edgesam"]) == list(EDGESAM_DECODER_INPUTS)
    assert [o.name for o in setup["dec_edgesam"].get_outputs()] == ["scores", "masks"]
    assert names(setup["sam1"]) == list(SAM_DECODER_INPUTS)
    assert [o.name for o in setup["sam1"].get_outputs()] == list(SAM_DECODER_OUTPUTS)
    meta = json.loads(setup["paths"]["meta"].read_text())
    assert meta["flavor"] == "edgesam" and meta["encoder_input"] == "uint8" and meta["random_weights"] is True


def test_uint8_encoder_equals_predictor_embedding(setup):
    """Fed the same resized pixels (SAM's PIL resize), the uint8 graph's in-graph normalise + pad + encoder
    equals the Predictor's embedding; two different sizes exercise the dynamic h, w."""
    from segment_anything.utils.transforms import ResizeLongestSide as SamResize

    enc = setup["enc_u8"]
    for image in (setup["image"], np.ascontiguousarray(setup["image"][:, :200])):
        resized = SamResize(S).apply_image(image)
        emb = enc.run(None, {"image": resized.transpose(2, 0, 1)[None]})[0]
        p = Predictor(setup["predictor"].encoder, setup["predictor"].decoder)
        p.set_image(image)
        ref = p.embedding
        assert np.abs(emb - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max()), np.abs(emb - ref).max()


def test_xanylabeling_edgesam_loader(setup):
    """The whole X-AnyLabeling EdgeSAM route (cv2 resize on the client) vs the Predictor (PIL resize)."""
    predictor, ious, same_token = setup["predictor"], {}, 0
    for name, prompt in PROMPTS.items():
        mask, token = xanylabeling_edgesam(setup["enc_u8"], setup["dec_edgesam"], setup["image"], prompt)
        ref_masks, _, ref_stab, _ = _reference(predictor, prompt)
        ious[name] = _iou(mask, ref_masks[token])
        same_token += int(token == int(np.argmax(ref_stab)))
    print(f"\nX-AnyLabeling EdgeSAM loader vs Predictor: IoU {ious}, same token {same_token}/{len(PROMPTS)}")
    # the client's cv2 resize (no antialias) differs from SAM's PIL resize: close, not identical
    assert min(ious.values()) >= 0.99, ious


def test_edgesam_onnx_predictor(setup):
    """EdgeSAM's own ONNX predictor on the same embedding: every one of the 4 masks matches the Predictor's,
    including point-only prompts sent without a padding point (the graph adds it)."""
    predictor = setup["predictor"]
    ious = {}
    for name, prompt in PROMPTS.items():
        masks, scores = edgesam_onnx_predictor(setup["dec_edgesam"], predictor.embedding, predictor.original_hw, prompt)
        ref_masks, ref_iou, _, _ = _reference(predictor, prompt)
        ious[name] = min(_iou(masks[k], ref_masks[k]) for k in range(4))
        np.testing.assert_allclose(scores[0], ref_iou, atol=1e-4)
    print(f"\nEdgeSAM SamPredictorONNX vs Predictor: min IoU over 4 masks {ious}")
    assert min(ious.values()) >= 0.99, ious
    # a client that pads itself gets the same masks (no second padding point)
    coords = _apply_coords(np.array([[220.0, 150.0], [0.0, 0.0]]), predictor.original_hw).astype(np.float32)
    coords[1] = 0.0
    a = setup["dec_edgesam"].run(None, {"image_embeddings": predictor.embedding, "point_coords": coords[None],
                                        "point_labels": np.array([[1.0, -1.0]], np.float32)})[1]
    b = setup["dec_edgesam"].run(None, {"image_embeddings": predictor.embedding, "point_coords": coords[None, :1],
                                        "point_labels": np.array([[1.0]], np.float32)})[1]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_cvat_and_sam_demo_decoder(setup):
    """CVAT's browser decoder (and the SAM web demo) on our embedding: the single mask SAM's rule picks
    (token 0 for >= 3 points incl. padding, else the best IoU of tokens 1-3) matches the Predictor's."""
    predictor, ious = setup["predictor"], {}
    for name, clicks in {"one": [(220.0, 150.0, 1)], "pos_neg": [(220.0, 150.0, 1), (40.0, 260.0, 0)]}.items():
        mask, low = cvat_decoder(setup["sam1"], predictor.embedding, predictor.original_hw, clicks)
        prompt = dict(point_coords=[[x, y] for x, y, _ in clicks], point_labels=[t for *_, t in clicks])
        ref_masks, ref_iou, _, ref_low = _reference(predictor, prompt)
        token = 0 if len(clicks) + 1 >= 3 else 1 + int(np.argmax(ref_iou[1:]))
        ious[name] = _iou(mask, ref_masks[token])
        assert mask.shape == predictor.original_hw and low.shape == (1, 1, 256, 256)
        # CVAT scales clicks by 1024 / long side, SAM's apply_coords by the rounded resized size / side:
        # the points differ by < 0.2 px, the logits by ~1e-3
        np.testing.assert_allclose(low[0, 0], ref_low[token], atol=1e-2)
        # CVAT keeps low_res_masks; fed back as mask_input it refines like the Predictor's mask_input
        mask2, _ = cvat_decoder(setup["sam1"], predictor.embedding, predictor.original_hw, clicks, low)
        ref2 = _reference(predictor, prompt, mask_input=low[0])
        token2 = 0 if len(clicks) + 1 >= 3 else 1 + int(np.argmax(ref2[1][1:]))
        ious[name + "+mask"] = _iou(mask2, ref2[0][token2])
    print(f"\nCVAT / SAM web demo decoder vs Predictor: IoU {ious}")
    assert min(ious.values()) >= 0.99, ious


def test_sam_multimask_low_res_equals_predictor(setup):
    predictor = setup["predictor"]
    coords = _apply_coords(np.array([[220.0, 150.0], [0.0, 0.0]]), predictor.original_hw).astype(np.float32)
    coords[1] = 0.0
    out = setup["sam4"].run(None, {"image_embeddings": predictor.embedding, "point_coords": coords[None],
                                   "point_labels": np.array([[1.0, -1.0]], np.float32),
                                   "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                                   "has_mask_input": np.zeros(1, np.float32),
                                   "orig_im_size": np.array(predictor.original_hw, np.float32)})
    masks, iou, low = out
    ref_masks, ref_iou, _, ref_low = _reference(predictor, PROMPTS["point"])
    assert masks.shape == (1, 4, *predictor.original_hw)
    np.testing.assert_allclose(low[0], ref_low, atol=1e-3)
    np.testing.assert_allclose(iou[0], ref_iou, atol=1e-4)
    assert min(_iou(masks[0, k] > 0, ref_masks[k]) for k in range(4)) >= 0.99


def test_cli_flavors(tmp_path):
    """``python -m edgesam.export --flavor ... --encoder-input ...`` writes the flavour's graphs."""
    from edgesam.export.export_cli import main

    assert main(["--random", "--img-size", "64", "--out", str(tmp_path / "s"), "--flavor", "sam"]) == 0
    s = ort.InferenceSession(str(tmp_path / "s" / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in s.get_inputs()] == list(SAM_DECODER_INPUTS)
    meta = json.loads((tmp_path / "s" / "export_meta.json").read_text())
    assert meta["flavor"] == "sam" and meta["encoder_input"] == "float" and meta["sam_single_mask"] is True
    with pytest.raises(SystemExit):
        main(["--random", "--out", str(tmp_path / "x"), "--flavor", "coreml"])


def test_sam_decoder_crop_follows_orig_im_size(setup):
    """The crop of the padded square depends on orig_im_size at run time, not on the trace example."""
    predictor = setup["predictor"]
    coords = np.array([[[300.0, 200.0], [0.0, 0.0]]], np.float32)
    feeds = {"image_embeddings": predictor.embedding, "point_coords": coords,
             "point_labels": np.array([[1.0, -1.0]], np.float32),
             "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)}
    for hw in ((300, 451), (451, 300), (600, 600)):
        masks, _, low = setup["sam1"].run(None, {**feeds, "orig_im_size": np.array(hw, np.float32)})
        p = Predictor(setup["predictor"].encoder, setup["predictor"].decoder)
        p.set_embedding(predictor.embedding, hw)
        want = p.upsample(torch.from_numpy(low), return_logits=True)
        assert masks.shape == (1, 1, *hw)
        np.testing.assert_allclose(masks, want, atol=1e-3)
