"""mIoU protocol and figures. Models are randomly initialised (no weights can be downloaded)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from pycocotools import mask as mask_utils

from edgesam.data.transforms import ResizeLongestSide, preprocess
from edgesam.eval import (EvalSample, evaluate_model, gt_prompts_and_lowres, instance_ious, mask_grid, plot_curves,
                          run_protocol)
from edgesam.models import EdgeSAM, build_teacher

S = 256
STAGES = ("box", "box+1", "box+2", "point", "point+1", "point+2")


def _synthetic_set(seed: int = 0) -> tuple[list[EvalSample], list[np.ndarray]]:
    """Random images with rectangle / ellipse GT masks at the original size (plus one image without instances)."""
    rng = np.random.default_rng(seed)
    samples, images = [], []
    for idx, (h, w, k) in enumerate([(300, 200, 5), (180, 250, 4), (120, 120, 0)]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        masks = np.zeros((k, h, w), bool)
        yy, xx = np.mgrid[:h, :w]
        for j in range(k):
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            hh, ww = rng.integers(20, h // 2), rng.integers(20, w // 2)
            if j % 2:
                masks[j] = ((yy - y0 - hh / 2) / (hh / 2)) ** 2 + ((xx - x0 - ww / 2) / (ww / 2)) ** 2 <= 1
            else:
                masks[j, y0:y0 + hh, x0:x0 + ww] = True
        boxes = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                          for ys, xs in (np.nonzero(m) for m in masks)], np.float32).reshape(-1, 4)
        tf = ResizeLongestSide(S)
        _, input_hw = preprocess(image, S)
        samples.append(EvalSample(f"img{idx}", input_hw, (h, w), tf.apply_boxes(boxes, (h, w)), gt_masks=masks))
        images.append(image)
    return samples, images


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    student = EdgeSAM(S).eval()
    teacher = build_teacher("tiny", img_size=S)
    samples, images = _synthetic_set()
    with torch.no_grad():
        inputs = [preprocess(im, S)[0] for im in images]
        return {"student": student, "teacher": teacher, "samples": samples, "images": images,
                "embs": [student.embed(x) for x in inputs], "tembs": [teacher.embed(x).half() for x in inputs]}


def test_model_against_itself_is_perfect_and_clicks_are_ignored(models):
    student = models["student"]
    res = evaluate_model(student.decode, models["embs"], models["samples"], S, reference_fn=student.decode)
    for stage in STAGES:
        assert res[stage] == pytest.approx(100.0), stage
    for stage in ("box+1", "box+2", "point+1", "point+2"):
        assert res[f"ignored_clicks/{stage}"] == 1.0
    assert res["num_instances"] == 9 and res["num_images"] == 2
    sample = models["samples"][0]
    centres, _ = gt_prompts_and_lowres(sample, S)
    trace = run_protocol(student.decode, models["embs"][0], sample, "box", S, reference_fn=student.decode,
                         generator=torch.Generator().manual_seed(0))
    assert [lab.tolist() for lab in trace.click_labels] == [[-2.0] * 5, [-2.0] * 5]
    assert trace.coords.shape == (5, 4, 2) and trace.labels[0].tolist() == [2.0, 3.0, -2.0, -2.0]


def test_against_gt_and_teacher_are_percentages(models):
    student, teacher = models["student"], models["teacher"]
    vs_gt = evaluate_model(student.decode, models["embs"], models["samples"], S, seed=1)
    vs_teacher = evaluate_model(student.decode, models["embs"], models["samples"], S, reference_fn=teacher.decode,
                                reference_embeddings=models["tembs"], seed=1)
    for res in (vs_gt, vs_teacher):
        assert res["num_instances"] == 9 and res["num_images"] == 2
        for stage in STAGES:
            assert 0.0 <= res[stage] <= 100.0, (stage, res)
    # a random student disagrees with the GT: refinement clicks are real (not ignored)
    assert vs_gt["ignored_clicks/box+1"] < 1.0
    again = evaluate_model(student.decode, models["embs"], models["samples"], S, seed=1)
    assert again == vs_gt  # seeded
    # token choice by the IoU head (3 outputs) also runs
    multi = evaluate_model(student.decode, models["embs"], models["samples"], S, num_outputs=3, refine_iters=0,
                           kinds=("point",))
    assert set(multi) == {"point", "num_instances", "num_images"}


def _block_masks() -> tuple[np.ndarray, np.ndarray]:
    """Masks aligned to 4-px blocks on a (192, 256) image: exactly representable at S/4."""
    masks = np.zeros((3, 192, 256), bool)
    masks[0, 8:64, 16:100] = True
    masks[1, 100:192, 200:256] = True  # touches the bottom-right corner of the image
    masks[2, 40:52, 120:180] = True
    lowres = np.zeros((3, 64, 64), bool)
    lowres[:, :48, :64] = masks[:, ::4, ::4]
    return masks, lowres


def test_oracle_decoder_scores_exactly():
    masks, lowres = _block_masks()
    boxes = np.array([[16, 8, 100, 64], [200, 100, 256, 192], [120, 40, 180, 52]], np.float32)
    sample = EvalSample("blocks", (192, 256), (192, 256), boxes, gt_masks=masks)
    centres, gt_lowres = gt_prompts_and_lowres(sample, S)
    assert torch.equal(gt_lowres, torch.from_numpy(lowres))
    x, y = centres[2]  # 12 x 60 rectangle at x 120..179, y 40..51: the mid-ridge of its distance peak
    assert x in (149, 150) and y in (45, 46)

    perfect = torch.where(torch.from_numpy(lowres), 10.0, -10.0)

    def oracle(emb, coords, labels):  # the GT itself, one map per prompt (instances in order)
        return perfect[:, None].expand(-1, 4, -1, -1), torch.zeros(len(coords), 4)

    # Bilinear upsampling (S/4 -> S -> original) rounds off exactly the rectangle corners that lie inside the
    # image: 4 px of instance 0 and 2, 2 px of instance 1 (its right/bottom corners sit on the image border).
    exact = [1 - 4 / (56 * 84), 1 - 2 / (92 * 56), 1 - 4 / (12 * 60)]
    res = evaluate_model(oracle, [torch.zeros(1, 256, 16, 16)], [sample], S)
    for stage in STAGES:
        assert res[stage] == pytest.approx(100 * np.mean(exact))
    assert res["ignored_clicks/point+2"] == 1.0

    missing = perfect.clone()
    missing[1] = -10.0  # instance 1 never predicted: IoU 0

    def partial(emb, coords, labels):
        return missing[:, None].expand(-1, 4, -1, -1), torch.zeros(len(coords), 4)

    res = evaluate_model(partial, [torch.zeros(1, 256, 16, 16)], [sample], S)
    expected = 100 * (exact[0] + exact[2]) / 3
    assert res["box"] == pytest.approx(expected) and res["point+2"] == pytest.approx(expected)
    assert res["ignored_clicks/box+1"] == pytest.approx(2 / 3)
    trace = run_protocol(partial, torch.zeros(256, 16, 16), sample, "point", S, centres=centres, gt_lowres=gt_lowres,
                         generator=torch.Generator().manual_seed(0))
    labels = trace.click_labels[0].tolist()
    assert labels == [-2.0, 1.0, -2.0]  # a false negative gives a positive click
    x, y = trace.coords[1, 2].tolist()  # prompt = [centre, pad, click 1, click 2]
    assert masks[1, int(y), int(x)] and x % 4 == 0 and y % 4 == 0
    ious = instance_ious(missing, sample, S)
    assert ious.tolist() == pytest.approx([exact[0], 0.0, exact[2]])


def test_rle_samples_and_cache_rows_match_masks(models):
    student = models["student"]
    sample = models["samples"][1]
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode() for m in sample.gt_masks]
    as_rle = EvalSample(sample.image_id, sample.input_hw, sample.orig_hw, sample.boxes, gt_rles=rles)
    a = evaluate_model(student.decode, models["embs"][1:2], [sample], S)
    b = evaluate_model(student.decode, models["embs"][1:2], [as_rle], S)
    assert a == b
    row = {"image_id": "r", "input_hw": sample.input_hw, "orig_hw": sample.orig_hw,
           "boxes": torch.from_numpy(sample.boxes), "rles": rles[:3] + [""]}
    small = EvalSample.from_cache_row(row, max_instances=2, rng=np.random.default_rng(0))
    assert small.num_instances == 2 and all(r in rles[:3] for r in small.gt_rles)
    full = EvalSample.from_cache_row(row, max_instances=64)
    assert full.num_instances == 3  # the annotation without segmentation is dropped
    assert full.masks().shape == (3, *sample.orig_hw)


def test_bad_inputs_raise(models):
    sample = models["samples"][0]
    with pytest.raises(ValueError, match="gt_masks"):
        EvalSample("x", (256, 171), (300, 200), sample.boxes, gt_masks=np.zeros((2, 300, 200), bool))
    with pytest.raises(ValueError, match="boxes"):
        EvalSample("x", (256, 171), (300, 200), np.zeros((3, 5)))
    no_gt = EvalSample("x", sample.input_hw, sample.orig_hw, sample.boxes)
    with pytest.raises(ValueError, match="no GT"):
        evaluate_model(models["student"].decode, models["embs"][:1], [no_gt], S)
    with pytest.raises(ValueError, match="kind"):
        evaluate_model(models["student"].decode, models["embs"][:1], [sample], S, kinds=("mask",))
    with pytest.raises(ValueError):  # embeddings and samples must align
        evaluate_model(models["student"].decode, models["embs"][:1], models["samples"][:2], S)


def test_plots(tmp_path, models):
    history = [{"step": i + 1, "loss": 2.0 / (i + 1), "lr": 1e-3, "mse": 1.0 / (i + 1), "kind": "encoder_kd"}
               for i in range(20)]
    history += [{"step": i + 1, "loss": 5.0 - 0.1 * i, "lr": 1e-4, "bce": 0.5, "dice": 0.4, "kind": "prompt_kd"}
                for i in range(10)]
    history[-1].update({"eval/box": 42.0, "eval/point": 30.0, "eval/num_instances": 9})
    path = plot_curves(history, tmp_path / "curves.png", title="random weights")
    img = imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 400
    assert imread(plot_curves([], tmp_path / "empty.png")).shape[0] > 0

    sample = models["samples"][0]
    image = models["images"][0]
    pred = [sample.gt_masks[0], np.zeros_like(sample.gt_masks[1])]
    grid = mask_grid([image, image], pred, list(sample.gt_masks[:2]), tmp_path / "grid.png", titles=["a", "b"])
    assert imread(grid).shape[0] >= 2 * 3 * 80 - 1
    with pytest.raises(ValueError, match="2 images but 1 predictions"):
        mask_grid([image, image], pred[:1], list(sample.gt_masks[:2]), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="do not match"):
        mask_grid([image], [np.zeros((5, 5), bool)], [np.zeros((5, 5), bool)], tmp_path / "bad.png")
